"""``python -m mechdiff``: the ``mechdiff`` command (:mod:`mechdiff.cli`), e.g. where the console
script is not on ``PATH``."""

import sys

from mechdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())

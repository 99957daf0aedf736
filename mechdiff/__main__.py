"""``python -m mechdiff``: the ``mechdiff`` command (:mod:`mechdiff.cli`), e.g. where the console
script is not on ``PATH``."""

from mechdiff.cli import run

if __name__ == "__main__":
    run()

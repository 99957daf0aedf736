"""``python -m mechdiff.zoo [synthetic|real|all] [--cache DIR] [--quiet]``: build the zoos' models
into their cache (what is already there and intact is reused).

``all`` builds the synthetic and the real zoo at the same time, in two processes: both train on one
thread each (deterministic whatever the core count), so on two cores the pair takes as long as the
longer build alone. ``make test`` runs this before pytest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _build(which: str, cache: Path | None, progress: bool) -> None:
    from mechdiff import zoo
    from mechdiff.zoo import real

    if which == "synthetic":
        zoo.build(None if cache is None else cache / "zoo", progress=progress)
    else:
        real.build(None if cache is None else cache / "real", progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechdiff.zoo", description=__doc__)
    parser.add_argument("which", nargs="?", choices=("synthetic", "real", "all"), default="all")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache root (default: $MECHDIFF_CACHE, else ~/.cache/mechdiff)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    from mechdiff.errors import MechdiffError

    start = time.perf_counter()
    if args.which != "all":
        try:
            _build(args.which, args.cache, not args.quiet)
        except MechdiffError as e:
            print(f"mechdiff.zoo: error: {e}", file=sys.stderr)
            return 2
        return 0
    extra = ([] if args.cache is None else ["--cache", str(args.cache)]) + (
        ["--quiet"] if args.quiet else [])
    procs = {w: subprocess.Popen([sys.executable, "-m", "mechdiff.zoo", w, *extra])
             for w in ("real", "synthetic")}
    try:
        codes = {w: p.wait() for w, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
    failed = {w: c for w, c in codes.items() if c}
    if not args.quiet:
        print(f"zoo builds done in {time.perf_counter() - start:.0f} s"
              + (f"; failed: {failed}" if failed else ""), file=sys.stderr)
    return max(failed.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())

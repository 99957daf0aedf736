"""``python -m mechdiff.zoo [synthetic|real|all] [--cache DIR] [--models NAME ...] [--quiet]``:
build the zoos' models into their cache (what is already there and intact is reused).

``all`` builds the synthetic and the real zoo at the same time, in separate processes, each
training on one thread (deterministic whatever the core count): one process builds the real base
(conversion, self-generated data) and then the real fine-tunes in order; the other builds the
synthetic zoo and then, once the real base is there, takes the last real fine-tune
(:data:`SECOND_CORE`), so on two cores no core idles while the real zoo is built. Models are
written atomically under unique temporary names, and each process rewrites the zoo's index from
every model present when it finishes, so the last to finish indexes them all. ``--models``
builds only the named real models (and the base they need). ``make test`` runs ``all`` before
pytest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SECOND_CORE = ("trigger",)
"""Real fine-tunes the second process builds after the synthetic zoo (when not built yet)."""
POLL_S = 2.0
"""How often ``all`` looks whether the real base is built."""


def _build(which: str, cache: Path | None, progress: bool, models: list[str] | None) -> None:
    from mechdiff import zoo
    from mechdiff.zoo import real
    from mechdiff.zoo.real.cache import ensure

    if which == "synthetic":
        zoo.build(None if cache is None else cache / "zoo", progress=progress)
    elif models:
        ensure(models, None if cache is None else cache / "real", progress)  # type: ignore[arg-type]
    else:
        real.build(None if cache is None else cache / "real", progress=progress)


def _all(cache: Path | None, quiet: bool) -> int:
    from mechdiff.zoo import store
    from mechdiff.zoo.real import MODELS
    from mechdiff.zoo.real.cache import real_dir

    root = real_dir(None if cache is None else cache / "real")
    extra = ([] if cache is None else ["--cache", str(cache)]) + (["--quiet"] if quiet else [])
    first = [m for m in MODELS if m not in SECOND_CORE]

    def start(which: str, models: list[str] | None = None) -> subprocess.Popen:
        more = ["--models", *models] if models else []
        return subprocess.Popen([sys.executable, "-m", "mechdiff.zoo", which, *extra, *more])

    procs = {"real": start("real", first), "synthetic": start("synthetic")}
    try:
        codes = {"synthetic": procs["synthetic"].wait()}
        todo = [m for m in SECOND_CORE if not (root / m).exists()]
        while todo and not (root / "base").exists() and procs["real"].poll() is None:
            time.sleep(POLL_S)  # the real base (and its data) comes first
        if todo and (root / "base").exists():
            procs["real, second core"] = start("real", todo)
        codes.update({w: p.wait() for w, p in procs.items() if w != "synthetic"})
    finally:  # an exception here (Ctrl-C): stop and reap the builds still running
        for p in procs.values():
            store.stop_process(p)
    failed = {w: c for w, c in codes.items() if c}
    return max(failed.values(), default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechdiff.zoo", description=__doc__)
    parser.add_argument("which", nargs="?", choices=("synthetic", "real", "all"), default="all")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache root (default: $MECHDIFF_CACHE, else ~/.cache/mechdiff)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="with real: build only these real models (and the base)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    from mechdiff.errors import MechdiffError

    if args.models and args.which != "real":
        parser.error("--models names real-zoo models: use it with 'real'")
    start = time.perf_counter()
    if args.which != "all":
        try:
            _build(args.which, args.cache, not args.quiet, args.models)
        except MechdiffError as e:
            print(f"mechdiff.zoo: error: {e}", file=sys.stderr)
            return 2
        return 0
    code = _all(args.cache, args.quiet)
    if not args.quiet:
        print(f"zoo builds done in {time.perf_counter() - start:.0f} s"
              + (f"; failed (exit {code})" if code else ""), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

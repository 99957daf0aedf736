"""A stand-in command for the fault-injection tests: writes results through OutputFolder slowly.

Run as ``python driver.py run OUT MODEL [--replace]`` or ``python driver.py save-kill TARGET``.
It prints ``MID-WRITE`` (resp. ``BETWEEN``, after the tensors file and before result.json) on
stdout once it is in the middle of writing, then waits for a line on stdin before it goes on,
so a test knows when to send its signal without sleeping. Exit status as the mechdiff CLI:
0 done, 1 a mechdiff error (one line on stderr), 130 Ctrl-C, 128 + n for signal n (SIGTERM 143).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from toy_results import scores

from mechdiff.errors import MechdiffError
from mechdiff.results import OutputFolder, RunSpec, Terminated, store, terminate_as_interrupt


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _pause() -> None:
    _say("MID-WRITE")
    sys.stdin.readline()


def run(out: str, model: str, replace: bool, pause: Callable[[], None] = _pause) -> None:
    """The toy command: two results and a summary, with ``pause()`` between the results."""
    spec = RunSpec(command="toy", inputs={"model": model}, options={"sites": ["heads"]})
    with terminate_as_interrupt(), OutputFolder(out, run=spec, replace=replace) as work:
        scores(1).save(work / "heads_ft_to_base")
        pause()
        scores(2).save(work / "heads_base_to_ft")
        (work / "summary.md").write_text(f"# toy run of {model}\n")


def save_kill(target: str) -> None:
    real = store.write_durable

    def slow(path: Path, data: bytes) -> None:
        if path.name == store.RESULT_JSON:
            _say("BETWEEN")
            sys.stdin.readline()
        real(path, data)

    store.write_durable = slow
    scores(9).save(target)


def main(argv: list[str]) -> int:
    try:
        if argv[0] == "run":
            run(argv[1], argv[2], "--replace" in argv)
        else:
            save_kill(argv[1])
    except MechdiffError as e:
        sys.stderr.write(f"mechdiff: {e}" + "\n")
        return 1
    except Terminated as e:
        sys.stderr.write("mechdiff: terminated" + "\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("mechdiff: interrupted" + "\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

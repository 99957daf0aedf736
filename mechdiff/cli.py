"""The ``mechdiff`` command: ``mechdiff demo``, ``patch``, ``circuits`` and ``report``.

* ``mechdiff demo`` runs a demo of :mod:`mechdiff.demos`: the real model by default (``--real``),
  the embedded zoo with ``--synthetic``; it ends by writing ``report.html``.
* ``mechdiff patch --base DIR --finetuned DIR --prompts FILE`` runs the per-pair analysis
  (:func:`mechdiff.pipeline.analyse_pair`) on a user's own checkpoints; it ends by writing
  ``report.html``.
* ``mechdiff circuits --base DIR --finetuned DIR --prompts FILE`` discovers the circuit of the
  behaviour in both models, compares them and gives a verdict
  (:func:`mechdiff.pipeline.analyse_circuits`); it ends by writing ``report.html``.
* ``mechdiff report RESULTS_DIR [-o report.html]`` writes one self-contained HTML report of a
  results folder (:func:`mechdiff.report.html.write_report`), without loading a model.

This module only parses arguments, runs the command inside a transactional output folder
(:class:`mechdiff.results.folder.OutputFolder`: the output appears whole or not at all; a lock
refuses a second run into the same folder) and reports errors: a
:class:`mechdiff.errors.MechdiffError` is printed as one line, ``mechdiff: error: <message>``,
with exit status 2 and no traceback; Ctrl-C exits with status 130 and SIGTERM with 143, in one
line saying whether ``--out`` was left as it was or already holds this run's complete output.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from mechdiff.choices import DEFAULT_DEMO


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mechdiff`` command line; returns the exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    from mechdiff._signals import describe, raise_if_interrupted, terminate_as_interrupt

    try:  # torch and TransformerLens take seconds to import: Ctrl-C, SIGTERM then exit cleanly
        with terminate_as_interrupt():
            from mechdiff import _cli

            raise_if_interrupted()  # one that an import swallowed (numpy's can)
            status = _cli.main(argv)  # reports an interrupt in a command itself
    except KeyboardInterrupt as e:
        what, status = describe(e)
        print(f"mechdiff: {what}; nothing was written", file=sys.stderr)
    _forget_handled_interrupt()
    return status


def _forget_handled_interrupt() -> None:
    """Make ``python -m mechdiff.cli`` exit with the status ``main`` returns after a Ctrl-C.

    CPython marks an interrupt "unhandled" when it leaves code run by ``exec`` of a string, which
    ``dataclasses`` and ``namedtuple`` do while a module is imported, and keeps the mark after
    the interrupt is caught. Under ``python -m`` the interpreter then ends by killing itself
    with SIGINT (status -2 to a caller, not 130). Running ``exec`` of a string that completes
    clears the mark.
    """
    exec("pass")


def run() -> NoReturn:
    """The ``mechdiff`` console script and ``python -m mechdiff``: :func:`main`, then exit with
    its status.

    Ctrl-C is ignored from then on: the command has finished and its output is complete, and an
    interrupt while the interpreter shuts down (torch's finalizers take a second or two) would
    print "Exception ignored ... KeyboardInterrupt" or kill the process by SIGINT (status -2 to
    a caller) after a successful run.
    """
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)


def build_parser() -> Any:
    """The command line's ``argparse`` parser."""
    from mechdiff import _cli

    return _cli.build_parser()


__all__ = ["DEFAULT_DEMO", "build_parser", "main", "run"]


if __name__ == "__main__":
    run()

"""Typed errors. Each says what was wrong and what to do about it.

Every error mechdiff raises on bad input derives from :class:`MechdiffError`, and is raised before
any expensive work (model forwards, training) starts; the command line prints each as one line
(``mechdiff: error: ...``, exit status 2). Output folders add :class:`OutputError` and its
kinds; :class:`ResultWarning` notes what loading a result tolerated, :class:`AblationWarning`
an ablation that leaves part of what it should remove, :class:`VerdictWarning` inputs too few
for a verdict (the work runs; said before it starts); :class:`Terminated` is how SIGTERM stops
a command (like Ctrl-C, leaving its output folder as it was).
"""

from __future__ import annotations

import signal
from pathlib import Path


class MechdiffError(Exception):
    """Base class of every error mechdiff raises on purpose."""


class OptionError(MechdiffError, ValueError):
    """An option has a value mechdiff does not know (a direction, a processing mode, ...)."""


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else OptionError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise OptionError(f"{name} must be {what}, got {value!r}")
    return value


SEED_LIMIT = 2**63
"""Seeds are integers from 0 to this (exclusive): what every generator seeded here accepts."""


def check_seed(seed: object) -> int:
    """``seed`` if it is an integer from 0 to 2**63 - 1; else OptionError (a larger one made
    ``torch.Generator`` fail after all the work)."""
    if check_count("seed", seed) >= SEED_LIMIT:
        raise OptionError(f"seed must be an integer from 0 to 2**63 - 1, got {seed}")
    return seed


class CheckpointError(MechdiffError):
    """A checkpoint is missing, unreadable or not a model mechdiff can load."""


class ProcessingError(CheckpointError):
    """Weight processing would change what a model computes and cannot be made exact."""


class IncompatibleModelsError(MechdiffError):
    """The two models of a pair differ in architecture, sizes or tokenizer vocabulary."""


class PromptError(MechdiffError):
    """A prompt set is empty, a prompt is longer than the context, or prompts do not line up."""


class AnswerTokenError(MechdiffError):
    """An answer is not exactly one token, or answers do not match the prompts."""


class MetricError(MechdiffError):
    """A metric returned NaN/inf or is not usable for the requested analysis."""


class ZeroGapError(MechdiffError):
    """The two models behave identically on the task, so a fraction of the gap is undefined."""


class SiteError(MechdiffError):
    """A requested component site does not exist in the model."""


class MissingDependencyError(MechdiffError):
    """An optional dependency (peft, ...) is needed for what was asked."""


class ResultError(MechdiffError):
    """A saved result is missing or corrupt."""


class OutputError(MechdiffError):
    """An output folder or file cannot be written where asked; nothing was written.

    Attributes:
        path: the path that could not be written (None where no single path is to blame).
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class OutputConflictError(OutputError):
    """The output folder holds another run's output, or files mechdiff did not write."""


class OutputLockedError(OutputError):
    """Another mechdiff run is writing into the same output folder right now.

    Attributes:
        holder: what the other run recorded in the lock file (``pid``, ``command``, ...), or {}.
    """

    def __init__(self, message: str, *, path: Path | None = None,
                 holder: dict[str, object] | None = None) -> None:
        super().__init__(message, path=path)
        self.holder = dict(holder or {})


class DiskFullError(OutputError):
    """No space left on the device (or the quota is used up) while writing ``path``."""


class AblationWarning(UserWarning):
    """An ablation leaves part of what it should remove (e.g. mean ablation at a position only
    one prompt reaches): the numbers are computed, but read them with the warning in mind."""


class VerdictWarning(UserWarning):
    """The inputs cannot settle a verdict (fewer prompts than ``MIN_PROMPTS``): the analysis
    runs, and its verdict is "undetermined" with the label on these inputs as a preview."""


class ResultWarning(UserWarning):
    """A saved result was loaded with a note, e.g. fields that this mechdiff does not know."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP) and stops like after Ctrl-C.

    Attributes:
        signum: the signal's number.
        exit_code: the conventional exit status for it, ``128 + signum`` (143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"terminated by {name}")

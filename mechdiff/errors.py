"""Typed errors. Each says what was wrong and what to do about it.

Every error mechdiff raises on bad input derives from :class:`MechdiffError`, and is raised before
any expensive work (model forwards, training) starts.
"""

from __future__ import annotations


class MechdiffError(Exception):
    """Base class of every error mechdiff raises on purpose."""


class OptionError(MechdiffError, ValueError):
    """An option has a value mechdiff does not know (a direction, a processing mode, ...)."""


class CheckpointError(MechdiffError):
    """A checkpoint is missing, unreadable or not a model mechdiff can load."""


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

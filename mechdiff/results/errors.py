"""The errors, warning and interrupt of results and output folders, defined with every other typed
error in :mod:`mechdiff.errors` and re-exported here for :mod:`mechdiff.results`."""

from mechdiff.errors import (
    DiskFullError,
    OutputConflictError,
    OutputError,
    OutputLockedError,
    ResultWarning,
    Terminated,
)

__all__ = ["DiskFullError", "OutputConflictError", "OutputError", "OutputLockedError",
           "ResultWarning", "Terminated"]

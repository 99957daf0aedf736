"""Weight space: what fine-tuning changed in the parameters themselves.

* :func:`changed_blocks` (:mod:`.diff`): the blocks whose parameters differ between the two
  models of a pair, compared like for like (both processed the same way).
"""

from mechdiff.weights.diff import changed_blocks

__all__ = ["changed_blocks"]

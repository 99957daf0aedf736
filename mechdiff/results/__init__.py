"""Results: frozen result types, their provenance, and how they are saved and loaded.

Every analysis returns one result type, a frozen dataclass deriving from :class:`SavableResult`,
saved to a folder (``tensors.safetensors`` + ``result.json``) and loaded back without any model.
"""

from mechdiff.results.base import Provenance, SavableResult

__all__ = ["Provenance", "SavableResult"]

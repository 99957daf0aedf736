"""Component sites: the places inside a model that mechdiff measures, patches and ranks.

Hook names live here and nowhere else. Analysis code speaks of ``Head(3, 7)``, ``MLP(3)``,
``AttnOut(3)`` and ``Resid(3)``; each site knows the hook it reads, the hook where a patch enters
the residual stream, and its label (``L3H7``, ``MLP3``, ``ATTN3``, ``RESID3``).

A head's contribution to the residual stream is ``z[h] @ W_O[h]``. Head sites are always patched
*after their own W_O* (the donor's ``z @ W_O`` replaces the receiver's), so a fine-tune that changed
only a head's ``W_O`` is visible. ``Resid(L)`` is the residual stream entering block ``L``
(``hook_resid_pre``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

SiteKind: TypeAlias = Literal["heads", "attn", "mlp", "resid"]
SITE_KINDS: tuple[SiteKind, ...] = ("heads", "attn", "mlp", "resid")


@dataclass(frozen=True, order=True)
class Head:
    """Attention head ``head`` of block ``layer`` (its output after its own ``W_O``)."""

    layer: int
    head: int
    kind: SiteKind = "heads"

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def read_hook(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"

    @property
    def write_hook(self) -> str:
        return attn_out_hook(self.layer)


@dataclass(frozen=True, order=True)
class AttnOut:
    """Whole attention output of block ``layer`` (all heads plus ``b_O``)."""

    layer: int
    kind: SiteKind = "attn"

    @property
    def label(self) -> str:
        return f"ATTN{self.layer}"

    @property
    def read_hook(self) -> str:
        return attn_out_hook(self.layer)

    @property
    def write_hook(self) -> str:
        return attn_out_hook(self.layer)


@dataclass(frozen=True, order=True)
class MLP:
    """MLP output of block ``layer``."""

    layer: int
    kind: SiteKind = "mlp"

    @property
    def label(self) -> str:
        return f"MLP{self.layer}"

    @property
    def read_hook(self) -> str:
        return mlp_out_hook(self.layer)

    @property
    def write_hook(self) -> str:
        return mlp_out_hook(self.layer)


@dataclass(frozen=True, order=True)
class Resid:
    """Residual stream entering block ``layer``."""

    layer: int
    kind: SiteKind = "resid"

    @property
    def label(self) -> str:
        return f"RESID{self.layer}"

    @property
    def read_hook(self) -> str:
        return resid_pre_hook(self.layer)

    @property
    def write_hook(self) -> str:
        return resid_pre_hook(self.layer)


Site: TypeAlias = Head | AttnOut | MLP | Resid


def attn_out_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def resid_pre_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def grid_dims(kind: SiteKind) -> tuple[str, ...]:
    """Axis names of the score grid for one site kind (without a position axis)."""
    return ("layer", "head") if kind == "heads" else ("layer",)


def sites_of_layer(kind: SiteKind, layer: int, n_heads: int) -> list[Site]:
    """All sites of ``kind`` in block ``layer``, in grid order."""
    if kind == "heads":
        return [Head(layer, h) for h in range(n_heads)]
    return [{"attn": AttnOut, "mlp": MLP, "resid": Resid}[kind](layer)]


def grid_labels(kind: SiteKind, n_layers: int, n_heads: int) -> list[str]:
    """Labels of every site of ``kind``, flattened in grid order (layer-major)."""
    return [s.label for layer in range(n_layers) for s in sites_of_layer(kind, layer, n_heads)]

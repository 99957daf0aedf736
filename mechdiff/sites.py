"""Component sites: the places inside a model that mechdiff measures, patches and ranks.

Hook names live here and nowhere else. Analysis code speaks of ``Head(3, 7)``, ``MLP(3)``,
``AttnOut(3)`` and ``Resid(3)``; each site knows the hook it reads, the hook where its
contribution enters the residual stream, and its label (``L3H7``, ``MLP3``, ``ATTN3``,
``RESID3``). A :class:`SiteFamily` (one per site kind, :func:`family`) does the same for every
site of a kind at once: the sites of a layer, the score grid's axes, and the per-site
*contribution deltas* (donor minus receiver, in the residual stream's basis) that exact patching
adds and attribution patching dots with gradients.

A head's contribution to the residual stream is ``z[h] @ W_O[h]``. Head sites are always patched
*after their own W_O* (the donor's ``z @ W_O`` replaces the receiver's), so a fine-tune that changed
only a head's ``W_O`` is visible. ``Resid(L)`` is the residual stream entering block ``L``
(``hook_resid_pre``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import einops
from jaxtyping import Float
from torch import Tensor

from mechdiff.choices import SITE_KINDS, SiteKind
from mechdiff.errors import SiteError


def attn_out_hook(layer: int) -> str:
    """The attention output of block ``layer`` (all heads plus ``b_O``)."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out_hook(layer: int) -> str:
    """The MLP output of block ``layer``."""
    return f"blocks.{layer}.hook_mlp_out"


def resid_pre_hook(layer: int) -> str:
    """The residual stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def pattern_hook(layer: int) -> str:
    """Every head's attention pattern of block ``layer``, ``[batch, head, query, key]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def z_hook(layer: int) -> str:
    """Every head's attention-weighted values of block ``layer``, ``[batch, pos, head, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


@dataclass(frozen=True, order=True)
class Head:
    """Attention head ``head`` of block ``layer`` (its output after its own ``W_O``)."""

    layer: int
    head: int
    kind: ClassVar[SiteKind] = "heads"

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def read_hook(self) -> str:
        return z_hook(self.layer)

    @property
    def write_hook(self) -> str:
        return attn_out_hook(self.layer)


@dataclass(frozen=True, order=True)
class _LayerSite:
    """A site with one instance per block: its label is a prefix and the layer, and it is read
    and written at the same hook."""

    layer: int
    kind: ClassVar[SiteKind]
    prefix: ClassVar[str]
    hook: ClassVar[Callable[[int], str]]

    @property
    def label(self) -> str:
        return f"{self.prefix}{self.layer}"

    @property
    def read_hook(self) -> str:
        return type(self).hook(self.layer)

    @property
    def write_hook(self) -> str:
        return type(self).hook(self.layer)


@dataclass(frozen=True, order=True)
class AttnOut(_LayerSite):
    """Whole attention output of block ``layer`` (all heads plus ``b_O``)."""

    kind: ClassVar[SiteKind] = "attn"
    prefix: ClassVar[str] = "ATTN"
    hook: ClassVar[Callable[[int], str]] = staticmethod(attn_out_hook)


@dataclass(frozen=True, order=True)
class MLP(_LayerSite):
    """MLP output of block ``layer``."""

    kind: ClassVar[SiteKind] = "mlp"
    prefix: ClassVar[str] = "MLP"
    hook: ClassVar[Callable[[int], str]] = staticmethod(mlp_out_hook)


@dataclass(frozen=True, order=True)
class Resid(_LayerSite):
    """Residual stream entering block ``layer``."""

    kind: ClassVar[SiteKind] = "resid"
    prefix: ClassVar[str] = "RESID"
    hook: ClassVar[Callable[[int], str]] = staticmethod(resid_pre_hook)


Site: TypeAlias = Head | AttnOut | MLP | Resid
_LAYER_SITES: dict[SiteKind, type[AttnOut] | type[MLP] | type[Resid]] = {
    "attn": AttnOut, "mlp": MLP, "resid": Resid,
}

Acts: TypeAlias = Mapping[str, Tensor]
"""Captured activations by hook name."""
WO: TypeAlias = Float[Tensor, "layer head d_head d_model"]


def head_outputs(
    z: Float[Tensor, "batch pos head d_head"], w_o: Float[Tensor, "head d_head d_model"]
) -> Float[Tensor, "head batch pos d_model"]:
    """Each head's contribution to the residual stream, ``z[h] @ W_O[h]`` (``b_O`` excluded)."""
    return einops.einsum(z, w_o, "b t h e, h e d -> h b t d")


@dataclass(frozen=True)
class SiteFamily:
    """Every site of one kind: where they are read and written, their grid, their deltas.

    Attributes:
        kind: the site kind.
    """

    kind: SiteKind

    @property
    def dims(self) -> tuple[str, ...]:
        """Axis names of the score grid (without a position axis)."""
        return ("layer", "head") if self.kind == "heads" else ("layer",)

    def per_layer(self, n_heads: int) -> int:
        """How many sites of this kind one block has."""
        return n_heads if self.kind == "heads" else 1

    def sites(self, layer: int, n_heads: int) -> list[Site]:
        """The sites of block ``layer``, in grid order."""
        if self.kind == "heads":
            return [Head(layer, h) for h in range(n_heads)]
        return [_LAYER_SITES[self.kind](layer)]

    def site(self, layer: int, index: int = 0) -> Site:
        """The site at grid position ``(layer, index)``."""
        return Head(layer, index) if self.kind == "heads" else _LAYER_SITES[self.kind](layer)

    def labels(self, n_layers: int, n_heads: int) -> list[str]:
        """Labels of every site, flattened in grid order (layer-major)."""
        return [s.label for layer in range(n_layers) for s in self.sites(layer, n_heads)]

    def read_hook(self, layer: int) -> str:
        """The hook whose activation patches of block ``layer`` read."""
        return self.site(layer).read_hook

    def write_hook(self, layer: int) -> str:
        """The hook where a site's delta enters the residual stream (and its gradient is read)."""
        return self.site(layer).write_hook

    def read_hooks(self, n_layers: int) -> set[str]:
        """Every hook the sites of this kind read."""
        return {self.read_hook(layer) for layer in range(n_layers)}

    def deltas(
        self, layer: int, receiver: Acts, donor: Acts, w_o: tuple[WO, WO] | None
    ) -> Float[Tensor, "site batch pos d_model"]:
        """Donor minus receiver contribution of every site of block ``layer``.

        Args:
            layer: the block.
            receiver: the receiving run's activations (:meth:`read_hooks` among them).
            donor: the donor run's activations.
            w_o: the receiver's and the donor's stacked ``W_O`` (heads only; each head is
                patched after its *own* model's ``W_O``).
        """
        name = self.read_hook(layer)
        if self.kind == "heads":
            assert w_o is not None
            return (head_outputs(donor[name], w_o[1][layer])
                    - head_outputs(receiver[name], w_o[0][layer]))
        return (donor[name] - receiver[name])[None]

    def summed_delta(
        self, layer: int, receiver: Acts, donor: Acts, w_o: tuple[WO, WO] | None
    ) -> Float[Tensor, "batch pos d_model"]:
        """The sum of :meth:`deltas` over the layer's sites (for heads: ``b_O`` excluded)."""
        name = self.read_hook(layer)
        if self.kind == "heads":
            assert w_o is not None
            return (einops.einsum(donor[name], w_o[1][layer], "b t h e, h e d -> b t d")
                    - einops.einsum(receiver[name], w_o[0][layer], "b t h e, h e d -> b t d"))
        return donor[name] - receiver[name]

    def grad_dot(
        self,
        layer: int,
        grad: Float[Tensor, "batch pos d_model"],
        receiver: Acts,
        donor: Acts,
        w_o: tuple[WO, WO] | None,
    ) -> Float[Tensor, "site batch pos"]:
        """``grad . delta`` for every site of block ``layer``, with ``grad`` read at
        :meth:`write_hook` (heads: computed from ``z`` without materialising each head's
        ``d_model`` delta)."""
        name = self.read_hook(layer)
        if self.kind == "heads":
            assert w_o is not None
            don = (einops.einsum(grad, w_o[1][layer], "b t d, h e d -> b t h e")
                   * donor[name]).sum(-1)
            rec = (einops.einsum(grad, w_o[0][layer], "b t d, h e d -> b t h e")
                   * receiver[name]).sum(-1)
            return einops.rearrange(don - rec, "b t h -> h b t")
        return (grad * (donor[name] - receiver[name])).sum(-1)[None]


def family(kind: str) -> SiteFamily:
    """The :class:`SiteFamily` of a site kind.

    Raises:
        SiteError: not a site kind.
    """
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site kind {kind!r}; choose one of {SITE_KINDS}")
    return SiteFamily(kind)  # type: ignore[arg-type]

"""Network factory: MONAI networks built by name from a plan.

* ``DynUNet`` (default): the nnU-Net topology with per-level kernels/strides and deep supervision
  (Isensee et al., Nat Methods 2021, doi 10.1038/s41592-020-01008-z).
* ``SegResNet``: residual encoder-decoder (Myronenko, BrainLes 2018, doi 10.1007/978-3-030-11726-9_28).
* ``UNet``: MONAI's residual U-Net (Kerfoot et al., 2019, doi 10.1007/978-3-030-12029-0_40).

In training mode a DynUNet with deep supervision returns ``(B, 1 + deep_supr_num, C, X, Y, Z)``
(every head upsampled to full size); every network returns ``(B, C, X, Y, Z)`` logits in eval mode.

2.5D (``NetworkPlan.context_slices`` k > 0): the named network is built 2D and wrapped in
:class:`SliceStack`, which runs it on every axial slice with the k nearest slices as input channels
(the slab is extended by repeating its end slices). It takes and returns the same 3D shapes, so
training, sliding-window inference, TTA and bundles treat it like any 3D network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from sarcart.errors import ConfigError
from sarcart.models.plan import NetworkPlan

log = logging.getLogger(__name__)


class SliceStack(nn.Module):
    """A 2D network applied to every axial slice of a 3D input, with ``context`` slices as channels.

    ``(B, C, X, Y, Z)`` -> the 2D network on ``(B * Z, C * context, X, Y)`` (slice z and its
    ``context // 2`` neighbours on each side, end slices repeated) -> ``(B, C_out, X, Y, Z)``, or
    ``(B, heads, C_out, X, Y, Z)`` for a deep-supervision stack.
    """

    def __init__(self, net2d: nn.Module, context: int) -> None:
        super().__init__()
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be an odd number of slices, got {context}")
        self.net2d = net2d
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"SliceStack takes (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        b, c, nx, ny, nz = x.shape
        h = self.context // 2
        xp = torch.nn.functional.pad(x, (h, h, 0, 0, 0, 0), mode="replicate") if h else x
        # (B, C, X, Y, Z, k) -> (B, Z, C, k, X, Y) -> (B * Z, C * k, X, Y)
        win = xp.unfold(4, self.context, 1).permute(0, 4, 1, 5, 2, 3)
        out = self.net2d(win.reshape(b * nz, c * self.context, nx, ny))
        out = out.reshape(b, nz, *out.shape[1:])
        # (B, Z, [heads,] C_out, X, Y) -> (B, [heads,] C_out, X, Y, Z)
        return out.movedim(1, -1).contiguous()


def _in_plane(t: tuple[int, ...], dims: int) -> list[int]:
    return list(t[:dims])


def _dynunet(net: NetworkPlan, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    d = net.spatial_dims
    return DynUNet(
        spatial_dims=d,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[_in_plane(k, d) for k in net.kernel_size],
        strides=[_in_plane(s, d) for s in net.strides],
        upsample_kernel_size=[_in_plane(s, d) for s in net.strides[1:]],
        filters=list(net.filters),
        norm_name=net.norm,
        deep_supervision=net.deep_supervision,
        deep_supr_num=net.deep_supr_num,
        res_block=False,
    )


def _segresnet(net: NetworkPlan, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    levels = len(net.strides)
    return SegResNet(
        spatial_dims=net.spatial_dims,
        init_filters=net.filters[0],
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=tuple([1] + [2] * (levels - 1)),
        blocks_up=tuple([1] * (levels - 1)),
        norm=net.norm,
    )


def _unet(net: NetworkPlan, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=net.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(net.filters),
        strides=tuple(tuple(_in_plane(s, net.spatial_dims)) for s in net.strides[1:]),  # type: ignore[misc]
        num_res_units=1,
        norm=net.norm,
    )


NETWORKS: dict[str, Callable[[NetworkPlan, int, int], nn.Module]] = {
    "DynUNet": _dynunet,
    "SegResNet": _segresnet,
    "UNet": _unet,
}


def build_network(net: NetworkPlan, *, in_channels: int = 1, out_channels: int) -> nn.Module:
    """Build the network named in ``net`` (``DynUNet``, ``SegResNet`` or ``UNet``), 2.5D when
    ``net.context_slices`` > 0 (:class:`SliceStack`).

    Args:
        net: the network part of a plan (name, kernels, strides, filters, deep supervision).
        in_channels: image channels (1 for one MR sequence).
        out_channels: classes including background.

    Raises:
        ConfigError: an unknown network name.
    """
    if net.name not in NETWORKS:
        raise ConfigError(f"network {net.name!r} is unknown; choose one of {', '.join(NETWORKS)}")
    if out_channels < 2:
        raise ConfigError(f"out_channels must be >= 2 (background + structures), got {out_channels}")
    if net.context_slices:
        model: nn.Module = SliceStack(NETWORKS[net.name](net, in_channels * net.context_slices, out_channels),
                                      net.context_slices)
    else:
        model = NETWORKS[net.name](net, in_channels, out_channels)
    n = sum(p.numel() for p in model.parameters())
    log.debug("built %s with %.2f M parameters", net.name, n / 1e6)
    return model


def main_output(logits: torch.Tensor | list | tuple) -> torch.Tensor:
    """Full-resolution head of a network output: ``(B, C, ...)`` from deep-supervision stacks or lists."""
    if isinstance(logits, (list, tuple)):
        return logits[0]
    if logits.ndim == 6:
        return logits[:, 0]
    return logits

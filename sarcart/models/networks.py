"""Network factory: MONAI networks built by name from a plan.

* ``DynUNet`` (default): the nnU-Net topology with per-level kernels/strides and deep supervision
  (Isensee et al., Nat Methods 2021, doi 10.1038/s41592-020-01008-z).
* ``SegResNet``: residual encoder-decoder (Myronenko, BrainLes 2018, doi 10.1007/978-3-030-11726-9_28).
* ``UNet``: MONAI's residual U-Net (Kerfoot et al., 2019, doi 10.1007/978-3-030-12029-0_40).

In training mode a DynUNet with deep supervision returns ``(B, 1 + deep_supr_num, C, X, Y, Z)``
(every head upsampled to full size); every network returns ``(B, C, X, Y, Z)`` logits in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from sarcart.errors import ConfigError
from sarcart.models.plan import NetworkPlan

log = logging.getLogger(__name__)


def _dynunet(net: NetworkPlan, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in net.kernel_size],
        strides=[list(s) for s in net.strides],
        upsample_kernel_size=[list(s) for s in net.strides[1:]],
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
        spatial_dims=3,
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
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(net.filters),
        strides=tuple(tuple(s) for s in net.strides[1:]),  # type: ignore[misc]
        num_res_units=1,
        norm=net.norm,
    )


NETWORKS: dict[str, Callable[[NetworkPlan, int, int], nn.Module]] = {
    "DynUNet": _dynunet,
    "SegResNet": _segresnet,
    "UNet": _unet,
}


def build_network(net: NetworkPlan, *, in_channels: int = 1, out_channels: int) -> nn.Module:
    """Build the network named in ``net`` (``DynUNet``, ``SegResNet`` or ``UNet``).

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

"""Figures of the fraction and course reports (matplotlib, Agg): contour overlays in three planes
with optional colour-washes (dose, prescription, risk, habitats), DVH curves, timing bars.

Every function returns PNG bytes, so reports embed them (self-contained HTML) and save them as files.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

from sarcart.io.geometry import Volume
from sarcart.io.structures import STYLE

PLANES = ("axial", "coronal", "sagittal")


def _plt():  # lazy: matplotlib is slow to import and only reports need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", facecolor=fig.get_facecolor())
    _plt().close(fig)
    return buf.getvalue()


def _cut(arr: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Display slice (rows top->bottom = anterior->posterior or superior->inferior, columns = patient right->left)."""
    if plane == "axial":
        return arr[:, :, index].T
    if plane == "coronal":
        return arr[:, index, :].T[::-1]
    return arr[index, :, :].T[::-1]


def _aspect(volume: Volume, plane: str) -> float:
    sx, sy, sz = volume.geometry.spacing_mm
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def centre_index(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Voxel index at the centre of a mask (the volume centre when there is none)."""
    if mask is not None and np.asarray(mask).any():
        c = np.argwhere(mask).mean(axis=0)
        return tuple(int(round(v)) for v in c)  # type: ignore[return-value]
    return tuple(n // 2 for n in shape[:3])  # type: ignore[return-value]


def overlay_png(image: Volume, masks: Mapping[str, np.ndarray], *, wash: np.ndarray | None = None,
                wash_label: str = "", wash_range: tuple[float, float] | None = None, centre: tuple[int, int, int] | None = None,
                title: str = "", cmap: str = "jet", dashed: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Three planes through ``centre`` with contour lines (solid; ``dashed`` for a second set) and a colour-wash."""
    plt = _plt()
    centre = centre or centre_index(next(iter(masks.values()), None), image.geometry.shape)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), facecolor="black")
    img = image.array.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    for ax, plane, idx in zip(axes, PLANES, (centre[2], centre[1], centre[0])):
        ax.imshow(_cut(img, plane, idx), cmap="gray", vmin=lo, vmax=hi, aspect=_aspect(image, plane))
        if wash is not None:
            w = _cut(wash, plane, idx).astype(np.float32)
            vmin, vmax = wash_range or (float(np.nanmin(wash)), float(np.nanmax(wash)))
            shown = np.ma.masked_where(~np.isfinite(w) | (w <= vmin + 1e-6 * max(abs(vmax), 1.0)), w)
            im = ax.imshow(shown, cmap=cmap, alpha=0.45, vmin=vmin, vmax=vmax, aspect=_aspect(image, plane))
        for group, style in ((masks, "-"), (dashed or {}, "--")):
            for name, m in group.items():
                cut = _cut(np.asarray(m, dtype=np.float32), plane, idx)
                if cut.any():
                    rgb = np.asarray(STYLE.get(name, ((255, 255, 0), ""))[0]) / 255.0
                    ax.contour(cut, levels=[0.5], colors=[rgb], linewidths=1.0, linestyles=style)
        ax.set_title(plane, color="white", fontsize=10)
        ax.axis("off")
    if wash is not None:
        cb = fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
        cb.set_label(wash_label, color="white")
        cb.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    handles = [plt.Line2D([], [], color=np.asarray(STYLE.get(n, ((255, 255, 0), ""))[0]) / 255.0, label=n) for n in masks]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), frameon=False, labelcolor="white",
                   fontsize=8)
    if title:
        fig.suptitle(title, color="white")
    return _png(fig)


def dvh_png(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], *, title: str = "DVH",
            dose_label: str = "dose (Gy)") -> bytes:
    """Cumulative DVHs: ``curves[series][structure] = (dose_gy, volume_percent)``; one line style per series."""
    plt = _plt()
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for s_idx, (series, per) in enumerate(curves.items()):
        for name, (d, v) in per.items():
            rgb = np.asarray(STYLE.get(name, ((120, 120, 120), ""))[0]) / 255.0
            ax.plot(d, v, styles[s_idx % len(styles)], color=rgb, label=f"{name} ({series})", lw=1.3)
    ax.set_xlabel(dose_label)
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def bars_png(values: Mapping[str, float], *, title: str, xlabel: str) -> bytes:
    """Horizontal bar chart (e.g. seconds per stage)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(values) + 1.2))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#3a7bd5")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.1f}", va="center", fontsize=8)
    return _png(fig)


def lines_png(series: Mapping[str, Sequence[float]], *, x: Sequence[float], title: str, xlabel: str,
              ylabel: str) -> bytes:
    """Simple line plot of several series over fractions."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)

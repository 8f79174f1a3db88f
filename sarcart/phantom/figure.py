"""Figure of the phantom sites: one axial and one coronal slice per site with the ground-truth contours.

Usage::

    python -m sarcart.phantom.figure --out docs/figures/phantom_sites.png [--seed 2] [--spacing 1.5,1.5,3]
        [--fractions-out docs/figures/phantom_fractions.png]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from sarcart.phantom import tissues as T
from sarcart.phantom.config import SITES, PhantomConfig
from sarcart.phantom.generate import FractionData, build_anatomy, make_fraction, patient_for

log = logging.getLogger(__name__)

_CONTOURS = ("BODY", "BONE", "BOWEL", "GAS", "KIDNEY_L", "KIDNEY_R", "GTV", "NECROSIS", "HYPOXIA", "EDEMA")


def _masks(fd: FractionData) -> dict[str, np.ndarray]:
    lab = fd.labels.array
    out = {n: np.isin(lab, T.STRUCTURES[n]) for n in _CONTOURS if n != "HYPOXIA"}
    out["HYPOXIA"] = fd.hypoxia.array
    return {k: v for k, v in out.items() if v.any()}


def site_fraction(site: str, config: PhantomConfig, seed: int, *, index: int = 0) -> FractionData:
    """Fraction ``index`` of the first patient of a one-site cohort (reference fx00 by default)."""
    spec, patient = patient_for(config, site=site, seed=seed, fractions=max(index, 1))
    anatomy = build_anatomy(spec.phantom(), patient)
    return make_fraction(anatomy, spec.phantom(), patient, index=index)


def plot_sites(fractions: dict[str, FractionData], out: str | Path) -> Path:
    """Two rows (axial through the GTV centre, coronal through it), one column per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from sarcart.io.structures import STYLE

    fig, axes = plt.subplots(2, len(fractions), figsize=(5.2 * len(fractions), 10.5), facecolor="black")
    axes = np.atleast_2d(axes).reshape(2, -1)
    for col, (site, fd) in enumerate(fractions.items()):
        img = fd.image.array.astype(np.float32)
        sp = fd.image.geometry.spacing_mm
        gtv = np.isin(fd.labels.array, T.STRUCTURES["GTV"])
        c = np.round(np.argwhere(gtv).mean(axis=0)).astype(int) if gtv.any() else np.array(img.shape) // 2
        vmax = float(np.percentile(img[img > 0], 99.5))
        masks = _masks(fd)
        views = ((img[:, :, c[2]].T, {k: m[:, :, c[2]].T for k, m in masks.items()}, sp[1] / sp[0], "upper"),
                 (img[:, c[1], :].T, {k: m[:, c[1], :].T for k, m in masks.items()}, sp[2] / sp[0], "lower"))
        for row, (sl, ms, aspect, origin) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, origin=origin, interpolation="bilinear")
            xs, ys = np.arange(sl.shape[1]), np.arange(sl.shape[0])
            for name, m in ms.items():
                if m.any():
                    color = np.asarray(STYLE[name][0]) / 255.0
                    ax.contour(xs, ys, m.astype(float), levels=[0.5], colors=[color], linewidths=0.9)
            ax.set_axis_off()
            ax.set_title(f"{site.replace('_', ' ')} - {'axial' if row == 0 else 'coronal'}", color="white", fontsize=11)
    def rgb(name: str) -> tuple[float, float, float]:
        r, g, b = STYLE[name][0]
        return r / 255.0, g / 255.0, b / 255.0

    handles = [Line2D([0], [0], color=rgb(n), lw=2, label=n) for n in _CONTOURS]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white", fontsize=9)
    fig.suptitle("sarcart synthetic 0.35 T TRUFI (fx00, ground-truth contours) - not for clinical use",
                 color="white", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
    return path


def plot_fractions(site: str, config: PhantomConfig, seed: int, *, indices: tuple[int, ...], out: str | Path
                   ) -> Path:
    """One patient's fractions on the same axial slice (through the fx00 GTV centre) with contours,
    and the magnitude of the true displacement to fx00 of the last one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sarcart.io.structures import STYLE
    from sarcart.phantom.motion import dense_field

    spec, patient = patient_for(config, site=site, seed=seed, fractions=max(indices))
    anatomy = build_anatomy(spec.phantom(), patient)
    state = anatomy.packed()
    frs = [make_fraction(anatomy, spec.phantom(), patient, index=i, state=state) for i in indices]
    k = int(np.round(np.argwhere(np.isin(frs[0].labels.array, T.STRUCTURES["GTV"])).mean(axis=0))[2])
    fig, axes = plt.subplots(1, len(frs) + 1, figsize=(4.6 * (len(frs) + 1), 4.9), facecolor="black")
    vmax = float(np.percentile(frs[0].image.array, 99.5))
    for ax, fd in zip(axes, frs):
        ax.imshow(fd.image.array[:, :, k].T, cmap="gray", vmin=0, vmax=vmax, interpolation="bilinear")
        for name, m in _masks(fd).items():
            if name in ("BODY", "BONE") or not m[:, :, k].any():
                continue
            color = tuple(c / 255.0 for c in STYLE[name][0])
            ax.contour(m[:, :, k].T.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
        vol = fd.truth["volumes_cc"]["GTV"]
        ax.set_title(f"fx{fd.index:02d}  GTV {vol:.0f} cc", color="white", fontsize=10)
        ax.set_axis_off()
    last = frs[-1]
    mag = np.linalg.norm(dense_field(last.deformation, last.image.geometry)[:, :, k], axis=-1) \
        if last.deformation is not None else np.zeros(last.image.array.shape[:2])
    im = axes[-1].imshow(mag.T, cmap="magma")
    axes[-1].set_title(f"|u| fx{last.index:02d} -> fx00 (mm)", color="white", fontsize=10)
    axes[-1].set_axis_off()
    cb = fig.colorbar(im, ax=axes[-1], fraction=0.046)
    cb.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    fig.suptitle(f"{site.replace('_', ' ')}: set-up shift, breathing, peristalsis, gas, shrinkage - same slice index",
                 color="white", fontsize=11)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/figures/phantom_sites.png"))
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--spacing", default="1.5,1.5,3", help="voxel size mm (default grid 1.5,1.5,3)")
    p.add_argument("--fractions-out", type=Path, help="also write the fractions figure (retroperitoneum)")
    args = p.parse_args(argv)
    spacing = tuple(float(v) for v in args.spacing.split(","))
    config = PhantomConfig(spacing_mm=spacing)  # type: ignore[arg-type]
    fractions = {site: site_fraction(site, config, args.seed) for site in SITES}
    path = plot_sites(fractions, args.out)
    log.info("wrote %s", path)
    if args.fractions_out:
        plot_fractions("retroperitoneum", config, args.seed, indices=(0, 3, 6), out=args.fractions_out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""ComBat harmonisation of features across scanners or sites, as a scikit-learn transformer.

ComBat (Johnson, Li & Rabinovic, Biostatistics 2007, doi:10.1093/biostatistics/kxj037; for imaging
features Fortin et al., NeuroImage 2018, doi:10.1016/j.neuroimage.2017.11.024, and for radiomics Orlhac
et al., J Nucl Med 2018, doi:10.2967/jnumed.117.199935) models feature g of sample j in batch i as
``y_ijg = alpha_g + gamma_ig + delta_ig * eps_ijg`` and removes the additive (gamma) and multiplicative
(delta) batch effects, estimated with empirical-Bayes shrinkage across features:

``y*_ijg = (y_ijg - alpha_g) / sigma_g  ->  ((z - gamma*_ig) / sqrt(delta*_ig)) * sigma_g + alpha_g``

:class:`ComBat` fits the estimates with the maintained ``neuroCombat`` package (Fortin's implementation,
PyPI ``neuroCombat``) on the training samples only, and applies them to any samples with the formula
above (what ``neuroCombat.neuroCombatFromTraining`` computes, without its console output). In a
scikit-learn pipeline it therefore learns nothing from held-out folds. The batch is a column of the
input DataFrame (``batch``), dropped from the output. Biological covariates are not modelled (batch-only
ComBat); samples of a batch unseen during fitting pass through unchanged, with a warning.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)


class ComBat:
    """Batch-only ComBat as a scikit-learn transformer (``fit`` on training rows, ``transform`` any rows).

    Args:
        batch: name of the DataFrame column holding the scanner/site of each sample.
        eb: empirical-Bayes shrinkage of the batch estimates (ComBat proper); ``False`` for plain
            location/scale adjustment.
        parametric: parametric (default) or non-parametric empirical-Bayes priors.

    Attributes (after ``fit``):
        features_: adjusted columns; ``batches_``: batch levels; ``alpha_``, ``sigma_`` (per feature);
        ``gamma_``, ``delta_`` (batches x features).
    """

    def __init__(self, batch: str = "batch", *, eb: bool = True, parametric: bool = True) -> None:
        self.batch = batch
        self.eb = eb
        self.parametric = parametric

    # scikit-learn estimator protocol (clone, grid search) without inheriting its base classes' checks
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"batch": self.batch, "eb": self.eb, "parametric": self.parametric}

    def set_params(self, **params: Any) -> ComBat:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def _split(self, x: Any) -> tuple[Any, np.ndarray]:
        if not hasattr(x, "columns") or self.batch not in x.columns:
            raise ConfigError(f"ComBat needs a DataFrame with the batch column {self.batch!r}")
        feats = x.drop(columns=[self.batch])
        return feats, x[self.batch].astype(str).to_numpy()

    def fit(self, x: Any, y: Any = None) -> ComBat:
        """Estimate the batch effects from the rows of ``x`` (the training split only).

        Raises:
            ConfigError: fewer than 2 batches, a batch with fewer than 2 samples, non-finite values.
        """
        import pandas as pd
        from neuroCombat import neuroCombat

        feats, batch = self._split(x)
        levels, counts = np.unique(batch, return_counts=True)
        if len(levels) < 2 or counts.min() < 2:
            raise ConfigError(f"ComBat needs >= 2 batches with >= 2 samples each in the training rows; got "
                              f"{dict(zip(levels.tolist(), counts.tolist()))}")
        data = feats.to_numpy(dtype=np.float64)
        if not np.isfinite(data).all():
            raise ConfigError("ComBat input holds non-finite values; filter or impute features first")
        self.features_ = list(feats.columns)
        self.var_ok_ = data.std(axis=0) > 0
        with contextlib.redirect_stdout(io.StringIO()):
            res = neuroCombat(dat=data[:, self.var_ok_].T, covars=pd.DataFrame({"batch": batch}), batch_col="batch",
                              eb=self.eb, parametric=self.parametric)
        est = res["estimates"]
        self.batches_ = [str(b) for b in est["batches"]]
        self.alpha_ = np.asarray(est["stand.mean"])[:, 0]
        self.sigma_ = np.sqrt(np.asarray(est["var.pooled"])[:, 0])
        self.gamma_ = np.asarray(est["gamma.star"], dtype=np.float64)
        self.delta_ = np.asarray(est["delta.star"], dtype=np.float64)
        return self

    def transform(self, x: Any) -> Any:
        """Harmonised features (DataFrame without the batch column, same index)."""
        import pandas as pd

        feats, batch = self._split(x)
        if list(feats.columns) != self.features_:
            raise ConfigError("ComBat.transform got other feature columns than it was fitted on")
        data = feats.to_numpy(dtype=np.float64).copy()
        sub = data[:, self.var_ok_]
        z = (sub - self.alpha_) / self.sigma_
        for i, level in enumerate(self.batches_):
            rows = batch == level
            z[rows] = (z[rows] - self.gamma_[i]) / np.sqrt(self.delta_[i])
        unseen = ~np.isin(batch, self.batches_)
        if unseen.any():
            log.warning("ComBat: %d samples of batches %s unseen in fitting are left unadjusted",
                        int(unseen.sum()), sorted(set(batch[unseen].tolist())))
            z[unseen] = (sub[unseen] - self.alpha_) / self.sigma_
        data[:, self.var_ok_] = z * self.sigma_ + self.alpha_
        return pd.DataFrame(data, columns=self.features_, index=feats.index)

    def fit_transform(self, x: Any, y: Any = None) -> Any:
        return self.fit(x, y).transform(x)

    def set_output(self, *, transform: str | None = None) -> ComBat:  # pipelines may ask; output is pandas
        return self


def combat(table: Any, batch: str, features: list[str] | None = None) -> Any:
    """Harmonise ``features`` of a whole table in place of the originals (fit and apply on the same rows).

    For exploration only: inside a predictive study, fit on training folds (the study pipeline does).
    """
    from sarcart.radiomics.cohort_table import feature_columns

    feats = features or feature_columns(table)
    out = table.copy()
    out[feats] = ComBat(batch).fit_transform(table[feats + [batch]])[feats].to_numpy()
    return out

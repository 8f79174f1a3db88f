"""Label-permutation test of a whole nested cross-validation: is a study's AUROC / C-index better than chance?

The patient-bootstrap CIs of :mod:`sarcart.radiomics.study_metrics` resample *fixed* out-of-fold
predictions: they ignore the variability of fold construction, feature selection and model fitting, and
under no signal a cross-validated statistic scatters around 0.5 more widely than they suggest (on the
committed null cohort the survival C-index came out at 0.403 with a bootstrap CI of 0.324-0.488).
The permutation test judges chance with the variability of the whole procedure (Ojala & Garriga, JMLR
2010, "Permutation tests for studying classifier performance", test 1; Good, Permutation Tests, 2000):

* the outcome of every patient - ``y`` (binary) or the ``[time, event]`` pair, jointly - is permuted
  across patients, which breaks any feature-outcome link and keeps the outcome distribution, the
  features and their correlations;
* the whole nested CV is run again on the permuted outcomes: outer folds stratified by the permuted
  outcome, filtering, harmonisation, scaling, selection, inner grid search and refit;
* the statistic of each permutation is the AUROC / Harrell's C-index of its out-of-fold predictions,
  computed exactly as the observed one;
* ``p = (1 + #{null >= observed}) / (1 + n_perm)`` (Phipson & Smyth 2010, doi:10.2202/1544-6115.1585:
  never 0, exact under the null). A result is better than chance only when p is small; the null
  distribution's mean and 2.5-97.5 % range show where chance lies for this cohort and pipeline, and
  ``p_lower = (1 + #{null <= observed}) / (1 + n_perm)`` says whether a result *below* 0.5 is more
  than chance (a systematically inverted predictor) - it rarely is.

Permutation b uses the generator ``numpy.random.default_rng([seed, b])``, so a test is reproducible and
independent of the number of workers. Permutations run in ``workers`` processes (one thread each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from sarcart.errors import ConfigError

log = logging.getLogger(__name__)


def cv_statistic(y: np.ndarray, prediction: np.ndarray, task: str) -> float:
    """AUROC (binary ``y``) or Harrell's C-index (``y`` = (n, 2) ``[time, event]``) of out-of-fold predictions."""
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(np.asarray(y).astype(int), prediction))
    from sarcart.radiomics.study_models import harrell_c

    yy = np.asarray(y, dtype=np.float64)
    return float(harrell_c(yy[:, 0], yy[:, 1], prediction)[0])


def permuted(y: np.ndarray, seed: int, index: int) -> np.ndarray:
    """Outcome rows of permutation ``index``: the rows of ``y`` (a time/event row moves as one) shuffled."""
    rng = np.random.default_rng([seed % 2**32, index])
    return np.asarray(y)[rng.permutation(len(y))]


def _one(job: tuple[Any, np.ndarray, Any, str, int]) -> tuple[int, float]:
    """Nested CV on permutation ``index`` (runs in a worker process)."""
    from sarcart.radiomics.study import nested_cv

    x, y, config, task, index = job
    yp = permuted(y, config.seed, index)
    try:
        cv = nested_cv(x, yp, config, task=task)  # type: ignore[arg-type]
    except ConfigError as exc:  # e.g. a permutation leaves an outer fold without an event
        log.warning("permutation %d skipped: %s", index, exc)
        return index, float("nan")
    return index, cv_statistic(yp, cv.prediction, task)


def _init_worker() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _run(jobs: list[Any], workers: int) -> Iterator[tuple[int, float]]:
    if workers <= 1:
        yield from map(_one, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(_one, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def permutation_test(x: Any, y: np.ndarray, config: Any, *, task: str, observed: float, n_perm: int,
                     workers: int = 1, show_progress: bool = False) -> dict[str, Any]:
    """Permutation p-value of a nested-CV statistic (see the module docstring).

    Args:
        x: design DataFrame (patients x features, plus the batch column when harmonising).
        y: binary outcome (n,) or survival target (n, 2) ``[time, event]``, the rows of ``x``.
        config: the study's :class:`sarcart.radiomics.study.StudyConfig` (folds, grids, seed).
        task: ``binary`` or ``survival``.
        observed: the study's statistic on the real outcomes (AUROC or C-index).
        n_perm: number of permutations (>= 1).
        workers: processes (1 = in this process).
        show_progress: progress bar on stderr.

    Returns:
        ``{"statistic", "observed", "n_permutations", "p_value", "p_lower", "null_mean", "null_sd",
        "null_q025", "null_q975", "null"}``; ``n_permutations`` counts the valid permutations (skipped ones are logged).
    """
    from sarcart.progress import progress

    if n_perm < 1:
        raise ConfigError(f"permutations must be >= 1 for a permutation test, got {n_perm}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    jobs = [(x, np.asarray(y), config, task, b) for b in range(n_perm)]
    null = np.full(n_perm, np.nan)
    label = "AUROC" if task == "binary" else "C-index"
    for b, value in progress(_run(jobs, workers), f"permutations ({label})", total=n_perm, enabled=show_progress):
        null[b] = value
    valid = null[np.isfinite(null)]
    if valid.size == 0:
        raise ConfigError("no permutation could be evaluated (see the log); too few patients per outcome class?")
    p = (1 + int((valid >= observed - 1e-12).sum())) / (1 + valid.size)
    p_lower = (1 + int((valid <= observed + 1e-12).sum())) / (1 + valid.size)
    return {"statistic": "auroc" if task == "binary" else "c_index", "observed": float(observed),
            "n_permutations": int(valid.size), "p_value": float(p), "p_lower": float(p_lower),
            "null_mean": float(valid.mean()),
            "null_sd": float(valid.std(ddof=1)) if valid.size > 1 else float("nan"),
            "null_q025": float(np.quantile(valid, 0.025)), "null_q975": float(np.quantile(valid, 0.975)),
            "null": [float(v) for v in null]}

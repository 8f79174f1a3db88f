"""Fluence optimisation with non-negative weights: projected L-BFGS (default) or projected Adam, in torch.

:func:`minimize_nonneg` is a projected quasi-Newton method for ``min f(x), x >= 0`` (Kim, Sra &
Dhillon 2010, doi 10.1137/08073812X): L-BFGS two-loop direction on the free variables (``x > 0`` or
gradient pointing inwards), projection onto ``x >= 0``, Armijo backtracking along the projected
path. :class:`PlanProblem` turns objectives and hard constraints into ``f``; :func:`optimize_plan`
enforces the constraints by raising their penalty weights (and tightening their internal level)
until every constraint holds, so that painting and coverage yield to organ-at-risk limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from sarcart.dose.objectives import Constraint, Objective, penalty
from sarcart.errors import ConfigError

log = logging.getLogger(__name__)

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class OptimizeResult:
    """Outcome of :func:`minimize_nonneg`."""

    x: torch.Tensor
    fun: float
    n_iter: int
    n_eval: int
    history: list[float] = field(default_factory=list)
    converged: bool = False


def _value_grad(fun: Fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    f = fun(x)
    (g,) = torch.autograd.grad(f, x)
    return f.detach(), g.detach()


def _two_loop(q: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], free: torch.Tensor) -> torch.Tensor:
    """L-BFGS ``H q`` restricted to the free variables."""
    q = q.clone()
    alphas = []
    for s, y in reversed(pairs):
        sf, yf = s * free, y * free
        rho = 1.0 / torch.dot(yf, sf).clamp_min(1e-30)
        a = rho * torch.dot(sf, q)
        q -= a * yf
        alphas.append((a, rho, sf, yf))
    if pairs:
        s, y = pairs[-1]
        q *= torch.dot(s * free, y * free).clamp_min(1e-30) / torch.dot(y * free, y * free).clamp_min(1e-30)
    for a, rho, sf, yf in reversed(alphas):
        b = rho * torch.dot(yf, q)
        q += (a - b) * sf
    return q * free


def minimize_nonneg(fun: Fn, x0: torch.Tensor, *, method: Literal["lbfgs", "adam"] = "lbfgs", max_iter: int = 300,
                    history_size: int = 10, rel_tol: float = 1e-7, abs_tol: float = 0.0, lr: float = 0.05,
                    callback: Callable[[int, float], None] | None = None,
                    stop: Callable[[int, list[float]], bool] | None = None) -> OptimizeResult:
    """Minimise ``fun(x)`` subject to ``x >= 0``.

    Args:
        fun: scalar torch function of ``x`` (differentiable with autograd).
        x0: starting point ``(n,)`` (negative entries are clipped).
        method: ``lbfgs`` (projected L-BFGS) or ``adam`` (projected Adam with step ``lr`` x mean(x0)).
        max_iter: iterations.
        rel_tol: stop when the relative decrease over 5 iterations falls below this.
        abs_tol: ... or when the decrease over 5 iterations falls below this (units of ``fun``).
        callback: ``callback(iteration, f)`` after each iteration (progress display).
        stop: ``stop(iteration, history) -> bool`` after each iteration; ``True`` ends the run (not converged).
    """
    if method == "adam":
        return _adam(fun, x0, max_iter=max_iter, lr=lr, callback=callback)
    x = x0.detach().clamp_min(0.0).clone()
    f, g = _value_grad(fun, x)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    hist, n_eval, it, converged = [float(f)], 1, 0, False
    for it in range(1, max_iter + 1):
        free = ((x > 0) | (g < 0)).to(x.dtype)
        pg = g * free
        if float(pg.abs().max()) == 0.0:
            converged = True
            break
        p = -_two_loop(pg, pairs, free)
        if float(torch.dot(p, pg)) >= 0 or not pairs:
            p = -pg * (1.0 if pairs else float(x.abs().max().clamp_min(1e-3)) / float(pg.abs().max()))
            pairs.clear()
        t = 1.0
        for _ in range(30):
            xn = (x + t * p).clamp_min(0.0)
            fn, gn = _value_grad(fun, xn)
            n_eval += 1
            if float(fn) <= float(f) + 1e-4 * float(torch.dot(g, xn - x)):
                break
            t *= 0.5
        else:
            if pairs:  # the quasi-Newton model is stale (e.g. at a kink): restart from the gradient
                pairs.clear()
                continue
            converged = True  # no decrease possible along the projected path
            break
        s, y = xn - x, gn - g
        if float(torch.dot(s, y)) > 1e-12 * float(torch.dot(y, y)):
            pairs.append((s, y))
            pairs[:] = pairs[-history_size:]
        x, f, g = xn, fn, gn
        hist.append(float(f))
        if callback is not None:
            callback(it, float(f))
        if len(hist) > 5 and hist[-6] - hist[-1] <= rel_tol * max(abs(hist[-6]), 1e-30) + abs_tol:
            converged = True
            break
        if stop is not None and stop(it, hist):
            break
    return OptimizeResult(x=x, fun=float(f), n_iter=it, n_eval=n_eval, history=hist, converged=converged)


def _adam(fun: Fn, x0: torch.Tensor, *, max_iter: int, lr: float, callback: Callable[[int, float], None] | None
          ) -> OptimizeResult:
    x = x0.detach().clamp_min(0.0).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * float(x0.abs().mean().clamp_min(1e-3)))
    hist = []
    for it in range(1, max_iter + 1):
        opt.zero_grad()
        f = fun(x)
        f.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(min=0.0)
        hist.append(float(f.detach()))
        if callback is not None:
            callback(it, hist[-1])
    with torch.no_grad():
        final = float(fun(x))
    return OptimizeResult(x=x.detach(), fun=final, n_iter=max_iter, n_eval=max_iter + 1, history=hist)


class PlanProblem:
    """Objectives and constraints over structures, evaluated on a dose vector at the engine's points.

    Args:
        structures: structure name -> ``(n_s,)`` long positions into the dose vector.
        objectives: weighted objectives.
        constraints: hard limits.
        voxel_cc: volume of one dose voxel.
        maps: structure name -> ``(n_s,)`` prescription map (Gy) for ``painting`` objectives.
        weights: structure name -> ``(n_s,)`` voxels each sample stands for (subsampled structures).
        outside: structure name -> voxels of it outside the calculation volume (dose 0 there).
    """

    def __init__(self, structures: Mapping[str, torch.Tensor], objectives: list[Objective],
                 constraints: list[Constraint], *, voxel_cc: float, maps: Mapping[str, torch.Tensor] | None = None,
                 weights: Mapping[str, torch.Tensor] | None = None, outside: Mapping[str, float] | None = None
                 ) -> None:
        for t in [*objectives, *constraints]:
            if t.structure not in structures:
                raise ConfigError(f"objective/constraint on {t.structure!r}, which is not among the structures "
                                  f"{sorted(structures)}; contour it or drop the term")
        self.structures, self.objectives, self.constraints = dict(structures), list(objectives), list(constraints)
        self.voxel_cc, self.maps, self.weights = voxel_cc, dict(maps or {}), dict(weights or {})
        self.outside = dict(outside or {})
        self.rho = [10.0] * len(constraints)
        self.scale = [1.0] * len(constraints)

    def _term(self, o: Objective, dose: torch.Tensor) -> torch.Tensor:
        return penalty(o, dose[self.structures[o.structure]], voxel_cc=self.voxel_cc,
                       target_map=self.maps.get(o.structure), weights=self.weights.get(o.structure),
                       outside=self.outside.get(o.structure, 0.0))

    def size_cc(self, structure: str) -> float:
        """Volume (cm^3) of the structure (its samples and its voxels outside the calculation volume)."""
        w = self.weights.get(structure)
        n = float(w.sum()) if w is not None else float(self.structures[structure].numel())
        return (n + self.outside.get(structure, 0.0)) * self.voxel_cc

    def value(self, dose: torch.Tensor) -> torch.Tensor:
        """Weighted sum of objective penalties plus the current constraint penalties."""
        total = dose.new_zeros(())
        for o in self.objectives:
            total = total + o.weight * self._term(o, dose)
        for c, rho, sc in zip(self.constraints, self.rho, self.scale):
            # volume-weighted (Gy^2 cm^3), not a mean: a limit on a large organ must not be diluted by its size
            total = total + rho * self.size_cc(c.structure) * self._term(c.as_objective(dose_scale=sc), dose)
        return total

    def objective_only(self, dose: torch.Tensor) -> float:
        with torch.no_grad():
            return float(sum(o.weight * self._term(o, dose) for o in self.objectives))

    def violations(self, dose: torch.Tensor) -> list[tuple[Constraint, float]]:
        """Constraints not met, with their (negative) slack."""
        out = []
        for c in self.constraints:
            m = c.margin(dose[self.structures[c.structure]].detach(), self.voxel_cc, self.weights.get(c.structure),
                         self.outside.get(c.structure, 0.0))
            if m < 0:
                out.append((c, m))
        return out


def optimize_plan(problem: PlanProblem, dose_fn: Fn, x0: torch.Tensor, *, max_iter: int = 200, outer: int = 5,
                  method: Literal["lbfgs", "adam"] = "lbfgs", regulariser: Fn | None = None,
                  callback: Callable[[int, float], None] | None = None, rel_tol: float = 1e-7, abs_tol: float = 0.0,
                  check_every: int = 0, growth: float = 4.0, level_step: float = 0.98) -> OptimizeResult:
    """Optimise beamlet weights with hard constraints (penalty continuation).

    Each outer round minimises ``problem.value(dose_fn(x)) + regulariser(x)``; violated constraints get ``growth``
    times their penalty weight and an internal level ``level_step`` times lower (a margin for the residual of a
    finite penalty), until all hold or ``outer`` rounds are done.

    Args:
        max_iter: iterations per round (L-BFGS stops earlier at ``rel_tol``).
        outer: rounds at most.
        rel_tol: relative decrease over 5 iterations below which a round has converged.
        abs_tol: absolute decrease over 5 iterations below which a round has converged.
        check_every: with ``k > 0``, a round also ends after ``k`` iterations that lowered the objective by less
            than 1 % while a constraint is violated (the weight is raised without waiting for full convergence).
    """
    if outer < 1:
        raise ConfigError(f"outer must be >= 1, got {outer}")
    x, it_total, res, hist = x0, 0, None, []
    last: list[torch.Tensor] = []  # dose of the latest evaluation (the accepted point after each iteration)
    for r in range(outer):
        def fun(w: torch.Tensor) -> torch.Tensor:
            dose = dose_fn(w)
            last[:] = [dose.detach()]
            f = problem.value(dose)
            return f + regulariser(w) if regulariser is not None else f

        def stop(i: int, h: list[float], r: int = r) -> bool:
            if check_every <= 0 or r == outer - 1 or i % check_every or len(h) <= check_every:
                return False
            stalled = h[-check_every - 1] - h[-1] < 0.01 * abs(h[-check_every - 1])
            return stalled and bool(problem.violations(last[0]))

        done = it_total
        res = minimize_nonneg(fun, x, method=method, max_iter=max_iter, rel_tol=rel_tol, abs_tol=abs_tol, stop=stop,
                              callback=(lambda i, f, done=done: callback(done + i, f)) if callback else None)
        x, it_total = res.x, it_total + res.n_iter
        hist += res.history if not hist else res.history[1:]
        with torch.no_grad():
            bad = problem.violations(dose_fn(x))
        log.debug("round %d: %d iterations, %d evaluations, f %.4g, converged %s, %d limit(s) violated", r, res.n_iter,
                  res.n_eval, res.fun, res.converged, len(bad))
        if not bad:
            break
        for c, slack in bad:
            i = problem.constraints.index(c)
            problem.rho[i] *= growth
            problem.scale[i] *= level_step
            log.info("constraint %s %s %.1f Gy violated (slack %.3g): weight -> %.3g", c.structure, c.kind,
                     c.dose_gy, slack, problem.rho[i])
    res.n_iter, res.history = it_total, hist  # type: ignore[union-attr]
    return res  # type: ignore[return-value]

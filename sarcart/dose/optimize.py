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
                    history_size: int = 10, rel_tol: float = 1e-7, lr: float = 0.05,
                    callback: Callable[[int, float], None] | None = None) -> OptimizeResult:
    """Minimise ``fun(x)`` subject to ``x >= 0``.

    Args:
        fun: scalar torch function of ``x`` (differentiable with autograd).
        x0: starting point ``(n,)`` (negative entries are clipped).
        method: ``lbfgs`` (projected L-BFGS) or ``adam`` (projected Adam with step ``lr`` x mean(x0)).
        max_iter: iterations.
        rel_tol: stop when the relative decrease over 5 iterations falls below this.
        callback: ``callback(iteration, f)`` after each iteration (progress display).
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
        if len(hist) > 5 and hist[-6] - hist[-1] <= rel_tol * max(abs(hist[-6]), 1e-30):
            converged = True
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
    """

    def __init__(self, structures: Mapping[str, torch.Tensor], objectives: list[Objective],
                 constraints: list[Constraint], *, voxel_cc: float, maps: Mapping[str, torch.Tensor] | None = None
                 ) -> None:
        for t in [*objectives, *constraints]:
            if t.structure not in structures:
                raise ConfigError(f"objective/constraint on {t.structure!r}, which is not among the structures "
                                  f"{sorted(structures)}; contour it or drop the term")
        self.structures, self.objectives, self.constraints = dict(structures), list(objectives), list(constraints)
        self.voxel_cc, self.maps = voxel_cc, dict(maps or {})
        self.rho = [10.0] * len(constraints)
        self.scale = [1.0] * len(constraints)

    def value(self, dose: torch.Tensor) -> torch.Tensor:
        """Weighted sum of objective penalties plus the current constraint penalties."""
        total = dose.new_zeros(())
        for o in self.objectives:
            d = dose[self.structures[o.structure]]
            total = total + o.weight * penalty(o, d, voxel_cc=self.voxel_cc, target_map=self.maps.get(o.structure))
        for c, rho, sc in zip(self.constraints, self.rho, self.scale):
            d = dose[self.structures[c.structure]]
            # volume-weighted (Gy^2 cm^3), not a mean: a limit on a large organ must not be diluted by its size
            size = d.numel() * self.voxel_cc
            total = total + rho * size * penalty(c.as_objective(dose_scale=sc), d, voxel_cc=self.voxel_cc)
        return total

    def objective_only(self, dose: torch.Tensor) -> float:
        with torch.no_grad():
            return float(sum(o.weight * penalty(o, dose[self.structures[o.structure]], voxel_cc=self.voxel_cc,
                                                target_map=self.maps.get(o.structure)) for o in self.objectives))

    def violations(self, dose: torch.Tensor) -> list[tuple[Constraint, float]]:
        """Constraints not met, with their (negative) slack."""
        out = []
        for c in self.constraints:
            m = c.margin(dose[self.structures[c.structure]].detach(), self.voxel_cc)
            if m < 0:
                out.append((c, m))
        return out


def optimize_plan(problem: PlanProblem, dose_fn: Fn, x0: torch.Tensor, *, max_iter: int = 200, outer: int = 5,
                  method: Literal["lbfgs", "adam"] = "lbfgs", regulariser: Fn | None = None,
                  callback: Callable[[int, float], None] | None = None) -> OptimizeResult:
    """Optimise beamlet weights with hard constraints (penalty continuation).

    Each outer round minimises ``problem.value(dose_fn(x)) + regulariser(x)``; violated constraints get 10x their
    penalty weight and a 2 % lower internal level, until all hold or ``outer`` rounds are done.
    """
    if outer < 1:
        raise ConfigError(f"outer must be >= 1, got {outer}")
    x, it_total, res, hist = x0, 0, None, []
    for _ in range(outer):
        def fun(w: torch.Tensor) -> torch.Tensor:
            f = problem.value(dose_fn(w))
            return f + regulariser(w) if regulariser is not None else f

        done = it_total
        res = minimize_nonneg(fun, x, method=method, max_iter=max_iter,
                              callback=(lambda i, f, done=done: callback(done + i, f)) if callback else None)
        x, it_total = res.x, it_total + res.n_iter
        hist += res.history if not hist else res.history[1:]
        with torch.no_grad():
            bad = problem.violations(dose_fn(x))
        if not bad:
            break
        for c, slack in bad:
            i = problem.constraints.index(c)
            problem.rho[i] *= 10.0
            problem.scale[i] *= 0.98
            log.info("constraint %s %s %.1f Gy violated (slack %.3g): weight -> %.3g", c.structure, c.kind,
                     c.dose_gy, slack, problem.rho[i])
    res.n_iter, res.history = it_total, hist  # type: ignore[union-attr]
    return res  # type: ignore[return-value]

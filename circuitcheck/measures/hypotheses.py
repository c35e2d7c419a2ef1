"""Circuit claims as statistical hypothesis tests (after Shi et al., NeurIPS 2024).

Each test returns a ``HypothesisTest`` with its statistic, p-value and decision at ``alpha``:

- **equivalence** — H0: the circuit matches the full model within ``epsilon``, i.e.
  |Δ| <= ε with Δ = (F(C) - F(M)) / |F(M)| (mean metric over prompts, F(M) the full model).
  Two one-sided z-tests of Δ > ε and Δ < -ε, with the standard error of Δ from a paired
  bootstrap over prompts; p = the smaller p-value (the rejection regions are disjoint, so the
  size is at most α, exactly α at the boundary |Δ| = ε). Rejecting says the circuit is *not*
  equivalent; not rejecting is the circuit's claim surviving the test.
- **localization** — H0: removing the circuit hurts no more than removing a random set of
  as many heads from outside it (disjoint, so a random set never contains the circuit's own
  heads). Permutation test against ``n_random`` random head sets (batched):
  p = (1 + #{F(M \\ S) <= F(M \\ C)}) / (1 + n_random). Rejecting supports the circuit.
- **minimality** — for each head v ∈ C, H0: v matters no more than a random head outside the
  circuit. Statistic: drop(v) = F(C) - F(C \\ {v}); reference: gain(u) = F(C ∪ {u}) - F(C)
  for heads u outside C (all of them, or ``n_random`` sampled). p_v = (1 + #{gain(u) >=
  drop(v)}) / (1 + #u), Holm-corrected over the circuit's heads. Rejecting for every head
  supports minimality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..circuit import Circuit, Head, format_head
from ..errors import CircuitCheckError
from ..tasks import Task
from ._result import jsonable
from .circuit import _metric_rows, _setup


@dataclass(frozen=True, eq=False)
class HypothesisTest:
    """A test's statistic, p-value(s), decision and what was assumed."""

    name: str
    null: str
    statistic: float
    p_value: float
    alpha: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.p_value < self.alpha

    def __bool__(self) -> bool:
        raise TypeError(f"a {self.name} test has no truth value; read .rejected or .p_value")

    @property
    def value(self) -> float:
        """The test statistic."""
        return self.statistic

    @property
    def ci(self) -> tuple[float, float]:
        """statistic ± 1.96 se (95%) when the test has a standard error; else NaN."""
        se = self.details.get("se")
        if not se:
            return (float("nan"), float("nan"))
        z = NormalDist().inv_cdf(0.975)
        return (self.statistic - z * se, self.statistic + z * se)

    @property
    def ci_low(self) -> float:
        return self.ci[0]

    @property
    def ci_high(self) -> float:
        return self.ci[1]

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"name": self.name, "null": self.null, "value": self.statistic,
                         "ci": list(self.ci), "p_value": self.p_value, "alpha": self.alpha,
                         "rejected": self.rejected,
                         "details": {k: v for k, v in self.details.items()
                                     if isinstance(v, (int, float, str, bool)) or v is None}})

    def table(self):
        import pandas as pd

        return pd.DataFrame([{"name": self.name, "statistic": self.statistic,
                              "ci_low": self.ci[0], "ci_high": self.ci[1],
                              "p_value": self.p_value, "alpha": self.alpha,
                              "rejected": self.rejected}])

    def summary(self) -> str:
        word = "rejected" if self.rejected else "not rejected"
        return (f"{self.name}: H0 ({self.null}) {word} at alpha={self.alpha:g}: "
                f"statistic {self.statistic:.3f}, p={self.p_value:.3g}")


def equivalence_test(circuit_rows: np.ndarray, full_rows: np.ndarray, *, epsilon: float,
                     alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> HypothesisTest:
    """The equivalence test on per-prompt metrics of the circuit and the full model."""
    if epsilon <= 0:
        raise CircuitCheckError(f"epsilon must be positive, got {epsilon}")
    c, m = np.asarray(circuit_rows, float), np.asarray(full_rows, float)
    n = len(m)
    delta = (c.mean() - m.mean()) / abs(m.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (c[idx].mean(1) - m[idx].mean(1)) / np.abs(m[idx].mean(1))
    se = float(np.nanstd(boot, ddof=1))
    norm = NormalDist()
    if se == 0:
        p = 0.0 if abs(delta) > epsilon else 1.0
    else:
        p_above = 1 - norm.cdf((delta - epsilon) / se)
        p_below = norm.cdf((delta + epsilon) / se)
        p = float(min(p_above, p_below))
    return HypothesisTest("equivalence", f"|F(C) - F(M)| / |F(M)| <= {epsilon:g}", float(delta),
                          p, alpha, {"epsilon": epsilon, "se": se, "n": n})


def _setup_one(model: Any, task: Task, circuit: Circuit, ablation: str, metric: str,
               reference: str | None, seed: int | None, batch_size: int | None) -> Any:
    """The shared setup of the tests below: one circuit, ratios to the full model (the
    tests compute their own p-values, so the interval level is unused)."""
    return _setup(model, task, [circuit], ablation, metric, reference, "ratio", seed, 0.95,
                  batch_size)


def equivalence(model: Any, task: Task, circuit: Circuit, *, epsilon: float = 0.1,
                alpha: float = 0.05, ablation: str = "mean", metric: str = "logit_diff",
                reference: str | None = None, seed: int | None = None,
                batch_size: int | None = None) -> HypothesisTest:
    """Is the circuit (everything else ablated) equivalent to the full model within ε?"""
    s = _setup_one(model, task, circuit, ablation, metric, reference, seed, batch_size)
    rows, base = _metric_rows(s, [circuit], [False], with_baselines=True)
    return equivalence_test(rows[0], base["full"], epsilon=epsilon, alpha=alpha, seed=s.seed)


def _random_sets(L: int, H: int, size: int, n: int, rng: np.random.Generator,
                 exclude: set[Head] = frozenset()) -> list[list[Head]]:
    pool = [(l, h) for l in range(L) for h in range(H) if (l, h) not in exclude]
    if size > len(pool):
        raise CircuitCheckError(f"cannot draw random sets of {size} heads from {len(pool)}")
    return [[pool[i] for i in rng.choice(len(pool), size, replace=False)] for _ in range(n)]


def localization(model: Any, task: Task, circuit: Circuit, *, n_random: int = 100,
                 alpha: float = 0.05, ablation: str = "mean", metric: str = "logit_diff",
                 reference: str | None = None, seed: int | None = None,
                 batch_size: int | None = None) -> HypothesisTest:
    """Does removing the circuit hurt more than removing random sets of as many heads?"""
    s = _setup_one(model, task, circuit, ablation, metric, reference, seed, batch_size)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rng = np.random.default_rng(s.seed)
    sets = _random_sets(L, H, len(circuit), n_random, rng, exclude=set(circuit.heads))
    variants = [circuit] + [Circuit({"random": hs}) for hs in sets]
    rows = _metric_rows(s, variants, [True] * len(variants)).mean(1)
    observed, reference_dist = float(rows[0]), rows[1:]
    p = (1 + int((reference_dist <= observed).sum())) / (1 + len(reference_dist))
    return HypothesisTest(
        "localization", "removing the circuit hurts no more than removing random outside heads",
        observed, p, alpha,
        {"random_mean": float(reference_dist.mean()), "n_random": n_random,
         "random_quantiles": np.quantile(reference_dist, [0.05, 0.5, 0.95]).tolist()})


def minimality_test(model: Any, task: Task, circuit: Circuit, *, n_random: int | None = None,
                    alpha: float = 0.05, ablation: str = "mean", metric: str = "logit_diff",
                    reference: str | None = None, seed: int | None = None,
                    batch_size: int | None = None) -> HypothesisTest:
    """Does every head of the circuit matter more than a random head outside it? (Holm)"""
    s = _setup_one(model, task, circuit, ablation, metric, reference, seed, batch_size)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = list(circuit.heads)
    outside = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(heads)]
    if not outside:
        raise CircuitCheckError("the circuit has every head; nothing to compare with")
    rng = np.random.default_rng(s.seed)
    if n_random is not None and n_random < len(outside):
        outside = [outside[i] for i in rng.choice(len(outside), n_random, replace=False)]
    variants = ([circuit] + [circuit.without([v]) for v in heads]
                + [Circuit({**circuit.groups, "__extra__": [u]}, circuit.positions, circuit.mlps)
                   for u in outside])
    f = _metric_rows(s, variants, [False] * len(variants)).mean(1)
    drop = f[0] - f[1:1 + len(heads)]
    gain = f[1 + len(heads):] - f[0]
    raw = np.array([(1 + int((gain >= d).sum())) / (1 + len(gain)) for d in drop])
    # Holm step-down adjustment
    order = np.argsort(raw)
    adjusted = np.empty_like(raw)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
        adjusted[i] = running
    worst = int(np.argmax(adjusted))
    return HypothesisTest(
        "minimality", "some head of the circuit matters no more than a random outside head",
        float(drop[worst]), float(adjusted.max()), alpha,
        {"p_values": {format_head(h): float(p) for h, p in zip(heads, adjusted)},
         "drops": {format_head(h): float(d) for h, d in zip(heads, drop)},
         "reference_gains": gain.tolist(), "weakest": format_head(heads[worst])})

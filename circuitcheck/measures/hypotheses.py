"""Circuit claims as statistical hypothesis tests (after Shi et al., NeurIPS 2024).

Each test returns a ``HypothesisTest`` with its statistic, p-value and decision at ``alpha``:

- **equivalence** (TOST, the default) — H0: the circuit is *not* equivalent, |Δ| >= ε, with
  Δ = (F(C) - F(M)) / |F(M)| (mean metric over prompts, F(M) the full model). Two one-sided
  z-tests, of Δ <= -ε and of Δ >= ε, with the standard error of Δ from a paired bootstrap over
  prompts; p = the larger p-value, and the claim holds only when *both* reject (Schuirmann's
  two one-sided tests: size <= α at every point of H0). So an underpowered test (few prompts,
  noisy metric) fails to show equivalence instead of "holding" on absence of evidence. The
  standard error is floored at ``3 / (z_0.95 · n)`` (the "rule of three": when all n prompts
  agree, a disagreement rate up to 3/n is not excluded at 95%), so with a bounded metric on
  which every prompt agrees, TOST holds only when ε > 3/n·z_{1-α}/z_0.95 (n > 30 for ε=0.1).
- **equivalence (Shi et al.)** (``method="shi"``) — Shi et al.'s direction, kept for
  comparison: H0: |Δ| <= ε, p = the smaller one-sided p-value; *not rejecting* is read as the
  circuit surviving, which an underpowered test always does. Never the default.
- **localization** — H0: removing the circuit hurts no more than removing a random set of
  as many heads from outside it (disjoint, so a random set never contains the circuit's own
  heads). Permutation test against ``n_random`` random head sets (batched):
  p = (1 + #{F(M \\ S) <= F(M \\ C)}) / (1 + n_random). Rejecting supports the circuit.
- **minimality** — for each head v ∈ C, H0: v matters no more than a typical head outside
  the circuit. Per prompt i, drop_i(v) = F_i(C) - F_i(C \\ {v}) and gain_i(u) = F_i(C ∪ {u}) -
  F_i(C) for heads u outside C (all of them, or ``n_random`` sampled). Statistic:
  T_v = |mean_i drop_i(v)| - mean_u |mean_i gain_i(u)| (a head that *hurts* the task matters as
  much as one that helps, so the size of the drop is tested, not its sign); its standard error
  comes from a paired bootstrap over prompts (drops and gains resampled together), and
  p_v = 1 - Φ(T_v / se_v), Holm-corrected over the circuit's heads. Unlike a rank against
  the outside heads, whose p-value cannot go below 1 / (1 + #outside) (so that Holm over 20
  heads of a 270-head model could never reach 0.05), this p-value shrinks with the number of
  prompts, so a real circuit can pass. Its size is checked by simulation in
  ``tests/test_hypotheses.py`` (heads drawn from the same distribution inside and outside:
  rejection rate <= α). Rejecting for every head supports minimality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..circuit import Circuit, Head, format_head
from ..errors import CircuitCheckError
from ..tasks import Task
from ._result import BoundsFromCi, jsonable
from .circuit import _metric_rows, _setup


@dataclass(frozen=True, eq=False)
class HypothesisTest(BoundsFromCi):
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


def _rule_of_three_se(n: int) -> float:
    """The smallest standard error an n-prompt mean is credited with (see the module doc)."""
    return 3.0 / (NormalDist().inv_cdf(0.95) * max(n, 1))


def _delta_and_se(c: np.ndarray, m: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    n = len(m)
    delta = (c.mean() - m.mean()) / abs(m.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (c[idx].mean(1) - m[idx].mean(1)) / np.abs(m[idx].mean(1))
    se = float(np.nanstd(boot, ddof=1)) if n > 1 else float("inf")
    return float(delta), se


def _check_test_args(epsilon: float, alpha: float) -> tuple[float, float]:
    from .. import _validate

    return _validate.positive(epsilon, "epsilon"), _validate.open_unit(alpha, "alpha")


def equivalence_test(circuit_rows: np.ndarray, full_rows: np.ndarray, *, epsilon: float,
                     alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> HypothesisTest:
    """TOST equivalence on per-prompt metrics: rejected (= equivalence shown) only when both
    one-sided tests of |Δ| >= ε reject."""
    epsilon, alpha = _check_test_args(epsilon, alpha)
    c, m = np.asarray(circuit_rows, float), np.asarray(full_rows, float)
    n = len(m)
    delta, se = _delta_and_se(c, m, n_boot, seed)
    se_used = max(se, _rule_of_three_se(n)) if np.isfinite(se) else float("inf")
    norm = NormalDist()
    if not np.isfinite(se_used) or not np.isfinite(delta):
        p = 1.0
    else:
        p_lower = 1 - norm.cdf((delta + epsilon) / se_used)  # H0: Δ <= -ε
        p_upper = norm.cdf((delta - epsilon) / se_used)      # H0: Δ >= ε
        p = float(max(p_lower, p_upper))
    return HypothesisTest("equivalence (TOST)", f"|F(C) - F(M)| / |F(M)| >= {epsilon:g}", delta,
                          p, alpha, {"epsilon": epsilon, "se": se_used, "se_bootstrap": se,
                                     "n": n, "method": "tost"})


def equivalence_test_shi(circuit_rows: np.ndarray, full_rows: np.ndarray, *, epsilon: float,
                         alpha: float = 0.05, n_boot: int = 2000,
                         seed: int = 0) -> HypothesisTest:
    """Shi et al.'s equivalence test (H0: |Δ| <= ε; *not* rejecting is the circuit's claim)."""
    epsilon, alpha = _check_test_args(epsilon, alpha)
    c, m = np.asarray(circuit_rows, float), np.asarray(full_rows, float)
    n = len(m)
    delta, se = _delta_and_se(c, m, n_boot, seed)
    norm = NormalDist()
    if not np.isfinite(se):
        p = 1.0
    elif se == 0:
        p = 0.0 if abs(delta) > epsilon else 1.0
    else:
        p_above = 1 - norm.cdf((delta - epsilon) / se)
        p_below = norm.cdf((delta + epsilon) / se)
        p = float(min(p_above, p_below))
    return HypothesisTest("equivalence (Shi et al.)", f"|F(C) - F(M)| / |F(M)| <= {epsilon:g}",
                          delta, p, alpha, {"epsilon": epsilon, "se": se, "n": n,
                                            "method": "shi"})


def _setup_one(model: Any, task: Task, circuit: Circuit, ablation: str, metric: str,
               reference: str | None, seed: int | None, batch_size: int | None) -> Any:
    """The shared setup of the tests below: one circuit, ratios to the full model (the
    tests compute their own p-values, so the interval level is unused)."""
    return _setup(model, task, [circuit], ablation, metric, reference, "ratio", seed, 0.95,
                  batch_size)


def equivalence(model: Any, task: Task, circuit: Circuit, *, epsilon: float = 0.1,
                alpha: float = 0.05, ablation: str = "mean", metric: str = "logit_diff",
                reference: str | None = None, seed: int | None = None,
                batch_size: int | None = None, method: str = "tost") -> HypothesisTest:
    """Is the circuit (everything else ablated) equivalent to the full model within ε?

    ``method="tost"`` (default): ``.rejected`` means equivalence was *shown* (both one-sided
    tests of |Δ| >= ε reject). ``method="shi"``: Shi et al.'s test, where ``.rejected`` means
    the circuit is shown *not* equivalent (kept for comparison)."""
    if method not in ("tost", "shi"):
        raise CircuitCheckError(f"method must be 'tost' or 'shi', got {method!r}")
    _check_test_args(epsilon, alpha)
    s = _setup_one(model, task, circuit, ablation, metric, reference, seed, batch_size)
    rows, base = _metric_rows(s, [circuit], [False], with_baselines=True)
    test = equivalence_test if method == "tost" else equivalence_test_shi
    return test(rows[0], base["full"], epsilon=epsilon, alpha=alpha, seed=s.seed)


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
    from .. import _validate

    n_random = _validate.count(n_random, "n_random")
    alpha = _validate.open_unit(alpha, "alpha")
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
    from .. import _validate

    if n_random is not None:
        n_random = _validate.count(n_random, "n_random")
    _validate.open_unit(alpha, "alpha")
    if n_random is not None and n_random < len(outside):
        outside = [outside[i] for i in rng.choice(len(outside), n_random, replace=False)]
    variants = ([circuit] + [circuit.without([v]) for v in heads]
                + [Circuit({**circuit.groups, "__extra__": [u]}, circuit.positions, circuit.mlps)
                   for u in outside])
    f = _metric_rows(s, variants, [False] * len(variants))  # [V, N] per prompt
    drops = f[0] - f[1:1 + len(heads)]
    gains = f[1 + len(heads):] - f[0]
    out = minimality_from_rows(drops, gains, alpha=alpha, seed=s.seed)
    names = [format_head(h) for h in heads]
    p = out.details.pop("p_list")
    worst = int(np.argmax(p))
    return HypothesisTest(
        out.name, out.null, float(drops[worst].mean()), float(max(p)), alpha,
        {"p_values": dict(zip(names, p)), "drops": dict(zip(names, drops.mean(1).tolist())),
         "reference_gains": gains.mean(1).tolist(), "weakest": names[worst],
         "reference": out.details["reference"], "n": out.details["n"],
         "n_outside": len(outside)})


def _holm(raw: np.ndarray) -> np.ndarray:
    order = np.argsort(raw)
    adjusted = np.empty_like(raw)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
        adjusted[i] = running
    return adjusted


def minimality_from_rows(drops: np.ndarray, gains: np.ndarray, *, alpha: float = 0.05,
                         n_boot: int = 1000, seed: int = 0) -> HypothesisTest:
    """The minimality test on per-prompt drops [K, N] (circuit heads) and gains [U, N] (outside
    heads): p_v = 1 - Φ(T_v / se_v), T_v = |mean drop(v)| - mean_u |mean gain(u)|, Holm over v."""
    from .. import _validate

    alpha = _validate.open_unit(alpha, "alpha")
    drops, gains = np.atleast_2d(np.asarray(drops, float)), np.atleast_2d(np.asarray(gains, float))
    n = drops.shape[1]
    reference = float(np.abs(gains.mean(1)).mean())
    t = np.abs(drops.mean(1)) - reference
    if n < 2:
        raw = np.ones(len(drops))
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        ref_b = np.abs(gains[:, idx].mean(2)).mean(0)             # [B]
        t_b = np.abs(drops[:, idx].mean(2)) - ref_b[None, :]      # [K, B]
        se = t_b.std(1, ddof=1)
        norm = NormalDist()
        raw = np.array([1 - norm.cdf(tv / sv) if sv > 0 else float(tv <= 0)
                        for tv, sv in zip(t, se)])
    adjusted = _holm(raw)
    return HypothesisTest(
        "minimality", "some head of the circuit matters no more than a typical outside head",
        float(t[int(np.argmax(adjusted))]), float(adjusted.max()), alpha,
        {"p_list": adjusted.tolist(), "reference": reference, "n": n})

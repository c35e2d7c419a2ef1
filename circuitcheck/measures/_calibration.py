"""Keep probabilities that make Monte-Carlo ablation informative on a task, and the two ends
(every head ablated, full model) the degeneracy check measures against."""
from __future__ import annotations

from typing import Any

from ..interventions import Variants, run_variants


#: Where a calibrated regime's mean metric sits, as a fraction of the way from every head
#: ablated to the full model.
TARGETS = {"importance": 0.3, "exclusion": 0.7}


def measure_ends(model: Any, enc: Any, values: Any, m: Any,
                 batch_size: int | None) -> tuple[float, float]:
    """(every head ablated, full model) mean metric over the task's prompts."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.stack([torch.zeros(L, H, dtype=torch.bool), torch.ones(L, H, dtype=torch.bool)])
    out = m(run_variants(model, enc, Variants(masks), values, batch_size=batch_size,
                         reads=m.reads or None))  # [2, N]
    return float(out[0].mean()), float(out[1].mean())


def calibrate(model: Any, enc: Any, values: Any, m: Any, target_frac: float,
              ends: tuple[float, float], *, seed: int = 0, trials: int = 64, steps: int = 6,
              batch_size: int | None = None) -> tuple[float, dict[str, Any]]:
    """The keep probability at which the mean metric is ``target_frac`` of the way from every
    head ablated (``ends[0]``) to the full model (``ends[1]``), by bisection over (0.02, 0.98).

    Every probe uses the same ``trials`` uniform draws and prompts (common random numbers), so
    the probed mean rises with the keep probability without sampling noise between probes.
    Returns (keep_prob, {"target", "measured", "probes": [[p, mean], ...], "keep_prob"}).
    """
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    r0, r1 = ends
    target = r0 + target_frac * (r1 - r0)
    gen = torch.Generator().manual_seed(seed + int(1000 * target_frac))
    u = torch.rand(trials, L, H, generator=gen)
    prompt = torch.randint(0, enc.n, (trials,), generator=gen)
    lo, hi = 0.02, 0.98
    probes: list[list[float]] = []
    best = (float("inf"), 0.5, float("nan"))
    for _ in range(steps):
        p = (lo + hi) / 2
        out = m(run_variants(model, enc, Variants(u < p), values, prompt_of=prompt,
                             batch_size=batch_size, reads=m.reads or None))[:, 0]
        mean = float(out.mean())
        probes.append([p, mean])
        if abs(mean - target) < best[0]:
            best = (abs(mean - target), p, mean)
        if (mean < target) == (r1 >= r0):
            lo = p
        else:
            hi = p
    _, p, mean = best
    return p, {"keep_prob": p, "target": target, "target_frac": target_frac,
               "measured": mean, "probes": probes, "trials_per_probe": trials}

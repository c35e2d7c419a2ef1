"""The pieces of Monte-Carlo rounds and sweeps that an executor runs (``circuitcheck.executors``).

Each work function has the executor's signature ``fn(model, context, chunk, cache)`` and is
module-level, so a Ray worker finds it by name. A worker prepares a context once (the task's
encoding and ablation values on *its* copy of the model, kept in ``cache`` under the context's
id) and evaluates each chunk it is sent; the driver keeps the random draws and the statistics.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..executors import Executor, chunks_of, get_executor, load_spec, new_context_id
from ..interventions import Ablation, Variants, ablation_values, final_logprobs, run_variants
from .metrics import get_metric

#: Fewest trials a chunk is cut to: smaller chunks cost more in round trips than they save.
MIN_CHUNK = 32


def trial_context(executor: Any, model: Any, task: Any, ablation: str, reference: str | None,
                  metric: str, batch_size: int | None) -> tuple[Executor, dict | None]:
    """The executor ``executor`` names, and what its workers need to evaluate the trials of
    one ``stochastic_ablation`` call (None in process). Checked before any trial runs: a
    model a worker cannot reload is refused here."""
    ex = get_executor(executor)
    if ex.is_local():
        return ex, None
    load_spec(model)
    return ex, {"id": new_context_id(), "task": task, "ablation": ablation,
                "reference": reference, "metric": metric, "batch_size": batch_size}


def _trial_setup(model: Any, ctx: dict[str, Any], cache: dict) -> tuple[Any, Any, Any]:
    key = ("trials", ctx["id"])
    if key not in cache:
        enc = ctx["task"].encode(model)
        m = get_metric(ctx["metric"], has_wrong=enc.wrong is not None,
                       has_sets=enc.good is not None)
        values = ablation_values(model, enc, Ablation.parse(ctx["ablation"]), ctx["reference"])
        cache.clear()  # one measurement at a time per worker: free the previous one's tables
        cache[key] = (enc, m, values)
    return cache[key]


def run_trials(model: Any, ctx: dict[str, Any], chunk: tuple[np.ndarray, np.ndarray],
               cache: dict) -> np.ndarray:
    """Work function: the metric of each trial (keep-mask [T, L, H] bool, prompt [T])."""
    import torch

    masks, prompt = chunk
    enc, m, values = _trial_setup(model, ctx, cache)
    readout = run_variants(model, enc, Variants(torch.from_numpy(masks)), values,
                           prompt_of=torch.from_numpy(prompt), batch_size=ctx["batch_size"],
                           reads=m.reads or None)
    return np.asarray(m(readout)[:, 0], dtype=float)


def round_metrics(executor: Executor, ctx: dict | None, model: Any, enc: Any, values: Any,
                  m: Any, masks: Any, prompt: Any, *, batch_size: int | None,
                  progress: Any = None) -> Any:
    """The metric of each trial of one round (keep-masks [T, L, H], prompts [T]): in process
    when ``ctx`` is None, exactly as ``stochastic_ablation`` always ran them, else on
    ``executor`` in one contiguous chunk per worker, back in trial order."""
    if ctx is None:
        readout = run_variants(model, enc, Variants(masks), values, prompt_of=prompt,
                               batch_size=batch_size, progress=progress, reads=m.reads or None)
        return m(readout)[:, 0]
    masks_np, prompt_np = masks.numpy(), prompt.numpy()
    parts = chunks_of(len(prompt_np), executor.slots(model), MIN_CHUNK)
    chunks = [(masks_np[r.start:r.stop], prompt_np[r.start:r.stop]) for r in parts]
    out = executor.map(model, run_trials, ctx, chunks, progress=progress,
                       sizes=[len(r) for r in parts])
    return np.concatenate(out) if out else np.zeros(0)


def run_sweep_ablation(model: Any, ctx: dict[str, Any], ablation: str, cache: dict) -> Any:
    """Work function: one ablation's readout over every variant of a sweep (tensors on CPU)."""
    key = ("sweep", ctx["id"])
    if key not in cache:
        enc = ctx["task"].encode(model)
        ref = final_logprobs(model, enc, batch_size=ctx["batch_size"]) if ctx["with_ref"] \
            else None
        cache.clear()
        cache[key] = (enc, ref, Variants.from_circuits(model, ctx["variants"], ctx["ablate"]))
    enc, ref, variants = cache[key]
    values = ablation_values(model, enc, Ablation.parse(ablation), ctx["reference"],
                             with_mlp=ctx["with_mlp"])
    readout = run_variants(model, enc, variants, values, batch_size=ctx["batch_size"],
                           ref_logprobs=ref)
    return _to_cpu(readout)


def _to_cpu(readout: Any) -> Any:
    """The readout with every tensor on the CPU (it crosses processes, maybe from a GPU)."""
    import dataclasses

    return dataclasses.replace(readout, **{
        f.name: getattr(readout, f.name).cpu() for f in dataclasses.fields(readout)
        if getattr(readout, f.name) is not None and hasattr(getattr(readout, f.name), "cpu")})


def run_attention_rows(model: Any, ctx: dict[str, Any], chunk: tuple[int, str, int, int],
                       cache: dict) -> np.ndarray:
    """Work function: answer log-probs [rows, N] of the head sets ``masks[start:stop]``
    attention-ablated (``mode``) on the repeated-sequence task at ``lag`` (seed 004's grid)."""
    import torch

    from ..interventions.attention import run_attention_ablation
    from ..tasks import induction

    lag, mode, start, stop = chunk
    key = ("attention", ctx["id"], lag)
    if key not in cache:
        if not any(k[:2] == ("attention", ctx["id"]) for k in cache):
            cache.clear()  # a new measurement: free the previous one's
        cache[key] = induction(model, ctx["n"], seq_len=lag, seed=ctx["seed"]).encode(model)
    r = run_attention_ablation(model, cache[key], torch.from_numpy(ctx["masks"][start:stop]),
                               mode, batch_size=ctx["batch_size"])
    return r.logprob.cpu().numpy()


def attention_grid(executor: Executor, model: Any, masks: Any, cells: list[tuple[int, str]],
                   n: int, seed: int, batch_size: int | None) -> dict[tuple[int, str], np.ndarray]:
    """Every (lag, mode) cell's answer log-probs [V, N] for the head sets ``masks`` [V, L, H],
    the rows of each cell cut into one chunk per worker, put back in order."""
    ctx = {"id": new_context_id(), "masks": masks.numpy(), "n": n, "seed": seed,
           "batch_size": batch_size}
    parts = chunks_of(len(masks), executor.slots(model))
    chunks = [(lag, mode, r.start, r.stop) for lag, mode in cells for r in parts]
    out = executor.map(model, run_attention_rows, ctx, chunks)
    per = len(parts)
    return {cell: np.concatenate(out[i * per:(i + 1) * per]) for i, cell in enumerate(cells)}


def patch_context(model: Any, task: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """What workers need to patch cells of one ``patch_heads`` / ``patch_residual`` grid:
    the task and the grid's settings (``spec``: component, per_position, positions,
    direction, metric, batch_size). The metric must be named: a worker builds its own."""
    from ..errors import CircuitCheckError

    load_spec(model)
    if not isinstance(spec["metric"], str):
        raise CircuitCheckError("a Ray executor rebuilds the metric on each worker by its name: "
                                "pass metric= as a name (logit_diff, logprob, ...) or run with "
                                "executor='local'")
    return {"id": new_context_id(), "task": task, **spec}


def patch_cells_on(executor: Executor, model: Any, ctx: dict[str, Any], todo: np.ndarray,
                   work: Any) -> Any:
    """Exact patching of the ``todo`` cells on ``executor`` by the work function ``work``
    (``activation_patching.run_patch_cells``): the layers with work dealt to the workers in
    turn (later layers patch cheaper: runs start at the patched layer), each worker's grid
    merged back cell by cell; the same grid one process computes."""
    import dataclasses

    todo = np.asarray(todo, dtype=bool)
    rows = np.flatnonzero(todo.reshape(todo.shape[0], -1).any(1))
    n = max(1, min(executor.slots(model), len(rows)))
    chunks = []
    for w in range(n):
        part = np.zeros_like(todo)
        part[rows[w::n]] = todo[rows[w::n]]
        chunks.append(part)
    grids = executor.map(model, work, ctx, chunks)
    base = grids[0]
    values, per, exact = base.values.copy(), base.per_prompt.copy(), base.exact.copy()
    by_prompt = todo.ndim == values.ndim + 1  # (cell, prompt) pairs: the screen's looks
    for g, part in zip(grids[1:], chunks[1:]):
        cell = part.any(-1) if by_prompt else part
        pair = part if by_prompt else np.broadcast_to(part[..., None], per.shape)
        values[cell], per[pair] = g.values[cell], g.per_prompt[pair]
        exact |= g.exact
    problem = next((g.problem for g in grids if g.problem), None)
    return dataclasses.replace(base, values=values, per_prompt=per, exact=exact, problem=problem)

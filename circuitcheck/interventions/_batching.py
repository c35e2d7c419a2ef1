"""How many rows (prompt copies) fit in one forward pass on the model's device, and which."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Budget for one batch's activations on a CPU (bytes): big enough to amortise Python
#: overhead, small enough that the elementwise work (GELU, layer norms, softmax) stays in
#: cache. Measured on a GPT-2-shaped model (d=768): 64-96 rows per batch ran 25% faster per
#: row than 372 rows (the old 512 MiB budget) and no slower than 16-48.
CPU_BUDGET = 128 * 2**20
MAX_ROWS = 4096
#: A forward pass's fixed cost on a CPU, in token-rows of work (GPT-2-shaped, 4 layers:
#: ~15 ms of Python and hooks per pass, ~0.24 ms per token-row).
CPU_OVERHEAD_TOKENS = 64
#: Most distinct lengths one batch may span (bounds the batch planner's work).
MAX_SPAN = 256


def rows_per_batch(model: Any, seq_len: int, extra_per_row: int = 0) -> int:
    """Rows per forward pass, from the device's free memory and the model's width.

    Inference keeps roughly one layer's activations alive at a time: the residual stream,
    q/k/v, the attention scores and the MLP hidden layer in the model's dtype, plus the
    last-token logits in float32 (metrics read them upcast) and our per-row ablation values.
    On CUDA the budget is 60% of the free memory (``torch.cuda.mem_get_info``) of the
    fullest device the model uses (a sharded model holds a layer's activations on each);
    on a CPU it is :data:`CPU_BUDGET`.
    """
    cfg = model.cfg
    return rows_for_budget(batch_budget(model_devices(model)), bytes_per_row(cfg, seq_len,
                                                                                extra_per_row))


def bytes_per_row(cfg: Any, seq_len: int, extra_per_row: int = 0) -> int:
    """Activation bytes one row of ``seq_len`` tokens keeps alive in a forward pass."""
    import torch

    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    dtype = getattr(cfg, "dtype", None)
    elem = torch.finfo(dtype).bits // 8 if isinstance(dtype, torch.dtype) and \
        dtype.is_floating_point else 4
    per_row = seq_len * (8 * cfg.d_model + 2 * d_mlp + 3 * cfg.n_heads * seq_len) * elem
    return per_row + cfg.d_vocab * (elem + 4) + extra_per_row


def model_devices(model: Any) -> list[str]:
    """The devices a model's modules live on: its device map's (a sharded model), else
    ``cfg.device``. GPU indices are written ``cuda:N``; ``disk`` is left out."""
    placed = getattr(model, "__dict__", {}).get("cc_device_map") or {}
    devices = {f"cuda:{v}" if isinstance(v, int) else str(v) for v in placed.values()}
    devices.discard("disk")
    return sorted(devices) or [str(getattr(model.cfg, "device", None) or "cpu")]


def batch_budget(devices: list[str]) -> int:
    """Bytes one batch's activations may take: 60% of the least free memory over the CUDA
    devices among ``devices``; :data:`CPU_BUDGET` when there are none (CPU, MPS)."""
    import torch

    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    if not cuda:
        return CPU_BUDGET
    return int(min(torch.cuda.mem_get_info(d)[0] for d in cuda) * 0.6)


def rows_for_budget(budget: int, per_row: int) -> int:
    """Rows of ``per_row`` bytes that fit ``budget``: at least 1, at most :data:`MAX_ROWS`."""
    return int(max(1, min(MAX_ROWS, budget // max(per_row, 1))))


def length_batches(lengths: torch.Tensor, max_rows: int, *, device: Any = "cpu",
                   fixed_rows: bool = False) -> list[torch.Tensor]:
    """Split rows into forward passes, each padded to its longest row, doing the least work.

    ``max_rows`` rows of the longest length fit the budget; a batch of shorter rows takes
    proportionally more (unless ``fixed_rows``: a batch size the caller chose). Rows of one
    length that fill a batch are split into equal batches (no padding, no small tail); the
    rest are grouped by a small dynamic program over lengths that minimises padded
    token-rows plus a forward pass's fixed cost (measured on a CPU: ~60 token-rows for a
    GPT-2-shaped model; on a GPU, where tokens are cheap and launches are not, ~1/32 of a
    batch). Returns row indices into ``lengths``.
    """
    import torch

    n = int(lengths.shape[0])
    if n == 0:
        return []
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].tolist()
    budget = max(1, max_rows) * max(1, lens[0])  # token-rows per forward
    gpu = str(device).startswith("cuda")
    overhead = max(CPU_OVERHEAD_TOKENS, budget // 32) if gpu else CPU_OVERHEAD_TOKENS

    def cap(length: int) -> int:
        return max(1, max_rows if fixed_rows else min(MAX_ROWS, budget // length))

    batches: list[torch.Tensor] = []
    groups: list[tuple[int, int, int]] = []  # (start, end, length) in ``order``, longest first
    i = 0
    while i < n:
        j = i
        while j < n and lens[j] == lens[i]:
            j += 1
        if j - i >= cap(lens[i]):  # whole batches of one length, of equal size: no padding,
            k = -(-(j - i) // cap(lens[i]))  # and no small last batch paying a whole overhead
            for part in torch.tensor_split(order[i:j], k):
                batches.append(part)
            i = j
        if i < j:
            groups.append((i, j, lens[i]))
        i = j
    # best[b]: least work covering groups[:b]; a batch is groups[a:b], padded to groups[a]'s length
    best = [0] + [float("inf")] * len(groups)
    cut = [0] * (len(groups) + 1)
    for b in range(1, len(groups) + 1):
        rows = 0
        for a in range(b - 1, max(-1, b - 1 - MAX_SPAN), -1):
            rows += groups[a][1] - groups[a][0]
            if rows > cap(groups[a][2]):
                break
            cost = best[a] + rows * groups[a][2] + overhead
            if cost < best[b]:
                best[b], cut[b] = cost, a
    segments = []
    b = len(groups)
    while b > 0:
        segments.append(torch.cat([order[s:e] for s, e, _ in groups[cut[b]:b]]))
        b = cut[b]
    return batches + segments[::-1]


def merged_starts(start: torch.Tensor, tokens: torch.Tensor, stop: int, *,
                  device: Any = "cpu") -> torch.Tensor:
    """Each row's start layer after merging small groups into an earlier one.

    Rows that first differ from the base run at layer ``l`` (``start``) are exact when run
    from any earlier layer with the base residual there, at the cost of the layers between.
    A few rows alone run at a fraction of the machine's rate (measured on SmolLM2, 2 CPU
    cores: 4 rows 40% of the FLOP limit, 32 rows 78%, 144 rows 90%), so a small group is run
    from an earlier group's layer when the work it adds is less than the forward passes it
    saves: a small dynamic program over the start layers, in token-rows x layers, with a pass's
    fixed cost of :data:`CPU_OVERHEAD_TOKENS` (on a GPU 8 times that). ``tokens``: each row's
    real tokens; ``stop``: the layer runs end at. Every returned start is one of ``start``'s.
    """
    import torch

    layers = torch.unique(start).tolist()
    if len(layers) < 2:
        return start
    work = [float(tokens[start == l].sum()) for l in layers]
    overhead = CPU_OVERHEAD_TOKENS * (8 if str(device).startswith("cuda") else 1)
    best = [0.0] + [float("inf")] * len(layers)
    cut = [0] * (len(layers) + 1)
    for b in range(1, len(layers) + 1):
        acc = 0.0
        for a in range(b - 1, -1, -1):  # the group layers[a:b], run from layers[a]
            acc += work[a]
            cost = best[a] + (stop - layers[a]) * (acc + overhead)
            if cost < best[b]:
                best[b], cut[b] = cost, a
    out = start.clone()
    b = len(layers)
    while b > 0:
        a = cut[b]
        for l in layers[a:b]:
            out[start == l] = layers[a]
        b = a
    return out

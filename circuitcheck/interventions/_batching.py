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


def rows_per_batch(model: Any, seq_len: int, extra_per_row: int = 0) -> int:
    """Rows per forward pass, from the device's free memory and the model's width.

    Inference keeps roughly one layer's activations alive at a time: the residual stream,
    q/k/v, the attention scores and the MLP hidden layer, plus our per-row ablation values.
    """
    import torch

    cfg = model.cfg
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    elem = torch.finfo(cfg.dtype).bits // 8 if hasattr(cfg, "dtype") and cfg.dtype.is_floating_point else 4
    per_row = seq_len * (8 * cfg.d_model + 2 * d_mlp + 3 * cfg.n_heads * seq_len) * elem
    per_row += cfg.d_vocab * elem * 2 + extra_per_row
    device = torch.device(str(getattr(cfg, "device", "cpu")))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.6)
    else:
        budget = CPU_BUDGET
    return int(max(1, min(MAX_ROWS, budget // max(per_row, 1))))


def length_batches(lengths: torch.Tensor, max_rows: int, *, device: Any = "cpu",
                   fixed_rows: bool = False) -> list[torch.Tensor]:
    """Split rows into forward passes: longest first, each batch padded to its longest row.

    ``max_rows`` rows of the longest length fit the budget; a batch of shorter rows takes
    proportionally more (unless ``fixed_rows``: a batch size the caller chose). A group of
    rows shorter than the open batch starts a new batch when the padding it would compute
    costs more than a forward pass's fixed overhead (measured on a CPU: ~60 token-rows for a
    GPT-2-shaped model; on a GPU, where tokens are cheap and launches are not, ~1/32 of a
    batch), so the work done stays close to the tokens actually read. Returns row indices
    into ``lengths``.
    """
    import torch

    n = int(lengths.shape[0])
    if n == 0:
        return []
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].tolist()
    budget = max(1, max_rows) * max(1, lens[0])  # token-rows per forward
    gpu = str(device).startswith("cuda")
    overhead_tokens = max(CPU_OVERHEAD_TOKENS, budget // 32) if gpu else CPU_OVERHEAD_TOKENS

    def cap(length: int) -> int:
        return max(1, max_rows if fixed_rows else min(MAX_ROWS, budget // length))

    batches: list[torch.Tensor] = []
    start, i = 0, 0
    while i < n:
        j = i  # rows i..j-1 share one length
        while j < n and lens[j] == lens[i]:
            j += 1
        P = lens[start]
        if i > start and (P - lens[i]) * min(j - i, cap(P) - (i - start)) > overhead_tokens:
            batches.append(order[start:i])  # padding would cost more than another forward
            start = i
        while start < j and j - start >= cap(lens[start]):
            cut = start + cap(lens[start])
            batches.append(order[start:cut])
            start = cut
        i = j
    if start < n:
        batches.append(order[start:])
    return batches

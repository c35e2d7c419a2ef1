"""Shared pieces of the benchmarks: models, timing, the device's measured matmul rate."""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def gpt2_shaped(n_layers: int = 4, d_model: int = 768, n_heads: int = 12, seed: int = 0) -> Path:
    """A GPT-2-small-shaped model (fewer layers, GPT-2's 50257-token unembedding) with random
    weights, saved with the zoo's word-level tokenizer (prompts use its first 64 ids)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitcheck.zoo.data import make_tokenizer

    out = Path(tempfile.mkdtemp(prefix="cc-bench-")) / f"gpt2-{n_layers}l"
    tok = make_tokenizer()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=128, n_embd=d_model,
                                       n_layer=n_layers, n_head=n_heads,
                                       bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def median_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], device: str = "cpu", repeats: int = 5
                ) -> tuple[dict[str, float], float]:
    """Median wall time of each ``fns`` entry and the median matmul rate, all measured in
    turn within each repeat (after one warm-up), so load on the machine hits them alike."""
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    rates = []
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
        rates.append(matmul_rate(device))
    return {k: statistics.median(v) for k, v in times.items()}, statistics.median(rates)


def matmul_rate(device: str = "cpu", n: int = 1024, dtype: Any = None, *, inner: int = 8,
                repeats: int = 5) -> float:
    """Measured dense matmul FLOP/s of the device (the physical limit's denominator), in
    ``dtype`` (default float32)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(inner):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return inner * 2 * n**3 / median_time(run, repeats)


def forward_flops(model: Any, tokens: int, read_positions: int | None = None) -> float:
    """Matmul FLOPs of one forward over ``tokens`` tokens (unembedding only where read): the
    q and o projections, k and v over the key/value heads only (grouped-query attention), and
    the MLP's two matmuls, three when gated (Llama's gate, up, down). For GPT-2 that is
    ``2 * (4 d^2 + 2 d d_mlp)`` a token and layer; counting a Llama as if it were GPT-2
    under-counts SmolLM2's matmuls by 12.5%."""
    cfg = model.cfg
    d, L = cfg.d_model, cfg.n_layers
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * d
    d_head = getattr(cfg, "d_head", None) or d // cfg.n_heads
    d_q = cfg.n_heads * d_head
    d_kv = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * d_head
    mlp = (3 if getattr(cfg, "gated_mlp", False) else 2) * d * d_mlp
    per_token_layer = 2 * (2 * d * d_q + 2 * d * d_kv + mlp)  # q, o, k, v; mlp
    unembed = 2 * d * cfg.d_vocab * (tokens if read_positions is None else read_positions)
    return L * per_token_layer * tokens + unembed


def machine() -> str:
    import os
    import platform

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:  # the CPU's model name, where Linux says it
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name")) + f" ({platform.machine()})"
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}")


def target(what: str, value: float, goal: float, unit: str) -> bool:
    """Print one of the issue's targets as a line of the table's footer: met or missed."""
    shown = (f"{value:.0%}", f"{goal:.0%}") if unit == "%" else (f"{value:.1f}{unit}",
                                                                 f"{goal:g}{unit}")
    met = value >= goal
    print(f"- target: {what} >= {shown[1]}: {'met' if met else 'MISSED'} ({shown[0]})")
    return met


def notebook_hook(mask: Any) -> Callable[[Any, Any], Any]:
    """The seed-000 notebook's ablation hook on ``blocks.{l}.attn.hook_z``: every head whose
    ``mask[layer, head]`` is False zeroed one by one in a Python loop, as the notebook does."""
    def hook(z: Any, hook: Any) -> Any:
        layer = int(hook.name.split(".")[1])
        for h in range(mask.shape[1]):
            if not mask[layer, h]:
                z[:, :, h, :] = 0.0
        return z
    return hook

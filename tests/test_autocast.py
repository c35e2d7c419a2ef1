"""Autocast (float32 weights, forwards under ``torch.autocast``) gives float32's claims where
its load-time probe finds it exact enough, and steps aside to float32 where it does not.

On the CPU ``torch.autocast("cpu", dtype=torch.bfloat16)`` runs linear layers and matmuls in
bfloat16, as a GPU would on its tensor cores. Per layout (GPT-2: ``zoo:planted``; Llama with
RoPE: ``zoo:induction-2l``) a faithfulness, a patching recovery and a head score under bf16
autocast must lie within ``TOLERANCE`` of float32's and decide the same verdict at the claim's
threshold. Why that bound: the values are ratios and attention weights of order 1, and only the
matmuls round (to bf16's 8 significant bits) while the residual stream, the norms and every
metric stay float32, so autocast sits well inside pure bfloat16's bound
(``rounding_tolerance(bfloat16)`` = 0.0625, ``tests/test_half_precision.py``). Measured here,
the largest differences are 1.1e-3 (``zoo:planted``) and 2.0e-3 (``zoo:induction-2l``) under
bf16 autocast, 2.2e-4 and 3.5e-4 under fp16; ``TOLERANCE`` = 0.01 leaves room for other
CPUs' kernels while still failing on a dtype mix, an overflow or a pass that ran in half
precision throughout.
"""
from __future__ import annotations

import pytest

from circuitcheck._autocast import (AutocastWarning, default_tolerance, parse_autocast,
                                    parse_tolerance)

TOLERANCE = 0.01
LAYOUTS = {  # model -> (circuit groups, (score kind, layer, head), thresholds)
    "zoo:planted": ({"prev": ["0.2"], "ind": ["1.1"]}, ("induction", 1, 1),
                    {"faith": 0.9, "patch": 0.8, "score": 0.75}),
    "zoo:induction-2l": ({"prev": ["0.1"], "ind": ["1.2"]}, ("induction", 1, 2),
                         {"faith": 0.9, "patch": 0.6, "score": 0.9}),
}


def _claims(model, name: str) -> dict:
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    groups, (kind, layer, head), _ = LAYOUTS[name]
    task = cc.tasks.induction(model, n=24, seq_len=10, seed=0)
    heads = [h for hs in groups.values() for h in hs]
    f = cc.faithfulness(model, task, cc.Circuit(groups), ablation="mean", metric="logit_diff")
    p = patching_recovery(model, task, heads)
    s = cc.head_scores(model, kind, n=16, seq_len=10)
    return {"faith": (f.value, *f.ci), "patch": (p.value, *p.ci),
            "score": (float(s.values[layer, head]), float(s.ci_low[layer, head]),
                      float(s.ci_high[layer, head]))}


def _verdict(lo: float, hi: float, at_least: float) -> str:
    return "held" if lo >= at_least else "failed" if hi < at_least else "inconclusive"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_autocast_claims_match_float32(name):
    import torch

    import circuitcheck as cc

    plain = cc.load_model(name, device="cpu")
    mixed = cc.load_model(name, device="cpu", autocast="bf16")
    assert mixed is not plain and mixed.cc_autocast == "bfloat16"
    assert mixed.cc_autocast_note.startswith("autocast bfloat16: probe relative logit error")
    assert mixed.cc_load_spec["autocast"] == "bfloat16"  # Ray workers reload it the same way
    assert cc.load_model(name, device="cpu", autocast="bfloat16") is mixed  # cached on it
    # really mixed: a linear layer's output is bf16 inside the pass, what comes out float32
    seen = []
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    logits, cache = mixed.run_with_cache(ids, names_filter=lambda n: n == "blocks.0.attn.hook_v")
    mixed.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_v",
                                          lambda x, hook: seen.append(x.dtype))])
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    assert cache["blocks.0.attn.hook_v"].dtype == torch.float32
    with torch.inference_mode():
        assert float((logits - plain(ids)).abs().max()) > 0  # it did round
    want, got = _claims(plain, name), _claims(mixed, name)
    for claim, at_least in LAYOUTS[name][2].items():
        diff = max(abs(a - b) for a, b in zip(got[claim], want[claim]))
        assert diff <= TOLERANCE, (claim, got[claim], want[claim])
        assert _verdict(*got[claim][1:], at_least) == _verdict(*want[claim][1:], at_least)


def test_the_probe_steps_aside_when_autocast_is_not_exact_enough():
    import torch

    import circuitcheck as cc

    plain = cc.load_model("zoo:planted", device="cpu")
    with pytest.warns(AutocastWarning, match="autocast bfloat16 not used.*tolerance 1e-09"):
        model = cc.load_model("zoo:planted", device="cpu", autocast="bfloat16",
                              autocast_tolerance=1e-9)
    assert model.cc_autocast is None and "forward" not in vars(model)
    assert "raise autocast_tolerance" in model.cc_autocast_note
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        assert torch.equal(model(ids), plain(ids))  # float32 throughout


def test_autocast_inputs_are_checked_with_the_fix():
    import circuitcheck as cc

    assert parse_autocast("BF16") == "bfloat16" and parse_autocast("fp16") == "float16"
    assert parse_autocast(None) is parse_autocast("off") is parse_autocast(False) is None
    for bad in ("int8", True, "float32", 16):
        with pytest.raises(ValueError, match="not a mixed-precision dtype.*'bfloat16'"):
            parse_autocast(bad)
    assert parse_tolerance(None) is None and parse_tolerance(0.5) == 0.5
    assert (default_tolerance("bfloat16"), default_tolerance("float16")) == (0.0625, 0.0078125)
    for bad in (0, -1.0, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="finite number > 0"):
            parse_tolerance(bad)
    with pytest.raises(ValueError, match="not a mixed-precision dtype"):
        cc.load_model("zoo:planted", device="cpu", autocast="int8")
    with pytest.raises(ValueError, match="dtype='float16' stores them in another dtype"):
        cc.load_model("zoo:planted", device="cpu", dtype="float16", autocast="bfloat16")
    with pytest.raises(ValueError, match="autocast_tolerance only applies with autocast"):
        cc.load_model("zoo:planted", device="cpu", autocast_tolerance=0.1)


def test_device_types_follow_a_device_map():
    from types import SimpleNamespace

    from circuitcheck._autocast import device_types

    def model(device, placed=None):
        m = SimpleNamespace(cfg=SimpleNamespace(device=device))
        m.__dict__["cc_device_map"] = placed
        return m

    assert device_types(model("cpu")) == ("cpu",)
    assert device_types(model("cuda:0", {"a": 0, "b": "cuda:1", "c": "disk"})) == ("cpu", "cuda")


def test_yaml_autocast_key_is_read_and_checked_before_any_model(tmp_path):
    from circuitcheck.claimfile import read_claim_file

    head = "model: zoo:planted\ntask: {builder: induction, n: 8}\n"
    claim = "claims:\n  - name: a\n    expect: {head_scores: {induction: {heads: ['1.1']}}}\n"
    good = tmp_path / "good.yaml"
    good.write_text(head + "autocast: bf16\n" + claim)
    assert read_claim_file(good).claims[0].autocast == "bfloat16"
    bad = tmp_path / "bad.yaml"
    bad.write_text(head + "autocast: int8\n" + claim)
    (error,) = [e[2] for e in read_claim_file(bad).errors]
    assert "bad.yaml:3: autocast 'int8' is not a mixed-precision dtype" in error, error


def test_plugin_autocast_options(pytester):
    """Bad values are usage errors before torch loads; a claim file's ``autocast:`` runs, and
    with an impossibly tight ``--cc-autocast-tolerance`` the summary says it stepped aside."""
    for args, message in [
            (("--cc-autocast", "int8"), "*--cc-autocast: autocast 'int8' is not a mixed*"),
            (("--cc-autocast", "bf16", "--cc-dtype", "float16"),
             "*--cc-autocast bfloat16 runs float32 weights' matmuls*--cc-dtype float16*"),
            (("--cc-autocast", "bf16", "--cc-autocast-tolerance", "-1"),
             "*autocast_tolerance must be a finite number > 0*")]:
        bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        assert bad.ret == 4, (args, bad.stderr.str())
        bad.stderr.fnmatch_lines([message])
    circuits = pytester.path / "circuits"
    circuits.mkdir()
    (circuits / "c.yaml").write_text(
        "model: zoo:planted\ntask: {builder: induction, n: 16, seq_len: 10, seed: 0}\n"
        "autocast: bfloat16\n"
        "circuit: {groups: {prev: ['0.2'], ind: ['1.1']}}\nclaims:\n  - name: mixed\n"
        "    expect: {faithfulness: {at_least: 0.8, ablation: mean, metric: logit_diff}}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-q",
                                           "--cc-autocast-tolerance", "1e-9",
                                           "--cc-report", "out")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*HELD*mixed: faithfulness*",
                                 "circuitcheck: autocast bfloat16 not used*tolerance 1e-09*"])
    import json

    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    (claim,) = doc["claims"]
    assert "not used" in claim["measurement"]["autocast"]

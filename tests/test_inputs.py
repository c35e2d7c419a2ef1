"""Every bad input gets a clear error naming the problem and the fix."""
from __future__ import annotations

import subprocess
import sys

import pytest

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.errors import CircuitError, ModelNotFoundError, ModelUnavailableError, TaskError

from .conftest import own_task


def test_import_leaves_torch_out():
    code = "import sys, circuitcheck, circuitcheck.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_model_returns_the_bridge_once(model_dirs):
    from transformer_lens.model_bridge import TransformerBridge

    a = cc.load_model(model_dirs["gpt2"], device="cpu")
    b = cc.load_model(str(model_dirs["gpt2"]), device="cpu")
    assert isinstance(a, TransformerBridge) and a is b
    assert "blocks.1.attn.hook_z" in a.hook_dict


def test_missing_local_dir(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        cc.load_model(str(tmp_path / "nope") + "/")


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        cc.load_model(tmp_path)


def test_hub_model_offline_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as info:
        cc.load_model("someone/not-a-cached-model")
    msg = str(info.value)
    assert "someone/not-a-cached-model" in msg and "HF_HOME" in msg and "HF_HUB_OFFLINE" in msg


def test_unknown_zoo_model():
    with pytest.raises(ModelNotFoundError, match="zoo"):
        cc.load_model("zoo:no-such-model")


def test_bad_dtype_and_device(model_dirs):
    with pytest.raises(ValueError, match="unknown dtype 'float13'"):
        cc.load_model(model_dirs["gpt2"], dtype="float13")
    from circuitcheck.models import resolve_device, resolve_dtype

    with pytest.raises(ValueError, match="float32"):
        resolve_dtype("float13")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ModelNotFoundError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[], answers=[]), "no prompts"),
    (dict(prompts=["t1"], answers=["t2", "t3"]), "answers has 2 entries but there are 1 prompts"),
    (dict(prompts=["t1"], answers=["t2"], corrupted=["t1", "t2"]), "corrupted has 2"),
    (dict(prompts="t1 t2", answers=["t2"]), "must be a list"),
    (dict(prompts=["t1"], answers=["t2"], positions={"end": [0]}), "built in"),
    (dict(prompts=["t1"], answers=["t2"], positions={"S": [0.5]}), "token indices"),
])
def test_task_construction_errors(kwargs, match):
    with pytest.raises(TaskError, match=match):
        cc.Task(**kwargs)


def test_task_errors_found_at_encoding(tiny):
    with pytest.raises(TaskError, match=r"answers\[1\] = 't1 t2' is 2 tokens"):
        cc.Task(prompts=["t1", "t2"], answers=["t3", "t1 t2"]).encode(tiny)
    with pytest.raises(TaskError, match="outside the model's vocabulary"):
        cc.Task(prompts=[[1, 2, 99999]], answers=[3]).encode(tiny)
    with pytest.raises(TaskError, match="position 'S' of prompt 0 is 7, outside its 3 tokens"):
        cc.Task(prompts=["t1 t2"], answers=["t3"], positions={"S": [7]}).encode(tiny)
    with pytest.raises(TaskError, match="longer than the model's context"):
        cc.Task(prompts=[[5] * 100], answers=[3]).encode(tiny)


def test_resample_needs_corrupted_prompts_of_equal_length(tiny):
    task = cc.Task(prompts=["t1 t2", "t3 t4"], answers=["t3", "t5"], wrong_answers=["t1", "t1"],
                   corrupted=["t1", "t3 t9"])
    with pytest.raises(TaskError, match="corrupted prompt 0 has 2 tokens and its clean prompt 3"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.1"]}), ablation="resample")
    no_corrupt = cc.Task(prompts=["t1 t2"], answers=["t3"], wrong_answers=["t1"])
    with pytest.raises(TaskError, match="needs corrupted prompts"):
        cc.faithfulness(tiny, no_corrupt, cc.Circuit({"a": ["0.1"]}), ablation="resample")


def test_mean_reference_too_short(tiny):
    task = cc.Task(prompts=["t1 t2 t3 t4"], answers=["t3"], wrong_answers=["t1"], corrupted=["t1"])
    with pytest.raises(TaskError, match="reference prompts stop sooner"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.1"]}), ablation="mean")


def test_logit_diff_needs_wrong_answers(tiny):
    task = cc.Task(prompts=["t1 t2"], answers=["t3"])
    with pytest.raises(cc.CircuitCheckError, match="needs wrong answers"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.1"]}), ablation="zero")
    with pytest.raises(cc.CircuitCheckError, match="did you mean 'logit_diff'"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.1"]}), metric="logitdiff")
    with pytest.raises(cc.CircuitCheckError, match="unknown ablation 'meen'"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.1"]}), ablation="meen", metric="prob")


def test_circuit_errors(tiny):
    task = own_task(tiny, n=4)
    with pytest.raises(CircuitError, match=r"head 2\.0 in group 'x' is out of range: the model has 2 layers"):
        cc.faithfulness(tiny, task, cc.Circuit({"x": [(2, 0)]}))
    with pytest.raises(CircuitError, match=r"heads per layer \(0\.\.3\)"):
        cc.Circuit({"x": ["L1H4"]}).validate(tiny)
    with pytest.raises(CircuitError, match="position 'ned'.*did you mean 'end'"):
        cc.faithfulness(tiny, task, cc.Circuit({"x": ["0.1"]}, positions={"x": "ned"}))
    with pytest.raises(CircuitError, match="cannot read 'nine' as a head"):
        cc.Circuit({"x": ["nine"]})
    with pytest.raises(CircuitError, match="names group 'y'"):
        cc.Circuit({"x": ["0.1"]}, positions={"y": "end"})
    with pytest.raises(CircuitError, match="did you mean 'groups'"):
        cc.Circuit.from_dict({"grups": {"x": ["0.1"]}})
    with pytest.raises(CircuitError, match="MLP layer 5 is out of range"):
        cc.Circuit({"x": ["0.1"]}, mlps=[5]).validate(tiny)


def test_measurement_refuses_truth_testing(tiny):
    task = own_task(tiny, n=4)
    m = cc.faithfulness(tiny, task, cc.Circuit({"x": ["0.1"]}), ablation="zero")
    with pytest.raises(TypeError, match="no truth value; compare m.value"):
        assert m


def test_threshold_must_be_a_number(tiny):
    task = own_task(tiny, n=4)
    with pytest.raises(TypeError, match="at_least must be a number"):
        cc.assert_faithful(tiny, task, cc.Circuit({"x": ["0.1"]}), at_least="0.9")


def test_model_that_does_not_do_the_task_is_unmeasurable(tiny):
    """answer == wrong answer: logit difference is exactly 0, so no ratio is taken."""
    task = cc.Task(prompts=["t1 t2", "t3 t4 t5"], answers=["t3", "t4"], wrong_answers=["t3", "t4"])
    m = cc.faithfulness(tiny, task, cc.Circuit({"x": ["0.1"]}), ablation="zero")
    assert m.problem and "does not do the task" in m.problem
    with _claims.private(), pytest.raises(
            AssertionError, match="NOT MEASURABLE: the full model does not do the task"):
        cc.assert_faithful(tiny, task, cc.Circuit({"x": ["0.1"]}), at_least=0.5, ablation="zero")


def test_unknown_words_are_rejected(tiny):
    with pytest.raises(TaskError, match=r"prompts\[0\] = 't1 banana' has words the model's tokenizer does not know"):
        cc.Task(prompts=["t1 banana"], answers=["t2"]).encode(tiny)
    with pytest.raises(TaskError, match=r"answers\[0\] = 'banana' has words"):
        cc.Task(prompts=["t1"], answers=["banana"]).encode(tiny)


def test_loaded_model_matches_the_hugging_face_forward(model_dirs, arch):
    """Compatibility mode must not change the function: bridge log-probs == plain HF's."""
    import torch
    from transformers import AutoModelForCausalLM

    bridge = cc.load_model(model_dirs[arch], device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(model_dirs[arch], attn_implementation="eager")
    toks = torch.tensor([[1, 5, 9, 12, 7, 30, 41]])
    with torch.inference_mode():
        diff = (bridge(toks).log_softmax(-1) - hf(toks).logits.log_softmax(-1)).abs().max()
    assert float(diff) < 1e-4
    assert bridge.cc_processing in ("folded", "unprocessed")

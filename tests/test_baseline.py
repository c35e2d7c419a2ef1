"""Regression across runs: a changed model fails the baseline comparison, naming the drift."""
from __future__ import annotations

import json
import shutil


from .conftest import own_task

CLAIM = '''
import json, pytest, circuitcheck as cc
DATA = json.load(open({data!r}))
TASK = cc.Task(prompts=DATA["prompts"], answers=DATA["answers"], wrong_answers=DATA["wrong"])

@pytest.mark.circuitcheck_model({model!r})
def test_layer0_circuit(cc_model):
    cc.assert_faithful(cc_model, TASK, cc.Circuit({{"l0": ["0.0", "0.1", "0.2", "0.3"]}}),
                       at_least=-100, ablation="zero", name="layer0-keeps-it")
'''


def test_scaled_head_drifts_from_baseline(pytester, model_dirs, tiny, arch):
    from safetensors.torch import load_file, save_file

    model_dir = pytester.path / "model"
    shutil.copytree(model_dirs[arch], model_dir)
    task = own_task(tiny, n=12, corrupt=False)
    data = pytester.path / "data.json"
    data.write_text(json.dumps({"prompts": task.prompts, "answers": task.answers,
                                "wrong": task.wrong_answers}))
    pytester.makepyfile(test_drift=CLAIM.format(data=str(data), model=str(model_dir)))
    base = pytester.path / "baseline.json"
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--cc-save-baseline={base}")
    first.assert_outcomes(passed=1)
    old_value = json.loads(base.read_text())["claims"][0]["measurement"]["value"]
    same = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--cc-baseline={base}")
    same.assert_outcomes(passed=1)

    # scale the output weights of one layer-1 head (1.0) by 5: the full model changes, the
    # layer-0 circuit does not, so faithfulness moves
    weights = load_file(model_dir / "model.safetensors")
    key = next(k for k in weights if k.endswith(("h.1.attn.c_proj.weight",
                                                 "layers.1.self_attn.o_proj.weight")))
    w = weights[key].clone()
    d_head = 8
    if "c_proj" in key:  # Conv1D: [in, out], rows are head dims
        w[:d_head] *= 5
    else:  # Linear: [out, in]
        w[:, :d_head] *= 5
    weights[key] = w
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--cc-baseline={base}",
                                           "--cc-tolerance=0.02",
                                           f"--cc-report={pytester.path / 'r'}")
    new = json.loads((pytester.path / "r" / "results.json").read_text())["claims"][0]
    second.assert_outcomes(failed=1)
    new_value = new["measurement"]["value"]
    assert new["baseline"]["tolerance"] == 0.02 and new["baseline"]["drift"]
    assert abs(new_value - old_value) > 0.02
    second.stdout.fnmatch_lines([
        f"*claim 'layer0-keeps-it' DRIFTED: faithfulness {old_value:.2f} -> {new_value:.2f}*"
        f"tolerance 0.02*against baseline*baseline.json*"])

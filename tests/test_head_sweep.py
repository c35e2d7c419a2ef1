"""Seed 001 as written: layer-mean ablation and the per-head sweep, against plain loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck import _claims

from .conftest import own_task


def _plain_prob(model, enc, i, hooks):
    n = int(enc.lengths[i])
    with torch.inference_mode():
        logits = model.run_with_hooks(enc.tokens[i:i + 1, :n], fwd_hooks=hooks)[0, -1]
    return float(logits.float().softmax(-1)[enc.answers[i]])


def test_layer_mean_sweep_matches_a_plain_loop(tiny):
    """Each head's z replaced by its layer's mean z (same prompt, same position, same forward),
    one forward per head and prompt with a hook written here: the batched sweep agrees."""
    task = own_task(tiny, n=6)
    enc = task.encode(tiny)
    sw = cc.head_sweep(tiny, task, ablation="layer-mean", metric="prob")
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    full = np.array([_plain_prob(tiny, enc, i, []) for i in range(enc.n)])
    assert sw.full == pytest.approx(full.mean(), abs=1e-5)
    for layer in range(L):
        for h in range(H):
            def mean_z(z, hook, h=h):
                z = z.clone()
                z[:, :, h] = z.mean(2)
                return z

            plain = np.array([_plain_prob(tiny, enc, i, [(f"blocks.{layer}.attn.hook_z", mean_z)])
                              for i in range(enc.n)])
            np.testing.assert_allclose(sw.per_prompt[:, layer, h], plain - full, atol=1e-5)
    np.testing.assert_allclose(sw.relative, sw.change / abs(sw.full))
    assert np.all(sw.ci_low <= sw.change) and np.all(sw.change <= sw.ci_high)
    # simultaneous t intervals: wider than one head's own normal interval
    from circuitcheck.stats import t_quantile

    d = sw.per_prompt[:, 0, 0]
    one = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert t_quantile(0.975, 4) == pytest.approx(2.776, rel=0.01)  # the t table
    assert t_quantile(0.975, 30) == pytest.approx(2.042, rel=0.002)
    assert sw.ci_high[0, 0] - sw.change[0, 0] >= one - 1e-12
    with pytest.raises(cc.CircuitCheckError, match="an MLP has no such mean"):
        cc.faithfulness(tiny, task, cc.Circuit({"a": ["0.0"]}, mlps=[0]), ablation="layer-mean")


@pytest.fixture(scope="module")
def planted():
    model = cc.load_model("zoo:planted", device="cpu")
    return model, cc.tasks.induction(model, n=32, seq_len=12, seed=0)


def test_head_sweep_claims_decide_on_every_head(planted):
    model, task = planted
    with _claims.private() as records:
        cc.assert_head_sweep(model, task, ["0.2", "1.1"], drop_at_least=0.5, ablation="mean")
    assert records[-1]["verdict"] == "held"
    # 1.1 alone: another head (0.2) drops it as much, so "no other head does" fails
    with _claims.private(), pytest.raises(AssertionError, match=r"FAILED: .*strongest other head "
                                                                r"0\.2 drops 0\.9"):
        cc.assert_head_sweep(model, task, ["1.1"], drop_at_least=0.5, ablation="mean")
    # without the "others" part it holds; a relative bound reads the share of the full model
    with _claims.private() as records:
        cc.assert_head_sweep(model, task, ["1.1"], drop_at_least=0.9, relative=True, others=False,
                             ablation="mean")
    assert records[-1]["measurement"]["value"] >= 0.9
    # under layer-mean the previous-token head 0.2 keeps a share of itself: it does not drop p
    with _claims.private(), pytest.raises(AssertionError, match="weakest claimed head 0.2"):
        cc.assert_head_sweep(model, task, ["0.2", "1.1"], drop_at_least=0.5)
    # a bound inside the interval of what was measured: not decided either way
    few = cc.tasks.induction(model, n=4, seq_len=12, seed=0)
    drop = cc.head_sweep(model, few, ablation="mean").drop("1.1")
    with _claims.private(), pytest.raises(AssertionError, match="INCONCLUSIVE"):
        cc.assert_head_sweep(model, few, ["1.1"], drop_at_least=drop, ablation="mean",
                             others=False)

"""Reading only the answer's and wrong answer's logits gives the same numbers as the full
unembedding, and is used only where the model's logits are its unembedding and nothing more."""
from __future__ import annotations

import numpy as np
import torch

import circuitcheck as cc
from circuitcheck.interventions import Variants, ablation_values, run_variants
from circuitcheck.interventions.ablation import answer_logits_exact
from circuitcheck.measures import patching as P

from .conftest import own_task


def test_same_logits_as_the_full_readout(tiny):
    task = own_task(tiny)
    enc = task.encode(tiny)
    assert answer_logits_exact(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    masks = torch.rand(7, L, H, generator=torch.Generator().manual_seed(1)) < 0.5
    values = ablation_values(tiny, enc, "mean")
    full = run_variants(tiny, enc, Variants(masks), values)
    only = run_variants(tiny, enc, Variants(masks), values, reads=("logit", "wrong_logit"))
    assert only.logprob is None and only.correct is None  # not computed, not made up
    torch.testing.assert_close(only.logit, full.logit, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(only.wrong_logit, full.wrong_logit, rtol=1e-4, atol=1e-4)
    top1 = run_variants(tiny, enc, Variants(masks), values, reads=("correct",))
    assert top1.logprob is None and torch.equal(top1.correct, full.correct)
    # log-prob and top-1 streamed over vocabulary slices (running max / log-sum-exp)
    import circuitcheck.interventions.ablation as A

    chunk, A.VOCAB_CHUNK = A.VOCAB_CHUNK, 7  # many slices, a ragged last one
    try:
        lp = run_variants(tiny, enc, Variants(masks), values, reads=("logprob", "correct"))
    finally:
        A.VOCAB_CHUNK = chunk
    torch.testing.assert_close(lp.logprob, full.logprob, rtol=1e-5, atol=1e-5)
    assert torch.equal(lp.correct, full.correct) and lp.kl is None


def test_measurements_agree_with_a_metric_reading_full_logits(tiny):
    task = own_task(tiny)
    full_ld = cc.measures.metrics.Metric("logit_diff_full", "full-vocab logit difference",
                                         lambda r: (r.logit - r.wrong_logit).numpy(), True)
    assert full_ld.reads == ()  # a metric that does not say what it reads gets everything
    grid = P.patch_heads(tiny, task)
    ref = P.patch_heads(tiny, task, metric=full_ld)
    np.testing.assert_allclose(grid.values, ref.values, rtol=1e-4, atol=1e-4)
    circuit = cc.Circuit({"all": [(0, 0), (1, 1)]})
    a = cc.faithfulness(tiny, task, circuit, ablation="mean")
    b = cc.faithfulness(tiny, task, circuit, ablation="mean", metric=full_ld)
    assert abs(a.value - b.value) < 1e-4


def test_logits_changed_after_the_unembedding_take_the_full_path(model_dirs):
    model = cc.load_model(model_dirs["gpt2"], device="cpu")
    model.__dict__.pop("cc_answer_logits", None)
    model.hook_dict["unembed.hook_out"].add_perma_hook(lambda x, hook: x * 2.0)
    try:
        assert not answer_logits_exact(model)  # e.g. soft-capped or scaled logits
        task = own_task(model)
        enc = task.encode(model)
        keep_all = Variants(torch.ones(1, 2, 4, dtype=torch.bool))
        r = run_variants(model, enc, keep_all, None, reads=("logit", "wrong_logit"))
        full = run_variants(model, enc, keep_all, None)
        torch.testing.assert_close(r.logit, full.logit)  # the doubled logits, from the full path
    finally:
        model.reset_hooks(including_permanent=True)
        model.__dict__.pop("cc_answer_logits", None)
    assert answer_logits_exact(model)

"""``induction-2l``: a 2-layer x 4-head attention-only GPT-2 trained to copy repeated tokens.

Training data: packed repeat units ``f1 seg f2 seg`` with random segment and gap
lengths (:func:`~circuitcheck.zoo.data.induction_training_batch`, loss on the
second copies), random per-batch position-id offsets, and a minority of
skip-bigram chains (:func:`~circuitcheck.zoo.data.skip_bigram_batch`).

Pitfalls measured while building it (2 CPU cores, 3000 steps):

* fixed-length repeats -> layer-0 heads attend a fixed distance back (no induction);
* variable lengths/gaps alone -> a "relay" solution: layer-0 heads attend a
  position-dependent point (~p/2) or a smeared window 2-7 tokens back, and layer-1
  heads attend 2-4 tokens after the earlier occurrence; copying is ~100% but
  previous-token and induction scores are ~0;
* adding random position offsets removes the absolute-position relay but not the window;
* adding skip-bigram chains (``x[i+1] = perm[x[i-1]]``, the analogue of bigram
  statistics in natural text) yields a sharp previous-token head (score ~1.0), but
  layer-1 heads still attend 2 tokens after the earlier occurrence (a "+2 relay":
  K from a layer-0 look-back-2/3 head, V from the previous-token head), so the
  standard induction score stays ~0.03 and the card's checks FAIL;
* also tried without success: sinusoid-initialised or frozen-sinusoid wpe, tied
  embeddings, higher lr / longer runs, and a two-stage curriculum (skip-bigram
  first, then layer 0 frozen) in which layer 1 did not learn within 3000 steps.

The build therefore records whatever heads it finds and whether the checks
pass; the current recipe does NOT yet give a standard induction circuit.

MLPs exist (GPT-2 architecture) but are zeroed and frozen; ln_f is frozen at identity.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

TRAIN: dict[str, Any] = {
    "d_model": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_ctx": 64,
    "steps": 3000,
    "batch": 64,
    "lr": 2e-3,
    "weight_decay": 0.01,
    "warmup": 100,
    "min_seg_len": 3,
    "max_seg_len": 25,
    "max_gap": 6,
    "pos_init": "gpt2",  # "gpt2" = N(0, 0.02); "sinusoid" = Vaswani table x pos_init_scale
    "pos_init_scale": 0.1,
    "freeze_wpe": False,
    "max_pos_offset": 24,  # per-batch random shift of position ids (kills absolute-position shortcuts)
    "skip_bigram_frac": 0.25,  # share of each batch that is skip-bigram chains (rewards an exact i-1 head)
    "tied_embeddings": False,
}


def make_model(seed: int) -> Any:
    """Fresh GPT-2 with zeroed, frozen MLPs (n_inner=4) and ln_f frozen at identity."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from .data import N_WORDS, build_vocab

    vocab = build_vocab(N_WORDS)
    cfg = GPT2Config(
        vocab_size=len(vocab), n_positions=TRAIN["n_ctx"], n_embd=TRAIN["d_model"],
        n_layer=TRAIN["n_layer"], n_head=TRAIN["n_head"], n_inner=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=TRAIN["tied_embeddings"],
        bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for block in model.transformer.h:
            for p in block.mlp.parameters():
                p.zero_()
        if TRAIN["pos_init"] == "sinusoid":
            model.transformer.wpe.weight.copy_(TRAIN["pos_init_scale"] * sinusoid_table(TRAIN["n_ctx"], TRAIN["d_model"]))
    return model


def sinusoid_table(n_ctx: int, d_model: int) -> Any:
    """Vaswani et al. sinusoidal position table (n_ctx x d_model), optionally used to initialise wpe."""
    import torch

    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


def _trainable(model: Any) -> list[Any]:
    """Everything except the zeroed MLPs, ln_f and (if ``freeze_wpe``) wpe.

    ln_f stays the identity because TransformerBridge's ``fold_ln`` (compatibility
    mode, transformer-lens 4.3) mis-folds a non-trivial ln_f.
    """
    t = model.transformer
    groups = [t.wte, model.lm_head] + [m for b in t.h for m in (b.ln_1, b.attn)]
    if not TRAIN["freeze_wpe"]:
        groups.append(t.wpe)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for g in groups for p in g.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _lr(step: int) -> float:
    """Linear warmup then cosine decay to 10%."""
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    frac = (step - TRAIN["warmup"]) / max(1, TRAIN["steps"] - TRAIN["warmup"])
    return TRAIN["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _batch(words: list[int], perm: dict[int, int], rng: random.Random, bos: int) -> tuple[Any, Any, Any]:
    """Token ids, loss mask and position ids of one training batch."""
    import torch

    from .data import induction_training_batch, skip_bigram_batch

    offset = rng.randint(0, TRAIN["max_pos_offset"])
    n_ctx, n_skip = TRAIN["n_ctx"] - offset, round(TRAIN["skip_bigram_frac"] * TRAIN["batch"])
    seqs, masks = induction_training_batch(
        words, TRAIN["batch"] - n_skip, n_ctx, rng, bos, TRAIN["min_seg_len"], TRAIN["max_seg_len"], TRAIN["max_gap"]
    )
    if n_skip:
        s2, m2 = skip_bigram_batch(perm, n_skip, n_ctx, rng, bos)
        seqs, masks = seqs + s2, masks + m2
    x = torch.tensor(seqs)
    return x, torch.tensor(masks, dtype=torch.float32), torch.arange(offset, offset + n_ctx).expand_as(x)


def train(seed: int, log_every: int = 250) -> Any:
    """Train the model (deterministic on CPU given ``seed``); returns it in eval mode."""
    import torch

    from .data import BOS, N_WORDS, build_vocab, word_token_ids

    vocab = build_vocab(N_WORDS)
    words = word_token_ids(vocab)
    model = make_model(seed)
    rng = random.Random(seed)
    shuffled = rng.sample(words, len(words))
    perm = {a: b for a, b in zip(shuffled, shuffled[1:] + shuffled[:1])}  # one cycle: no fixed points
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"], betas=(0.9, 0.98))
    model.train()
    t0, running = time.time(), None
    for step in range(TRAIN["steps"]):
        x, m, pos_ids = _batch(words, perm, rng, vocab[BOS])
        logits = model(x, position_ids=pos_ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        loss = (nll * m[:, :-1].reshape(-1)).sum() / m.sum()
        for g in opt.param_groups:
            g["lr"] = _lr(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % log_every == 0 or step == 0:
            print(f"  step {step + 1:5d}/{TRAIN['steps']}  loss {running:.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()

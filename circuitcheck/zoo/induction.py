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
* the skip-bigram chains (``x[i+1] = perm[x[i-1]]``) reward an exact i-1 head, the
  analogue of bigram statistics in natural text, and the standard circuit forms.

MLPs exist (GPT-2 architecture) but are zeroed and frozen; ln_f is frozen at identity.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

TRAIN = {
    "d_model": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_ctx": 64,
    "steps": 3000,
    "batch": 64,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup": 100,
    "min_seg_len": 3,
    "max_seg_len": 25,
    "max_gap": 6,
    "pos_init": "sinusoid",  # or "gpt2" (N(0, 0.02))
    "pos_init_scale": 0.1,
    "max_pos_offset": 24,  # per-batch random shift of position ids (kills absolute-position shortcuts)
    "skip_bigram_frac": 0.25,  # share of each batch that is skip-bigram chains (rewards an exact i-1 head)
    "tied_embeddings": False,
    "stage1_steps": 1000,  # curriculum stage 1: skip-bigram chains only, layer 1 silenced
    "stage2_train_wte": True,  # stage 2: layer 0 attention + wpe frozen
    "freeze_wpe": False,
    "stage1_silence_layer1": False,  # zero layer-1 c_proj in stage 1 (else: frozen at random init)  # keep wpe at its init (e.g. the sinusoid table) in single-stage training
}


def make_model(seed: int) -> Any:
    """Fresh GPT-2 with zeroed, frozen MLPs (n_inner=4) and untied embeddings."""
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
                p.requires_grad_(False)
        # ln_f stays the identity (weight 1, bias 0): TransformerBridge's fold_ln
        # (compatibility mode) mishandles a non-trivial ln_f in transformer-lens 4.3.
        for p in model.transformer.ln_f.parameters():
            p.requires_grad_(False)
        if TRAIN["pos_init"] == "sinusoid":
            model.transformer.wpe.weight.copy_(TRAIN["pos_init_scale"] * sinusoid_table(TRAIN["n_ctx"], TRAIN["d_model"]))
    return model


def sinusoid_table(n_ctx: int, d_model: int) -> Any:
    """Vaswani et al. sinusoidal position table (n_ctx x d_model), used only to initialise wpe."""
    import torch

    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


def _lr(step: int, total: int) -> float:
    """Linear warmup then cosine decay to 10% over ``total`` steps."""
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    frac = (step - TRAIN["warmup"]) / max(1, total - TRAIN["warmup"])
    return TRAIN["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _set_trainable(model: Any, stage: int) -> list[Any]:
    """Stage 1: embeddings, wpe, layer 0 and lm_head train, layer 1 is silenced (c_proj = 0, frozen).
    Stage 2: layer 1, lm_head (and wte) train; wpe and layer 0 are frozen, so layer 1 must
    compose with the previous-token head that stage 1 produced."""
    import torch

    t, l0, l1 = model.transformer, model.transformer.h[0], model.transformer.h[1]
    for p in model.parameters():
        p.requires_grad_(False)
    if stage == 0:  # single-stage training: everything but MLPs, ln_f (and wpe if frozen)
        groups = [t.wte, l0.ln_1, l0.attn, l1.ln_1, l1.attn, model.lm_head] + ([] if TRAIN["freeze_wpe"] else [t.wpe])
    elif stage == 1:
        if TRAIN["stage1_silence_layer1"]:
            with torch.no_grad():
                l1.attn.c_proj.weight.zero_()
                l1.attn.c_proj.bias.zero_()
        groups = [t.wte, t.wpe, l0.ln_1, l0.attn, model.lm_head]
    else:
        groups = [l1.ln_1, l1.attn, model.lm_head] + ([t.wte] if TRAIN["stage2_train_wte"] else [])
    params = [p for g in groups for p in g.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def train(seed: int, log_every: int = 250) -> Any:
    """Train the model (deterministic on CPU given ``seed``); returns it in eval mode."""
    import torch

    from .data import BOS, N_WORDS, build_vocab, induction_training_batch, skip_bigram_batch, word_token_ids

    vocab = build_vocab(N_WORDS)
    words = word_token_ids(vocab)
    model = make_model(seed)
    rng = random.Random(seed)
    shuffled = rng.sample(words, len(words))
    perm = {a: b for a, b in zip(shuffled, shuffled[1:] + shuffled[:1])}  # one cycle: no fixed points
    model.train()
    t0, running, opt, params = time.time(), None, None, []
    for step in range(TRAIN["steps"]):
        stage = 0 if TRAIN["stage1_steps"] == 0 else 1 if step < TRAIN["stage1_steps"] else 2
        if step in (0, TRAIN["stage1_steps"]):
            params = _set_trainable(model, stage)
            opt = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"], betas=(0.9, 0.98))
            running = None
        n_skip = TRAIN["batch"] if stage == 1 else round(TRAIN["skip_bigram_frac"] * TRAIN["batch"])
        offset = rng.randint(0, TRAIN["max_pos_offset"])
        seqs, masks = induction_training_batch(
            words, TRAIN["batch"] - n_skip, TRAIN["n_ctx"] - offset, rng, vocab[BOS],
            TRAIN["min_seg_len"], TRAIN["max_seg_len"], TRAIN["max_gap"],
        )
        if n_skip:
            s2, m2 = skip_bigram_batch(perm, n_skip, TRAIN["n_ctx"] - offset, rng, vocab[BOS])
            seqs, masks = seqs + s2, masks + m2
        x, m = torch.tensor(seqs), torch.tensor(masks, dtype=torch.float32)
        pos_ids = torch.arange(offset, offset + x.shape[1]).expand_as(x)
        logits = model(x, position_ids=pos_ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        loss = (nll * m[:, :-1].reshape(-1)).sum() / m.sum()
        for g in opt.param_groups:
            g["lr"] = _lr(*((step, TRAIN["stage1_steps"] or TRAIN["steps"]) if stage < 2 else
                            (step - TRAIN["stage1_steps"], TRAIN["steps"] - TRAIN["stage1_steps"])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % log_every == 0 or step == 0:
            print(f"  stage {stage} step {step + 1:5d}/{TRAIN['steps']}  loss {running:.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()

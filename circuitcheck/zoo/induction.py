"""``induction-2l``: a 2-layer x 4-head attention-only Llama trained to copy repeated tokens.

Architecture: ``LlamaForCausalLM`` (RoPE relative positions, RMSNorm), d_model 64,
4 heads of d_head 16 per layer. The MLPs exist (``intermediate_size=4``) but
``down_proj`` is zeroed and every MLP weight is frozen, so the model is
attention-only; all RMSNorm weights are frozen at 1.

Training data: packed repeat units ``f1 seg f2 seg`` with random segment and gap
lengths (:func:`~circuitcheck.zoo.data.induction_training_batch`, loss on the
second copies).

Why Llama: with GPT-2's learned absolute positions a previous engineer found
(3000 steps, many data variants) only position-based "relay" solutions, never a
standard previous-token -> induction circuit. With RoPE a previous-token head is
a relative pattern and absolute-position shortcuts are unavailable: the standard
circuit forms within ~300 steps.

Head sparsity: trained plainly, the model is redundant (two previous-token heads
and four induction heads), so no single pair of heads is necessary. A concave
group penalty ``head_penalty * sum_h (||W_O^h||_F + 1e-4) ** head_penalty_power``
(power 0.5) on every head's output matrix concentrates each role on one head and
shrinks the others' outputs towards zero.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

TRAIN: dict[str, Any] = {
    "d_model": 64,
    "n_head": 4,
    "d_head": 16,
    "n_layer": 2,
    "n_ctx": 64,
    "rope_theta": 10000.0,
    "steps": 1500,
    "batch": 64,
    "lr": 2e-3,
    "weight_decay": 0.01,
    "warmup": 100,
    "min_seg_len": 3,
    "max_seg_len": 25,
    "max_gap": 6,
    "head_penalty": 0.01,
    "head_penalty_power": 0.5,
    "threads": 1,
}


def make_model(seed: int) -> Any:
    """Fresh 2-layer Llama with zeroed, frozen MLPs (intermediate_size=4)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .data import N_WORDS, build_vocab

    vocab = build_vocab(N_WORDS)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=TRAIN["d_model"], intermediate_size=4,
        num_hidden_layers=TRAIN["n_layer"], num_attention_heads=TRAIN["n_head"], num_key_value_heads=TRAIN["n_head"],
        head_dim=TRAIN["d_head"], max_position_embeddings=TRAIN["n_ctx"], rope_theta=TRAIN["rope_theta"],
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rms_norm_eps=1e-6,
        bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
    return model


def _trainable(model: Any) -> list[Any]:
    """Embeddings, attention and unembedding; MLPs and RMSNorm weights (all 1) frozen.

    Norm weights stay 1 so TransformerBridge's ``fold_ln`` has nothing to fold.
    """
    params = []
    for name, p in model.named_parameters():
        train = "mlp" not in name and "norm" not in name
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def head_output_norms(model: Any) -> list[list[float]]:
    """Frobenius norm of each head's slice of ``o_proj`` (n_layers x n_heads)."""
    d, h, dh = TRAIN["d_model"], TRAIN["n_head"], TRAIN["d_head"]
    return [
        [round(float(v), 4) for v in layer.self_attn.o_proj.weight.detach().view(d, h, dh).norm(dim=(0, 2))]
        for layer in model.model.layers
    ]


def _head_penalty(model: Any) -> Any:
    d, h, dh = TRAIN["d_model"], TRAIN["n_head"], TRAIN["d_head"]
    return sum(
        layer.self_attn.o_proj.weight.view(d, h, dh).norm(dim=(0, 2)).add(1e-4).pow(TRAIN["head_penalty_power"]).sum()
        for layer in model.model.layers
    )


def _lr(step: int) -> float:
    """Linear warmup then cosine decay to 10%."""
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    frac = (step - TRAIN["warmup"]) / max(1, TRAIN["steps"] - TRAIN["warmup"])
    return TRAIN["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(seed: int, log_every: int = 250) -> Any:
    """Train the model (deterministic on CPU given ``seed``); returns it in eval mode."""
    import torch

    from .data import BOS, N_WORDS, build_vocab, induction_training_batch, word_token_ids

    torch.set_num_threads(TRAIN["threads"])
    vocab = build_vocab(N_WORDS)
    words = word_token_ids(vocab)
    model = make_model(seed)
    rng = random.Random(seed)
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"], betas=(0.9, 0.98))
    model.train()
    t0, running = time.time(), None
    for step in range(TRAIN["steps"]):
        seqs, masks = induction_training_batch(
            words, TRAIN["batch"], TRAIN["n_ctx"], rng, vocab[BOS],
            TRAIN["min_seg_len"], TRAIN["max_seg_len"], TRAIN["max_gap"],
        )
        x, m = torch.tensor(seqs), torch.tensor(masks, dtype=torch.float32)
        logits = model(x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        mask = m[:, :-1].reshape(-1)
        task = (nll * mask).sum() / mask.sum()
        loss = task + TRAIN["head_penalty"] * _head_penalty(model)
        for g in opt.param_groups:
            g["lr"] = _lr(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = task.item() if running is None else 0.95 * running + 0.05 * task.item()
        if (step + 1) % log_every == 0 or step == 0:
            print(f"  step {step + 1:5d}/{TRAIN['steps']}  task loss {running:.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()

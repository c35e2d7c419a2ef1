"""``planted``: a 2-layer x 4-head GPT-2 whose induction circuit is set by hand.

No training. The residual stream (d_model=128) is split into disjoint logical
subspaces, embedded through a fixed random orthonormal basis orthogonal to the
all-ones vector, so LayerNorm's mean subtraction is a no-op and LN only
rescales (all residual norms are kept close to each other):

====== ==== ==========================================================
name   dims content
====== ==== ==========================================================
TOK    32   token code (64 codes with max overlap 1/sqrt(32): I and H/sqrt(32))
PREV   32   code of the previous token (written by the previous-token head)
OUT    32   code of the predicted token (written by the induction head, read by lm_head)
POS    16   8 sinusoid pairs, frequencies chosen so the i / i-1 match is sharp
CONST  1    1 for every token
BOSF   1    1 for <bos>
JUNK   13   written only by distractor heads, read by nobody
====== ==== ==========================================================

Circuit: L0H2 rotates the query position back by one step
(previous-token head, OV: TOK -> PREV); L1H1 matches the query TOK
against key PREV (induction head, OV: TOK -> OUT). Distractors (same weight
Frobenius norms, outputs only in JUNK): a BOS-sink head, a uniform head, a
random head, and a duplicate-token head. MLPs are zeroed.
"""

from __future__ import annotations

from typing import Any

import math

PREV_HEAD = (0, 2)
IND_HEAD = (1, 1)
D_MODEL, N_HEAD, D_HEAD, N_LAYER, N_CTX = 128, 4, 32, 2, 64

_sl = {"TOK": (0, 32), "PREV": (32, 64), "OUT": (64, 96), "POS": (96, 112), "CONST": (112, 113), "BOSF": (113, 114), "JUNK": (114, 127)}
N_LOGICAL = 127
# 8 position frequencies (rad/position): max cos-similarity between p_i and p_j, j != i, over 64 positions is ~0.32.
POS_FREQS = (0.5319, 0.6234, 1.5507, 1.6168, 1.8698, 1.9445, 2.6486, 2.9513)
# Gains (pre-LN units; LN multiplies residual vectors by ~sqrt(128)/|x| ~ 4-6.5).
QK_GAIN = {"prev": 2.6, "ind": 3.2, "bos": 1.8, "uniform": 1.8, "dup": 3.2}
OV_GAIN = 0.45  # per-factor gain of W_V and W_O (product ~ 1 / LN scale)
UNEMBED_GAIN = 5.0


def _idx(name: str) -> slice:
    a, b = _sl[name]
    return slice(a, b)


def token_codes(n: int) -> Any:
    """``n <= 64`` unit vectors in R^32: the identity rows then Sylvester-Hadamard rows / sqrt(32)."""
    import torch

    h = torch.ones(1, 1)
    while h.shape[0] < 32:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    codes = torch.cat([torch.eye(32), h / math.sqrt(32)], 0)
    if n > codes.shape[0]:
        raise ValueError(f"planted supports at most 64 word tokens, got {n}")
    return codes[:n]


def _basis(gen: Any) -> Any:
    """128 x 127 orthonormal columns spanning the complement of the all-ones vector."""
    import torch

    g = torch.randn(D_MODEL, D_MODEL, generator=gen, dtype=torch.float64)
    g[:, 0] = 1.0
    q, _ = torch.linalg.qr(g)
    return q[:, 1:].float()


def _pos_table() -> Any:
    """n_ctx x 16 unit-norm sinusoid position codes."""
    import torch

    w = torch.tensor(POS_FREQS)
    ang = torch.arange(N_CTX, dtype=torch.float32)[:, None] * w[None, :]
    return torch.stack([ang.cos(), ang.sin()], -1).reshape(N_CTX, -1) / math.sqrt(len(POS_FREQS))


def _rotate_back() -> Any:
    """16 x 16 map R with p_i @ R = p_{i-1} for the sinusoid codes."""
    import torch

    r = torch.zeros(16, 16)
    for k, w in enumerate(POS_FREQS):
        c, s = math.cos(w), math.sin(w)
        # (cos wi, sin wi) -> (cos w(i-1), sin w(i-1))
        r[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = torch.tensor([[c, -s], [s, c]])
    return r


def _random_like(gen: Any, rows: slice | None, cols: int, frob: float, out_rows: int = N_LOGICAL) -> Any:
    """Gaussian matrix with nonzero rows only in ``rows`` (all if None), scaled to Frobenius norm ``frob``."""
    import torch

    m = torch.zeros(out_rows, cols)
    r = rows if rows is not None else slice(0, out_rows)
    n = r.stop - r.start
    m[r] = torch.randn(n, cols, generator=gen)
    return m * (frob / m.norm())


def _head_weights(gen: Any) -> dict[tuple[int, int], dict[str, Any]]:
    """Logical-space W_Q, W_K, W_V (127 x 32) and W_O (32 x 127) for every head."""
    import torch

    def zeros() -> dict[str, Any]:
        return {"q": torch.zeros(N_LOGICAL, D_HEAD), "k": torch.zeros(N_LOGICAL, D_HEAD),
                "v": torch.zeros(N_LOGICAL, D_HEAD), "o": torch.zeros(D_HEAD, N_LOGICAL)}

    eye = torch.eye(32)
    heads: dict[tuple[int, int], dict[str, Any]] = {}
    # circuit heads
    prev = zeros()
    prev["q"][_idx("POS"), :16] = QK_GAIN["prev"] * _rotate_back()
    prev["k"][_idx("POS"), :16] = QK_GAIN["prev"] * torch.eye(16)
    prev["v"][_idx("TOK"), :] = OV_GAIN * eye
    prev["o"][:, _idx("PREV")] = OV_GAIN * eye
    heads[PREV_HEAD] = prev
    ind = zeros()
    ind["q"][_idx("TOK"), :] = QK_GAIN["ind"] * eye
    ind["k"][_idx("PREV"), :] = QK_GAIN["ind"] * eye
    ind["v"][_idx("TOK"), :] = OV_GAIN * eye
    ind["o"][:, _idx("OUT")] = OV_GAIN * eye
    heads[IND_HEAD] = ind

    fv, fo = prev["v"].norm().item(), prev["o"].norm().item()

    def pad(w: Any, head_dims: slice, frob: float) -> Any:
        """Add random weights into ``head_dims`` (unused by the score) up to Frobenius norm ``frob``."""
        extra = _random_like(gen, None, D_HEAD, 1.0)
        extra[:, : head_dims.start] = 0.0
        extra[:, head_dims.stop :] = 0.0
        need = max(frob**2 - w.norm().item() ** 2, 0.0) ** 0.5
        return w + extra * (need / extra.norm())

    def distractor(kind: str, layer: int) -> dict[str, Any]:
        w = zeros()
        ref = heads[PREV_HEAD if layer == 0 else IND_HEAD]
        fq, fk = ref["q"].norm().item(), ref["k"].norm().item()
        if kind in ("bos", "uniform"):  # score = gain^2 on <bos> / on every key
            gain = QK_GAIN[kind]
            w["q"][_idx("CONST"), 0] = gain
            w["k"][_idx("BOSF" if kind == "bos" else "CONST"), 0] = gain
            # q-only dims 1..15 and k-only dims 16..31 are orthogonal: the score is unchanged
            w["q"], w["k"] = pad(w["q"], slice(1, 16), fq), pad(w["k"], slice(16, 32), fk)
        elif kind == "dup":  # attends to tokens equal to the query token (itself included)
            w["q"][_idx("TOK"), :] = QK_GAIN[kind] * eye
            w["k"][_idx("TOK"), :] = QK_GAIN[kind] * eye
        elif kind == "random":
            w["q"] = _random_like(gen, None, D_HEAD, fq)
            w["k"] = _random_like(gen, None, D_HEAD, fk)
        w["v"] = _random_like(gen, None, D_HEAD, fv)
        w["o"] = _random_like(gen, _idx("JUNK"), D_HEAD, fo).T.contiguous()
        return w

    kinds = {0: ["bos", "uniform", None, "random"], 1: ["dup", None, "random", "bos"]}
    for layer, ks in kinds.items():
        for h, kind in enumerate(ks):
            if kind is not None:
                heads[(layer, h)] = distractor(kind, layer)
    return heads


def build_model(seed: int) -> Any:
    """Construct the planted ``GPT2LMHeadModel`` (deterministic given ``seed``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from .data import N_WORDS, build_vocab

    vocab = build_vocab(N_WORDS)
    gen = torch.Generator().manual_seed(seed)
    basis = _basis(gen)  # 128 x 127
    cfg = GPT2Config(
        vocab_size=len(vocab), n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
        n_inner=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()

    codes = token_codes(N_WORDS)
    emb = torch.zeros(len(vocab), N_LOGICAL)
    emb[:, _idx("CONST")] = 1.0
    emb[vocab["<bos>"], _idx("BOSF")] = 1.0
    emb[len(vocab) - N_WORDS :, _idx("TOK")] = codes
    pos = torch.zeros(N_CTX, N_LOGICAL)
    pos[:, _idx("POS")] = _pos_table()
    unemb = torch.zeros(len(vocab), N_LOGICAL)
    unemb[len(vocab) - N_WORDS :, _idx("OUT")] = UNEMBED_GAIN * codes

    heads = _head_weights(gen)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
        model.transformer.wte.weight.copy_(emb @ basis.T)
        model.transformer.wpe.weight.copy_(pos @ basis.T)
        model.lm_head.weight.copy_(unemb @ basis.T)
        for layer, block in enumerate(model.transformer.h):
            qkv = torch.zeros(D_MODEL, 3 * D_MODEL)  # Conv1D: x @ W
            o = torch.zeros(D_MODEL, D_MODEL)
            for h in range(N_HEAD):
                w = heads[(layer, h)]
                cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
                for i, key in enumerate("qkv"):
                    qkv[:, i * D_MODEL + cols.start : i * D_MODEL + cols.stop] = basis @ w[key]
                o[cols, :] = w["o"] @ basis.T
            block.attn.c_attn.weight.copy_(qkv)
            block.attn.c_proj.weight.copy_(o)
    return model


def head_norms(model: Any) -> list[list[dict[str, float]]]:
    """Frobenius norms of W_Q, W_K, W_V, W_O per head (to show distractors are comparable)."""
    out = []
    for block in model.transformer.h:
        qkv, o = block.attn.c_attn.weight, block.attn.c_proj.weight
        row = []
        for h in range(N_HEAD):
            c = slice(h * D_HEAD, (h + 1) * D_HEAD)
            row.append({
                "W_Q": round(qkv[:, c].norm().item(), 3),
                "W_K": round(qkv[:, D_MODEL + c.start : D_MODEL + c.stop].norm().item(), 3),
                "W_V": round(qkv[:, 2 * D_MODEL + c.start : 2 * D_MODEL + c.stop].norm().item(), 3),
                "W_O": round(o[c, :].norm().item(), 3),
            })
        out.append(row)
    return out


def planted_edges(positions: bool = False) -> Any:
    """The planted circuit as an ``EdgeCircuit`` (EAP-IG names), read off ``_head_weights``:

    - ``input->a0.h2<v>``: the previous-token head's OV reads TOK from the embeddings;
    - ``a0.h2->a1.h1<k>``: it writes PREV, which the induction head's keys read;
    - ``input->a1.h1<q>``: the induction head's query reads the current TOK;
    - ``input->a1.h1<v>``: its OV reads the attended token's TOK ...
    - ``a1.h1->logits``: ... and writes OUT, the only subspace the unembedding reads.

    The previous-token head's q and k read POS, which every prompt shares, so they are not
    edges of the circuit (mean-ablating them changes nothing but LayerNorm scales). Measured
    (32 induction prompts, mean ablation): these five are the five largest exact single-edge
    patching effects (-10.7 to -12.8 logits; the next is +1.4). With ``positions`` each edge
    is kept only where the circuit uses it, in ``cc.tasks.induction``'s position names: the
    query and the read-out at ``end``, the induction head's key and value at ``target`` (the
    token after the earlier occurrence), the previous-token head's value at ``prev``.
    """
    from ..edge_circuit import EdgeCircuit

    prev, ind = (f"a{l}.h{h}" for l, h in (PREV_HEAD, IND_HEAD))
    edges = [(f"input->{prev}<v>", "prev"), (f"{prev}->{ind}<k>", "target"),
             (f"input->{ind}<q>", "end"), (f"input->{ind}<v>", "target"),
             (f"{ind}->logits", "end")]
    return EdgeCircuit([{"edge": e, "position": p if positions else None} for e, p in edges],
                       name="planted induction circuit" + (" (positioned)" * positions),
                       shape=(N_LAYER, N_HEAD))

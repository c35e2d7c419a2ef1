"""OV copying scores from the weights (no prompts run), as the IOI and exploratory-analysis
notebooks compute them.

- :func:`ov_eigen_scores`: per head, the eigenvalue copying score of its OV circuit,
  Σ Re(λ) / Σ |λ| over the eigenvalues λ of W_V W_O (``circuit="ov"``, TransformerLens's
  ``model.OV.eigenvalues`` as in the exploratory-analysis demo) or of the full OV circuit
  W_E W_V W_O W_U (``circuit="full"``, Elhage et al. 2021). 1: the head maps every direction
  onto a positive multiple of itself (copies); -1: onto a negative one (suppresses). The
  non-zero eigenvalues of a product are those of its cyclic permutation, so both are computed
  on d_head x d_head matrices. A head whose eigenvalues are rounding noise (an OV circuit that
  writes only where it does not read: nilpotent) scores NaN.
- :func:`ov_copying`: the full-OV-circuit copying score on a task's names (Wang et al. 2022,
  the name-mover check): for each name token t, x = W_E[t] (plus the first MLP's output on it,
  ``mlp0=True``, as the notebook does), pushed through the head's W_V W_O (``-W_V W_O`` for
  ``negative=True``), the final norm and the unembedding; the score is the fraction of names
  that land in their own top ``k`` logits. Name movers copy (positive score near 1), negative
  name movers score high with ``negative=True``. Intervals are bootstrapped over names.

Both return :class:`HeadScores` (kind ``ov_eigenvalue`` / ``ov_copying`` /
``ov_negative_copying``). Grouped-query attention is handled: W_V is taken per query head.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._devicemap import weights_loaded
from ..errors import CircuitCheckError
from ._heads_common import W_V_per_head, boot_heads, widen_unit
from ._scores import HeadScores

CIRCUITS = ("ov", "full")


def _shared_vocabulary(model: Any, what: str) -> None:
    """Refuse a full-OV score when the embedding and the unembedding index different tokens."""
    n_in, n_out = int(model.W_E.shape[0]), int(model.W_U.shape[-1])
    if n_in != n_out:
        raise CircuitCheckError(
            f"{what} compares each input token with the same token at the output, but this "
            f"model embeds {n_in} tokens and unembeds {n_out}: the two vocabularies differ. "
            f"Use ov_eigen_scores(model, circuit='ov') (W_V W_O only), or a model whose "
            f"embedding and unembedding share one vocabulary")


def ov_eigen_scores(model: Any, *, circuit: str = "ov") -> HeadScores:
    """Σ Re(λ) / Σ |λ| of every head's OV circuit (see the module docstring); exact numbers,
    so the interval is the value itself."""
    import torch

    if circuit not in CIRCUITS:
        raise CircuitCheckError(f"circuit must be one of {CIRCUITS}, got {circuit!r}")
    if circuit == "full":
        _shared_vocabulary(model, "the full OV circuit's eigenvalue score")
    with weights_loaded(model):  # offloaded layers' weights in, a device map's on one device
        W_O = model.W_O.detach().double()   # [L, H, dh, d]
        W_V = W_V_per_head(model).double().to(W_O.device)  # [L, H, d, dh]
        if circuit == "ov":
            M = W_O @ W_V                    # eig(W_V W_O) \ {0} = eig(W_O W_V)
        else:
            mid = (model.W_U.detach().double().to(W_O.device)
                   @ model.W_E.detach().double().to(W_O.device))  # [d, d]
            M = W_O @ mid @ W_V  # eig(W_E W_V W_O W_U) \ {0}
    lam = torch.linalg.eigvals(M.cpu())  # [L, H, dh]
    mass = lam.abs().sum(-1)
    score = (lam.real.sum(-1) / mass.clamp_min(1e-300)).numpy()
    # a head whose OV circuit is (numerically) nilpotent - it writes only where it does not
    # read - has eigenvalues of rounding noise: its score is undefined (NaN), not a number
    size = (torch.linalg.matrix_norm(W_O) * torch.linalg.matrix_norm(W_V)).cpu()
    score[(mass <= 1e-6 * size).numpy()] = np.nan
    return HeadScores(f"ov_eigenvalue{'' if circuit == 'ov' else ' (full)'}", score,
                      score.copy(), score.copy(), score[None], 1.0)


def name_tokens(model: Any, task: Any = None, names: Sequence[Any] | None = None) -> list[int]:
    """The token ids of ``names`` (text, with its leading space as given, or ids), or of the
    task's answers and wrong answers (its names, for IOI), without repeats."""
    if names is None:
        if task is None:
            raise CircuitCheckError("give a task (its answers are the names) or names=[...]")
        enc = task.encode(model)
        ids = enc.answers.tolist() + ([] if enc.wrong is None else enc.wrong.tolist())
    else:
        from ..tasks._task import _answer_id

        ids = [_answer_id(model, nm, i, "names") for i, nm in enumerate(names)]
    out = list(dict.fromkeys(int(i) for i in ids))
    if not out:
        raise CircuitCheckError("no names to score")
    return out


def ov_copying(model: Any, task: Any = None, *, names: Sequence[Any] | None = None, k: int = 5,
               negative: bool = False, mlp0: bool = True, confidence: float = 0.95,
               seed: int = 0) -> HeadScores:
    """Fraction of the task's names each head's full OV circuit puts in their own top-``k``
    logits (``negative``: of -W_OV), with bootstrap intervals over names widened to cover
    the Wilson interval of the rate (so every name copied reads [0.8, 1], not [1, 1])."""
    import torch

    from .. import _validate

    k = _validate.count(k, "k")
    confidence = _validate.open_unit(confidence, "confidence")
    _shared_vocabulary(model, "the full-OV copying score")
    ids = name_tokens(model, task, names)
    if k > model.cfg.d_vocab:
        raise CircuitCheckError(f"k={k} is more than the vocabulary ({model.cfg.d_vocab})")
    with torch.inference_mode(), weights_loaded(model):
        tok = torch.tensor(ids, device=model.W_E.device)
        x = model.W_E.detach()[tok]  # [n, d]
        if mlp0:
            block = model.blocks[0]
            x = x + block.mlp(block.ln2(x[None]))[0].to(x.device)
        W_V = W_V_per_head(model).to(x.device, x.dtype)  # a device map's layers: one device
        W_O = model.W_O.detach().to(x.device, x.dtype)
        out = torch.einsum("nd,lhde,lhem->lhnm", x, W_V, W_O)  # [L, H, n, d]
        if negative:
            out = -out
        L, H, n, d = out.shape
        logits = model.unembed(model.ln_final(out.reshape(1, L * H * n, d)))[0]
        top = logits.topk(k, dim=-1).indices.reshape(L, H, n, k).to(tok.device)
        hit = (top == tok[None, None, :, None]).any(-1).float()  # [L, H, n]
    per = hit.permute(2, 0, 1).cpu().numpy().astype(float)  # [n, L, H]
    mean, lo, hi = boot_heads(per, confidence, seed)
    lo, hi = widen_unit(mean, lo, hi, per.shape[0], confidence)  # a rate: never [1, 1]
    return HeadScores("ov_negative_copying" if negative else "ov_copying", mean, lo, hi, per,
                      confidence)


__all__ = ["ov_copying", "ov_eigen_scores", "name_tokens"]

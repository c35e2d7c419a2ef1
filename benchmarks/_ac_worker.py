"""AutoCircuit's side of bench_edges.py, run by that benchmark in AutoCircuit's own venv.

    python _ac_worker.py IN.pt OUT.json

AutoCircuit 1.0.1 needs TransformerLens' ``HookedTransformer`` (removed in TransformerLens 4,
which circuitcheck uses), so this file imports nothing of circuitcheck. It builds a
``HookedTransformer`` from the saved Hugging Face GPT-2 directory named in IN.pt (the weights
circuitcheck loaded, processed as TransformerLens' ``from_pretrained`` does), makes it
patchable (factorized, separate q/k/v, last-token output), and times

- ``run_circuits`` (TREE_PATCH, RESAMPLE: keep the top-n edges, patch the rest from the
  corrupted prompts) over the given edge counts, the ranking given as prune scores;
- ``mask_gradient_prune_scores`` at mask 0 on logits with ``avg_diff`` (EAP exactly).

OUT.json holds the per-prompt logit differences per edge count, the EAP scores by
circuitcheck's edge names (EAP-IG's), the median timings and the matmul rate measured here.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch


def cc_name(edge: Any) -> str:
    """AutoCircuit's ``Resid Start->A1.2.K`` as EAP-IG's ``input->a1.h2<k>``."""
    def node(n: str) -> str:
        if n == "Resid Start":
            return "input"
        if n == "Resid End":
            return "logits"
        if n.startswith("MLP "):
            return f"m{n[4:]}"
        layer, head = n[1:].split(".")[:2]
        return f"a{layer}.h{head}"

    dest = edge.dest.name
    qkv = f"<{dest.rsplit('.', 1)[1].lower()}>" if dest.startswith("A") else ""
    return f"{node(edge.src.name)}->{node(dest)}{qkv}"


def hooked_gpt2(hf_dir: str) -> Any:
    """A HookedTransformer with the weights of the Hugging Face GPT-2 in ``hf_dir``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
        normalization_type="LN", eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False, device="cpu")
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True,
                                      center_writing_weights=True, center_unembed=True,
                                      fold_value_biases=True)
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


def matmul_rate(n: int = 1024) -> float:
    """Dense matmul FLOP/s here (as _common.matmul_rate)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        for _ in range(8):
            a @ b
        times.append(time.perf_counter() - t)
    return 8 * 2 * n ** 3 / statistics.median(times[1:])


def timed(fn: Any, repeats: int) -> tuple[Any, float]:
    """``fn()``'s result and its median wall time over ``repeats`` runs after a warm-up."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main(src: str, dst: str) -> None:
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune import run_circuits
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType, PatchType
    from auto_circuit.utils.graph_utils import patchable_model

    job = torch.load(src)
    torch.set_num_threads(job["threads"])
    model = patchable_model(hooked_gpt2(job["hf_dir"]), factorized=True,
                            slice_output="last_seq", separate_qkv=True,
                            device=torch.device("cpu"))
    toks, corr = job["tokens"], job["corrupted"]
    N = toks.shape[0]
    data = PromptDataset(list(toks), list(corr), [a.reshape(1) for a in job["answers"]],
                         [w.reshape(1) for w in job["wrong"]])
    loader = PromptDataLoader(data, seq_len=None, diverge_idx=0, batch_size=N, shuffle=False)
    edges = {cc_name(e): e for e in model.edges}
    rank = job["ranking"]  # cc edge name -> a distinct score
    missing = sorted(set(rank) ^ set(edges))
    if missing:
        raise SystemExit(f"the two graphs differ, e.g. {missing[:3]}")
    scores = {w.module_name: torch.zeros_like(w.patch_mask) for w in model.dest_wrappers}
    for name, e in edges.items():
        scores[e.dest.module_name][e.patch_idx] = float(rank[name])
    counts = list(job["counts"])

    def curve() -> Any:
        return run_circuits(model, loader, counts, scores, patch_type=PatchType.TREE_PATCH,
                            ablation_type=AblationType.RESAMPLE)

    outs, t_curve = timed(curve, job["repeats"])
    batch = next(iter(loader))
    rows = torch.arange(N)
    diffs = {}
    for count, by_batch in outs.items():
        logits = by_batch[batch.key].float()
        diffs[int(count)] = (logits[rows, batch.answers[:, 0]]
                             - logits[rows, batch.wrong_answers[:, 0]]).tolist()

    def eap() -> Any:
        return mask_gradient_prune_scores(model, loader, None, grad_function="logit",
                                          answer_function="avg_diff", mask_val=0.0)

    ps, t_eap = timed(eap, job["repeats"])
    eap_scores = {name: float(e.prune_score(ps)) for name, e in edges.items()}
    from importlib.metadata import version

    versions = {k: version(k) for k in ("auto-circuit", "transformer-lens", "torch")}
    with open(dst, "w") as f:
        json.dump({"curve_s": t_curve, "eap_s": t_eap, "diffs": diffs, "eap": eap_scores,
                   "rate": matmul_rate(), "n_edges": len(edges), "versions": versions}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Edge patching and EAP scores: circuitcheck vs AutoCircuit vs a plain loop (issue 18, item 7).

    python benchmarks/bench_edges.py [--device cpu] [--layers 4] [--prompts 16] [--parts gpt2,smollm2]

One faithfulness curve's worth of edge circuits (the top-n edges of one ranking at several
sizes, every other edge resample-patched from the corrupted prompts), on the same model and
prompts, three ways: circuitcheck's batched engine (``run_edge_variants``, every circuit x
prompt row in shared passes, logits read at the last token only), a plain loop (one forward
pass per circuit, ``_plain_edges.py``) and AutoCircuit 1.0.1's ``run_circuits`` (TREE_PATCH,
RESAMPLE). Then EAP scores of every edge: ``cc.edge_scores(method="eap")`` vs AutoCircuit's
``mask_gradient_prune_scores`` at mask 0 (EAP exactly). Before any timing the numbers both
compute are compared (same edges, same ablation); a mismatch stops the benchmark.

AutoCircuit needs TransformerLens 2 (``HookedTransformer``), so it runs in its own venv
(``--ac-venv``, default /work/ac-venv; created with pinned versions when missing) through
``_ac_worker.py``, on the same GPT-2 weights. When that venv cannot be made, its rows say why.
SmolLM2-135M (Llama layout, grouped-query attention) runs circuitcheck vs the plain loop:
AutoCircuit 1.0.1's graph enumerates a k/v input per query head, which TransformerLens 2's
grouped-query attention does not have, and it loads models only from the hub.

Share of the FLOP limit: the matmul FLOPs the job needs (one reference pass and one pass per
circuit, no unembedding: two logits per prompt; EAP: a forward, a backward at about twice
its cost, and the reference pass) over the measured matmul rate, divided by the wall time.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import circuitcheck as cc
from _common import forward_flops, gpt2_shaped, interleaved, machine, target
from _plain_edges import plain_curve
from circuitcheck.interventions.edges import (EdgeVariants, edge_reference, kv_groups,
                                              run_edge_variants)
from circuitcheck.measures.edge_scores import EdgeScores
from circuitcheck.tasks._induction import content_token_ids

HERE = Path(__file__).resolve().parent
#: AutoCircuit 1.0.1 with what it needs to import: it leaves TransformerLens unpinned, and 4.x
#: dropped HookedTransformer; TransformerLens 2.16.1 pins numpy < 2, which these follow.
AC_PINS = ["torch==2.13.0", "auto-circuit==1.0.1", "transformer-lens==2.16.1",
           "pyarrow<18", "pandas<2.3", "ml-dtypes<0.5", "datasets<3"]
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def fixed_task(model: Any, n: int, seq_len: int, seed: int = 0) -> cc.Task:
    """``n`` prompts of ``seq_len`` random tokens (AutoCircuit's loader needs one length),
    each corrupted by fresh random tokens after the first half, answered with the model's
    own top token against its bottom one (so the full model "does" the task)."""
    pool = content_token_ids(model)[:4096]
    rng = random.Random(seed)
    prompts, corrupted = [], []
    for _ in range(n):
        p = rng.sample(pool, seq_len)
        prompts.append(p)
        corrupted.append(p[:seq_len // 2] + rng.sample(pool, seq_len - seq_len // 2))
    with torch.inference_mode():
        last = model(torch.tensor(prompts).to(model.cfg.device))[:, -1].float().cpu()
    return cc.Task(prompts=prompts, answers=last.argmax(-1).tolist(),
                   wrong_answers=last.argmin(-1).tolist(), corrupted=corrupted,
                   name="random-repeat")


def ranking(model: Any, seed: int = 0) -> EdgeScores:
    """A random ranking of every edge with distinct scores, so the top-n is one edge set
    for both tools (AutoCircuit keeps the edges at or above the n-th score)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [e.name for e in cc.EdgeCircuit.full(model).edges]
    order = np.random.default_rng(seed).permutation(len(names))
    return EdgeScores.from_mapping({n: float(r + 1) for n, r in zip(names, order)}, (L, H),
                                   kv_group=kv_groups(model))


def cc_curve(model: Any, task: cc.Task, circuits: list[cc.EdgeCircuit]) -> torch.Tensor:
    """circuitcheck's engine: the reference outputs, then every circuit in batched passes;
    the logit differences [K, N]."""
    enc = task.encode(model)
    ref = edge_reference(model, enc, "resample")
    got = run_edge_variants(model, enc, EdgeVariants.from_circuits(model, circuits), ref,
                            reads=("logit", "wrong_logit"))
    return got.logit - got.wrong_logit


def plain(model: Any, task: cc.Task, circuits: list[cc.EdgeCircuit]) -> torch.Tensor:
    enc = task.encode(model)
    return plain_curve(model, enc.tokens, enc.corrupted, [{e.name for e in c.edges}
                                                          for c in circuits],
                       enc.answers, enc.wrong)


def ac_python(venv: Path) -> tuple[Path | None, str]:
    """AutoCircuit's interpreter, creating its venv with ``AC_PINS`` when missing; or None
    and why not."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import auto_circuit, transformer_lens; "
                            "transformer_lens.HookedTransformer"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py, ""
    print(f"(creating AutoCircuit's venv {venv}: pip install {' '.join(AC_PINS)})",
          file=sys.stderr, flush=True)
    for cmd in ([shutil.which("python3") or "python3", "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", *AC_PINS]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            return None, f"`{' '.join(cmd[:3])} ...` failed: {out.stderr.strip()[-300:]}"
    if subprocess.run(check, capture_output=True).returncode:
        return None, "auto_circuit does not import in its venv"
    return py, ""


def run_ac(py: Path, hf_dir: Path, task: cc.Task, model: Any, scores: EdgeScores,
           counts: list[int], repeats: int) -> dict[str, Any]:
    """AutoCircuit's curve and EAP scores on the same prompts, in its venv (_ac_worker.py)."""
    enc = task.encode(model)
    with tempfile.TemporaryDirectory(prefix="cc-ac-") as tmp:
        src, dst = Path(tmp) / "job.pt", Path(tmp) / "out.json"
        torch.save({"hf_dir": str(hf_dir), "tokens": enc.tokens, "corrupted": enc.corrupted,
                    "answers": enc.answers, "wrong": enc.wrong, "ranking": scores.scores,
                    "counts": counts, "repeats": repeats,
                    "threads": torch.get_num_threads()}, src)
        out = subprocess.run([str(py), str(HERE / "_ac_worker.py"), str(src), str(dst)],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"AutoCircuit's worker failed:\n{out.stderr[-3000:]}")
        return json.loads(dst.read_text())


def share(flops: float, rate: float, seconds: float) -> str:
    return f"{flops / rate / seconds:.0%}"


def gpt2_part(args: argparse.Namespace) -> None:
    hf_dir = gpt2_shaped(args.layers)
    model = cc.load_model(hf_dir, device=args.device)
    task = fixed_task(model, args.prompts, args.seq_len)
    scores = ranking(model)
    E = len(scores)
    counts = [max(1, round(f * E)) for f in FRACTIONS]
    circuits = [scores.top(c) for c in counts]
    enc = task.encode(model)
    ours = cc_curve(model, task, circuits)
    theirs = plain(model, task, circuits)
    err_plain = float((ours - theirs).abs().max())
    py, why = (None, "--no-ac") if args.no_ac else ac_python(Path(args.ac_venv))
    ac = None
    if py is not None and args.device == "cpu":
        ac = run_ac(py, hf_dir, task, model, scores, counts, args.repeats)
    elif py is not None:
        why = "AutoCircuit's worker runs on the CPU only"
    eap = cc.edge_scores(model, task, method="eap", ablation="resample")
    err_ac = err_eap = r_eap = float("nan")
    if ac is not None:
        got = torch.tensor([ac["diffs"][str(c)] for c in counts])
        err_ac = float((ours - got).abs().max())
        theirs_eap = -np.array([ac["eap"][n] for n in eap.names])  # their loss is -avg_diff
        err_eap = float(np.abs(eap.values - theirs_eap).max())
        r_eap = float(np.corrcoef(eap.values, theirs_eap)[0, 1])
    scale = float(ours.abs().max())
    bad = [what for what, err in (("plain loop", err_plain), ("AutoCircuit", err_ac))
           if err > 1e-3 * max(1.0, scale)]
    if ac is not None and err_eap > 1e-3 * max(1e-6, float(np.abs(eap.values).max())):
        bad.append("AutoCircuit's EAP scores")
    if bad:
        raise SystemExit(f"circuitcheck and {', '.join(bad)} disagree (max |diff| curve: plain "
                         f"{err_plain:.3g}, AutoCircuit {err_ac:.3g}; EAP {err_eap:.3g}); "
                         "not timing")
    med, rate = interleaved({
        "cc": lambda: cc_curve(model, task, circuits),
        "plain": lambda: plain(model, task, circuits),
        "curve": lambda: cc.faithfulness_curve(model, task, scores, sizes=FRACTIONS),
        "eap": lambda: cc.edge_scores(model, task, method="eap", ablation="resample"),
    }, args.device, repeats=args.repeats)
    tokens = float(enc.lengths.sum())
    fwd = forward_flops(model, tokens, read_positions=0)
    K = len(circuits)
    need, need_eap = (1 + K) * fwd, 4 * fwd
    print(f"machine: {machine()}; device {args.device}; matmul rate {rate / 1e9:.1f} GFLOP/s"
          + (f" (AutoCircuit's process: {ac['rate'] / 1e9:.1f})" if ac else "") + "\n")
    L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    print(f"GPT-2-shaped random model: {L} layers x {H} heads, d_model {d}, vocab "
          f"{model.cfg.d_vocab}; {E} edges; {enc.n} prompts of {args.seq_len} tokens; "
          f"{K} circuits (top {', '.join(map(str, counts))} edges), resample patching; "
          f"medians of {args.repeats}"
          + ("; " + ", ".join(f"{k} {v}" for k, v in ac["versions"].items()) if ac else "") + "\n")
    print("| measurement | plain loop | AutoCircuit | circuitcheck | cc vs AutoCircuit | "
          "cc vs plain | share of FLOP limit |")
    print("|---|---:|---:|---:|---:|---:|---|")
    t_cc, t_pl = med["cc"], med["plain"]
    t_ac = ac["curve_s"] if ac else float("nan")
    shares = f"plain {share(need, rate, t_pl)}, cc {share(need, rate, t_cc)}"
    if ac:
        shares = f"plain {share(need, rate, t_pl)}, AC {share(need, ac['rate'], t_ac)}, " \
                 f"cc {share(need, rate, t_cc)}"
    print(f"| edge patching, {K} circuits (run_edge_variants) | {t_pl:.3f} s | "
          f"{t_ac:.3f} s | {t_cc:.3f} s | {t_ac / t_cc:.1f}x | {t_pl / t_cc:.1f}x | "
          f"{shares} |")
    print(f"| cc.faithfulness_curve ({K} sizes + full + empty, bootstrap CIs) |  |  | "
          f"{med['curve']:.3f} s |  |  | cc {share(need + 2 * fwd, rate, med['curve'])} |")
    t_ace = ac["eap_s"] if ac else float("nan")
    eap_share = f"cc {share(need_eap, rate, med['eap'])}" + (
        f", AC {share(need_eap, ac['rate'], t_ace)}" if ac else "")
    print(f"| EAP scores, every edge (cc.edge_scores vs mask_gradient_prune_scores) |  | "
          f"{t_ace:.3f} s | {med['eap']:.3f} s | {t_ace / med['eap']:.1f}x |  | "
          f"{eap_share} |")
    print(f"\nagreement before timing: max |cc - plain| = {err_plain:.2e}, "
          f"max |cc - AutoCircuit| = {err_ac:.2e} (logit differences up to {scale:.2f}); "
          f"EAP max |cc - AutoCircuit| = {err_eap:.2e}, Pearson r = {r_eap:.6f}"
          + ("" if ac else f"; AutoCircuit not run: {why}") + "\n")
    if ac:
        target("edge patching vs AutoCircuit, same model and machine", t_ac / t_cc, 1.0, "x")
        target("EAP scores vs AutoCircuit", t_ace / med["eap"], 1.0, "x")
    target("edge patching vs the plain loop", t_pl / t_cc, 1.0, "x")


def smollm2_part(args: argparse.Namespace) -> None:
    try:
        model = cc.load_model("smollm2-135m", device=args.device)
    except Exception as e:  # noqa: BLE001 - any failure to load means: skip this part
        print(f"\nSmolLM2-135M skipped: not available ({type(e).__name__}: {e})")
        return
    task = fixed_task(model, args.smol_prompts, args.seq_len)
    scores = ranking(model)
    E = len(scores)
    counts = [max(1, round(f * E)) for f in (0.01, 0.1, 0.5)]
    circuits = [scores.top(c) for c in counts]
    err = float((cc_curve(model, task, circuits) - plain(model, task, circuits)).abs().max())
    if err > 1e-3:
        raise SystemExit(f"SmolLM2: circuitcheck and the plain loop disagree ({err:.3g})")
    med, rate = interleaved({"cc": lambda: cc_curve(model, task, circuits),
                             "plain": lambda: plain(model, task, circuits)},
                            args.device, repeats=1)
    enc = task.encode(model)
    need = (1 + len(circuits)) * forward_flops(model, float(enc.lengths.sum()), 0)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    print(f"\nSmolLM2-135M: {L} layers x {H} heads ({H // kv_groups(model)} key/value heads), "
          f"{E} edges; {enc.n} prompts of {args.seq_len} tokens; {len(circuits)} circuits "
          f"(top {', '.join(map(str, counts))} edges, k/v groups kept whole), resample; one "
          f"timed run each (after a warm-up); matmul rate {rate / 1e9:.1f} GFLOP/s; "
          f"max |cc - plain| = {err:.2e}\n")
    print("| measurement | plain loop | circuitcheck | cc vs plain | share of FLOP limit |")
    print("|---|---:|---:|---:|---|")
    print(f"| edge patching, {len(circuits)} circuits | {med['plain']:.2f} s | "
          f"{med['cc']:.2f} s | {med['plain'] / med['cc']:.1f}x | plain "
          f"{share(need, rate, med['plain'])}, cc {share(need, rate, med['cc'])} |")
    print("\n(AutoCircuit on SmolLM2: not run; see the module docstring.)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smol-prompts", type=int, default=4)
    ap.add_argument("--parts", default="gpt2,smollm2",
                    help="comma list: gpt2 (the three tools), smollm2 (cc vs the plain loop)")
    ap.add_argument("--no-ac", action="store_true")
    ap.add_argument("--ac-venv", default="/work/ac-venv")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if "gpt2" in parts:
        gpt2_part(args)
    if "smollm2" in parts:
        smollm2_part(args)


if __name__ == "__main__":
    main()

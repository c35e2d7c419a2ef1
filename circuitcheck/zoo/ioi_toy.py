"""``ioi-toy``: a small GPT-2 trained on synthetic indirect-object-identification sentences.

``python -m circuitcheck.zoo.ioi_toy --out DIR`` trains the model (fixed seeds, deterministic,
one CPU thread, about a minute), writes it in Hugging Face format with a word-level tokenizer,
then analyses it with circuitcheck itself (per-head importance by stochastic mean ablation,
direct logit attribution, mean-by-template faithfulness / necessity of the circuit found) and
writes the numbers to ``card.json`` and ``README.md``.

The vocabulary is every word of the IOI templates in :mod:`circuitcheck.tasks._ioi` plus its
names, places, objects and the punctuation ``.`` and ``,``; the tokenizer splits on whitespace
and punctuation (``"store."`` -> ``store``, ``.``), so :func:`circuitcheck.tasks.ioi` builds on
the model with every slot a single token.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .data import BOS, EOS, PAD, SPECIAL_TOKENS, UNK, bos_template

NAME = "ioi-toy"
SEED = 0
N_THREADS = 1
ARCH = {"n_layer": 3, "n_head": 4, "n_embd": 64, "n_inner": 256, "n_positions": 32}
TRAIN = {"steps": 1500, "batch": 128, "lr": 3e-3, "weight_decay": 0.01, "warmup": 100}
EVAL = {"n": 200, "seed": 99}
"""Full-model accuracy and logit difference are read on ``cc.tasks.ioi(model, **EVAL)``."""
CIRCUIT_TASK = {"n": 100, "seed": 1}
"""The card's faithfulness / necessity are measured on ``cc.tasks.ioi(model, **CIRCUIT_TASK)``."""
ANALYSIS_TASK = {"n": 200, "seed": 7}
"""Importance and direct logit attribution are read on this task (another seed)."""


# ---------------------------------------------------------------- vocabulary and tokenizer
def _pretokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def vocab_words() -> list[str]:
    """Template words (in first-seen order), then names, places, objects, then ``.`` and ``,``."""
    import re

    from ..tasks import _ioi

    pre = _pretokenizer()
    words: list[str] = []
    for t in _ioi.BABA_TEMPLATES + _ioi.ABBA_TEMPLATES:
        for piece, _ in pre.pre_tokenize_str(re.sub(r"\{[A-Z_]+\}", " ", t)):
            words.append(piece)
    words += list(_ioi.NAMES) + list(_ioi.PLACES) + list(_ioi.OBJECTS) + [".", ","]
    return list(dict.fromkeys(words))


def build_vocab() -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in vocab_words():
        vocab.setdefault(w, len(vocab))
    return vocab


def make_tokenizer(model_max_length: int = ARCH["n_positions"]) -> Any:
    """WordLevel tokenizer over :func:`build_vocab`, splitting on whitespace and punctuation."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = _pretokenizer()
    tok.post_processor = bos_template(vocab[BOS])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, model_max_length=model_max_length)


# ---------------------------------------------------------------- training data
def _sentence(rng: random.Random, templates: list[str]) -> tuple[str, str, str]:
    from ..tasks import _ioi

    t = rng.choice(templates)
    io, s = rng.sample(_ioi.NAMES, 2)
    text = t.format(S=s, IO=io, PLACE=rng.choice(_ioi.PLACES), OBJECT=rng.choice(_ioi.OBJECTS))
    return text, io, s


def training_batch(tokenizer: Any, rng: random.Random, batch: int) -> tuple[Any, Any, Any]:
    """``[<bos>] sentence IO`` rows, right-padded; returns ids, the index of the last prompt
    token of each row (where IO is predicted) and the IO ids."""
    import torch

    from ..tasks import _ioi

    templates = list(_ioi.BABA_TEMPLATES + _ioi.ABBA_TEMPLATES)
    vocab = tokenizer.get_vocab()
    pre = _pretokenizer()
    rows, ends, targets = [], [], []
    for _ in range(batch):
        text, io, _s = _sentence(rng, templates)
        ids = [vocab[BOS]] + [vocab[w] for w, _ in pre.pre_tokenize_str(text)]
        ends.append(len(ids) - 1)
        targets.append(vocab[io])
        rows.append(ids + [vocab[io]])
    width = max(len(r) for r in rows)
    pad = vocab[PAD]
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    return ids, torch.tensor(ends), torch.tensor(targets)


def _setup_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(N_THREADS)


def train(seed: int = SEED, log: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train the GPT-2; returns (model, tokenizer, training record)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    _setup_torch(seed)
    tokenizer = make_tokenizer()
    vocab = tokenizer.get_vocab()
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=ARCH["n_positions"], n_embd=ARCH["n_embd"],
                     n_layer=ARCH["n_layer"], n_head=ARCH["n_head"], n_inner=ARCH["n_inner"],
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                     pad_token_id=vocab[PAD], tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"],
                            betas=(0.9, 0.98))
    steps, warm = TRAIN["steps"], TRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * max(0.05, 1 - i / steps))
    rng = random.Random(seed)
    t0 = time.time()
    losses = []
    for step in range(steps):
        ids, ends, targets = training_batch(tokenizer, rng, TRAIN["batch"])
        logits = model(ids).logits
        final = logits[torch.arange(len(ids)), ends]
        loss = torch.nn.functional.cross_entropy(final, targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            acc = float((final.argmax(-1) == targets).float().mean())
            log(f"step {step:5d}  loss {float(loss):.4f}  acc {acc:.3f}  {time.time() - t0:.0f}s")
    model.eval()
    record = {"seed": seed, **TRAIN, "final_loss": round(sum(losses[-50:]) / 50, 5),
              "seconds": round(time.time() - t0, 1),
              "data": "[<bos>] sentence IO from all BABA and ABBA templates of circuitcheck.tasks._ioi, "
                      "random distinct names, random place and object; cross-entropy on the final IO "
                      "token only"}
    return model, tokenizer, record


# ---------------------------------------------------------------- the circuit (found by analysis)
L0 = [[0, 0], [0, 1], [0, 2], [0, 3]]
CIRCUIT = {
    "name movers": [[1, 0], [1, 2], [1, 3], [2, 2]],
    "layer-0 at end": L0,
    "layer-0 at S2": L0,
    "layer-0 at S1": L0,
    "layer-0 at IO": L0,
}
POSITIONS = {"name movers": "end", "layer-0 at end": "end", "layer-0 at S2": "S2",
             "layer-0 at S1": "S1", "layer-0 at IO": "IO"}
FAITHFUL_AT_LEAST = 0.8
"""The card's claim: the circuit keeps at least this fraction of the logit difference."""


def _circuit() -> Any:
    import circuitcheck as cc

    return cc.Circuit(CIRCUIT, positions=POSITIONS, name=NAME)


def _m(m: Any) -> dict[str, Any]:
    return {"value": round(float(m.value), 4), "ci": [round(float(x), 4) for x in m.ci],
            "n": m.n, "metric": m.metric, "ablation": m.ablation}


def _attention_to_names(model: Any, task: Any) -> dict[str, dict[str, float]]:
    """Mean attention of each head from ``end`` to IO, S1 and S2 (descriptive only)."""
    import torch

    out = {}
    with torch.no_grad():
        for g in sorted(set(task.groups)):
            idx = [i for i, x in enumerate(task.groups) if x == g]
            toks = model.to_tokens([task.prompts[i] for i in idx])
            _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
            for l in range(model.cfg.n_layers):
                pat = cache[f"blocks.{l}.attn.hook_pattern"][:, :, -1]  # [B, H, key]
                for h in range(model.cfg.n_heads):
                    d = out.setdefault(f"{l}.{h}", {"IO": 0.0, "S1": 0.0, "S2": 0.0})
                    for pos in d:
                        keys = torch.tensor([task.positions[pos][i] for i in idx])
                        d[pos] += float(pat[torch.arange(len(idx)), h, keys].sum()) / len(task.prompts)
    return {k: {p: round(v, 3) for p, v in d.items()} for k, d in out.items()}


def analyse(out_dir: Path) -> dict[str, Any]:
    """Measure the model and its circuit with circuitcheck (fresh load through the bridge)."""
    import numpy as np

    import circuitcheck as cc

    model = cc.load_model(str(out_dir), device="cpu")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    every = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]})
    ev = cc.tasks.ioi(model, **EVAL)
    acc = cc.faithfulness(model, ev, every, metric="top1", ablation="mean")
    ld = cc.faithfulness(model, ev, every, metric="logit_diff", ablation="mean")
    res: dict[str, Any] = {"full_model": {
        "task": f"cc.tasks.ioi(model, n={EVAL['n']}, seed={EVAL['seed']}) (mixed templates, abc corruption)",
        "top1_accuracy": round(acc.baselines["full"], 4),
        "logit_diff_mean": round(ld.baselines["full"], 4),
        "logit_diff_min": round(float(np.min(ld.per_prompt * ld.baselines["full"])), 4),
        "all_heads_mean_ablated": {"top1_accuracy": round(acc.baselines["ablated"], 4),
                                   "logit_diff": round(ld.baselines["ablated"], 4)}}}
    for tmpl in ("BABA", "ABBA"):
        t = cc.tasks.ioi(model, n=EVAL["n"], seed=EVAL["seed"], templates=tmpl)
        a = cc.faithfulness(model, t, every, metric="top1", ablation="mean")
        res["full_model"][f"top1_accuracy_{tmpl}"] = round(a.baselines["full"], 4)

    an = cc.tasks.ioi(model, **ANALYSIS_TASK)
    dla = cc.direct_logit_attribution(model, an)
    res["direct_logit_attribution"] = {
        "task": f"cc.tasks.ioi(model, n={ANALYSIS_TASK['n']}, seed={ANALYSIS_TASK['seed']})",
        "heads": [[round(float(x), 3) for x in row] for row in dla.heads],
        "components": {k: round(float(np.mean(v)), 3) for k, v in dla.components.items()},
        "max_error": round(dla.max_error, 6)}
    imp = {}
    for metric in ("logit_diff", "top1"):
        sa = cc.stochastic_ablation(model, an, metric=metric, ablation="mean", trials=512, seed=0)
        tab = sa.importance.table()
        imp[metric] = [{"head": str(r["head"]), "effect": round(float(r["effect"]), 4),
                        "ci": [round(float(r["ci_low"]), 4), round(float(r["ci_high"]), 4)]}
                       for _, r in tab.head(6).iterrows()]
    res["importance"] = {"call": f"cc.stochastic_ablation(model, task, metric=..., ablation='mean', "
                                 f"trials=512, seed=0) on cc.tasks.ioi(model, n={ANALYSIS_TASK['n']}, "
                                 f"seed={ANALYSIS_TASK['seed']}); top 6 heads", **imp}
    grid = cc.patch_heads(model, cc.tasks.ioi(model, n=100, seed=ANALYSIS_TASK["seed"]),
                          positions=["IO", "S1", "S1+1", "S2", "end"])
    res["activation_patching"] = {
        "call": "cc.patch_heads(model, task, positions=['IO','S1','S1+1','S2','end']) (denoise, logit_diff)",
        "top": [{"cell": [int(k[0]), str(k[1]), int(k[2])], "value": round(float(v), 4)}
                for k, v in grid.top(10)]}
    res["attention_from_end"] = _attention_to_names(model, an)

    task = cc.tasks.ioi(model, **CIRCUIT_TASK)
    c = _circuit()
    f = cc.faithfulness(model, task, c, ablation="mean-by-template")
    n = cc.necessity(model, task, c, ablation="mean-by-template")
    fm = cc.faithfulness(model, task, c, ablation="mean")
    nm_only = cc.Circuit({"name movers": CIRCUIT["name movers"]}, positions={"name movers": "end"})
    f_nm = cc.faithfulness(model, task, nm_only, ablation="mean-by-template")
    drops = cc.head_drops(model, task, c, ablation="mean-by-template")
    res["circuit_measurements"] = {
        "task": f"cc.tasks.ioi(model, n={CIRCUIT_TASK['n']}, seed={CIRCUIT_TASK['seed']})",
        "faithfulness": _m(f), "necessity": _m(n), "faithfulness_mean_ablation": _m(fm),
        "faithfulness_name_movers_alone": _m(f_nm),
        "head_drops": {f"{h[0]}.{h[1]}": round(v, 4) for h, v in drops.items()},
        "claim": f"faithfulness (mean-by-template, logit_diff) >= {FAITHFUL_AT_LEAST}",
        "claim_holds": bool(f.ci[0] >= FAITHFUL_AT_LEAST)}
    return res


def _readme(card: dict[str, Any]) -> str:
    fm, cm = card["full_model"], card["circuit_measurements"]
    f, n = cm["faithfulness"], cm["necessity"]
    lines = [f"# circuitcheck zoo: `{NAME}`", "", card["description"], "",
             "## Circuit (found with circuitcheck's own analysis)", ""]
    for g, heads in card["circuit"].items():
        lines.append(f"- **{g}** at `{card['positions'][g]}`: "
                     + ", ".join(f"L{l}H{h}" for l, h in heads) + f" — {card['groups_explained'][g]}")
    lines += ["", f"Faithfulness (mean-by-template ablation, logit difference, "
                  f"`{cm['task']}`): **{f['value']:.3f}** (95% CI [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]).",
              f"Necessity (circuit ablated, rest kept): **{n['value']:.3f}** (95% CI "
              f"[{n['ci'][0]:.3f}, {n['ci'][1]:.3f}]).",
              f"Same circuit with plain mean ablation: {cm['faithfulness_mean_ablation']['value']:.3f}; "
              f"the name movers alone at `end`: {cm['faithfulness_name_movers_alone']['value']:.3f}.",
              f"Claim: {cm['claim']} — {'holds' if cm['claim_holds'] else 'DOES NOT hold'} (CI lower bound).",
              "", "## Full model", "",
              f"`{fm['task']}`: top-1 accuracy {fm['top1_accuracy']:.3f} (BABA {fm['top1_accuracy_BABA']:.3f}, "
              f"ABBA {fm['top1_accuracy_ABBA']:.3f}); mean logit difference IO − S {fm['logit_diff_mean']:.2f} "
              f"(min {fm['logit_diff_min']:.2f}). All heads mean-ablated: accuracy "
              f"{fm['all_heads_mean_ablated']['top1_accuracy']:.3f}, logit diff "
              f"{fm['all_heads_mean_ablated']['logit_diff']:.2f}.", "",
              "## Direct logit attribution (IO − S at end)", "",
              "| layer | H0 | H1 | H2 | H3 |", "|---|---|---|---|---|"]
    for l, row in enumerate(card["direct_logit_attribution"]["heads"]):
        lines.append(f"| {l} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
    lines += ["", "MLP direct effects: " + ", ".join(
        f"{k} {v:.2f}" for k, v in card["direct_logit_attribution"]["components"].items() if k.startswith("mlp")),
        "", "## Stochastic-ablation importance (top heads)", ""]
    for metric in ("logit_diff", "top1"):
        lines.append(f"- {metric}: " + ", ".join(
            f"{r['head']} {r['effect']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" for r in card["importance"][metric]))
    lines += ["", "## Attention from `end` (mean weight on IO / S1 / S2)", "",
              "| head | IO | S1 | S2 |", "|---|---|---|---|"]
    for hd, d in card["attention_from_end"].items():
        lines.append(f"| {hd} | {d['IO']:.2f} | {d['S1']:.2f} | {d['S2']:.2f} |")
    a = card["architecture"]
    lines += ["", "## Model", "",
              f"GPT-2, {a['n_layers']} layers x {a['n_heads']} heads, d_model={a['d_model']}, d_mlp={a['d_mlp']}, "
              f"n_ctx={a['n_ctx']}, vocab={a['vocab_size']}, {a['n_parameters']} parameters, untied embeddings. "
              f"Trained {card['training']['steps']} steps x batch {card['training']['batch']} "
              f"(seed {card['training']['seed']}, 1 CPU thread, deterministic).",
              "", "Vocabulary: `<pad>` `<bos>` `<eos>` `<unk>`, the words of the IOI templates, the names, places "
                  "and objects of `circuitcheck.tasks._ioi`, and `.` `,`. The tokenizer splits on whitespace and "
                  "punctuation and does not add `<bos>` (TransformerLens prepends it).",
              "", "Rebuild: `python -m circuitcheck.zoo build ioi-toy` (or "
              "`python -m circuitcheck.zoo.ioi_toy --out DIR`)", ""]
    return "\n".join(lines)


GROUPS_EXPLAINED = {
    "name movers": "heads at `end` with the largest direct effect on logit(IO) - logit(S) "
                   "(direct logit attribution); they attend mostly to S2 (L1H2 0.68, L1H3 0.55, "
                   "L2H2 0.53, L1H0 0.43 of their attention) and their output pushes IO over S, i.e. "
                   "they suppress the repeated name rather than copy IO",
    "layer-0 at end": ("all layer-0 heads at `end`; each attends about equally to the two first-clause names "
                       "(IO and S1, about 0.3 each) and hardly to S2"),
    "layer-0 at S2": ("layer-0 heads at the second subject token (where the repeated name is seen); the "
                      "name movers attend there"),
    "layer-0 at S1": "layer-0 heads at the first subject token",
    "layer-0 at IO": "layer-0 heads at the indirect object token",
}


def _check_bridge(out_dir: Path) -> float:
    """The bridge's logits match the raw HF model on a few IOI prompts: the largest
    log-prob difference (raises above 1e-4)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    import circuitcheck as cc

    model = cc.load_model(str(out_dir), device="cpu")
    hf = GPT2LMHeadModel.from_pretrained(str(out_dir)).eval()
    task = cc.tasks.ioi(model, n=8, seed=3)
    worst = 0.0
    for prompt in task.prompts:  # one at a time: no padding
        toks = model.to_tokens(prompt)
        with torch.no_grad():
            a = model(toks)
            b = hf(toks).logits
        a, b = a.log_softmax(-1), b.log_softmax(-1)  # the bridge may centre the unembedding
        worst = max(worst, float((a - b).abs().max()))
        if worst > 1e-4:
            raise RuntimeError(f"bridge and HF logits differ by {worst:.3g}")
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    assert tok.convert_ids_to_tokens(tok(" Mary")["input_ids"]) == [BOS, "Mary"]
    return worst


def build(out_dir: Path, log: Any = print) -> Path:
    """Train, save, analyse; writes the HF model dir with ``card.json`` and ``README.md``."""
    import transformers

    out_dir = Path(out_dir)
    transformers.logging.set_verbosity_error()
    model, tokenizer, record = train(log=log)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        bridge_diff = _check_bridge(tmp)
        res = analyse(tmp)
        res["circuit_measurements"]["bridge_matches_hf"] = bridge_diff <= 1e-4  # measured
        c = model.config
        card = {
            "name": NAME,
            "description": "Small GPT-2 trained on synthetic indirect-object-identification sentences "
                           "(the BABA and ABBA templates of cc.tasks.ioi) over a word-level vocabulary; "
                           "predicts the indirect object after '... gave a X to'. The circuit below is what "
                           "circuitcheck's own analysis finds (not ground truth by construction).",
            "architecture": {"class": "GPT2LMHeadModel", "n_layers": c.n_layer, "n_heads": c.n_head,
                             "d_model": c.n_embd, "d_head": c.n_embd // c.n_head, "n_ctx": c.n_positions,
                             "vocab_size": c.vocab_size, "d_mlp": c.n_inner, "tied_embeddings": False,
                             "n_parameters": sum(p.numel() for p in model.parameters())},
            "circuit": CIRCUIT, "positions": POSITIONS, "groups_explained": GROUPS_EXPLAINED,
            "faithful_at_least": FAITHFUL_AT_LEAST,
            **res,
            "training": {k: v for k, v in record.items() if k != "seconds"},
            "vocab": {"size": len(tokenizer.get_vocab()),
                      "special_tokens": {t: tokenizer.get_vocab()[t] for t in SPECIAL_TOKENS},
                      "tokenizer": "WordLevel; pre-tokenizer WhitespaceSplit + Punctuation; does not add BOS"},
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(card), encoding="utf-8")
        if not card["circuit_measurements"]["claim_holds"]:
            raise RuntimeError(f"circuit claim does not hold: {card['circuit_measurements']['faithfulness']}")
        if card["full_model"]["top1_accuracy"] < 0.9:
            raise RuntimeError(f"full model accuracy {card['full_model']['top1_accuracy']} < 0.9")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log(f"built {NAME} in {out_dir} (training {record['seconds']}s)")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    build(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

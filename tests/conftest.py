"""Fixtures: tiny GPT-2- and Llama-shaped models with random weights, saved with
``save_pretrained`` and a locally built word-level tokenizer, then loaded through the same
``cc.load_model(<dir>)`` path users take."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def _import_circuitcheck() -> None:
    """Import every circuitcheck module now, before any pytester snapshot of sys.modules.

    pytester restores sys.modules after an in-process run, so a module first imported inside
    one is dropped and later imported again as a second copy (two ``Task`` classes: "task must
    be a cc.Task, got Task" in whichever test runs next). Imported here, they are in every
    snapshot and never dropped.
    """
    import importlib
    import pkgutil

    import circuitcheck

    for info in pkgutil.walk_packages(circuitcheck.__path__, "circuitcheck."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


_import_circuitcheck()

ARCHS = ("gpt2", "llama")


def build_tiny(arch: str, out: Path, seed: int = 0) -> Path:
    """Write a 2-layer, 4-head random model of ``arch`` with a word-level tokenizer to ``out``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from circuitcheck.zoo.data import make_tokenizer

    tok = make_tokenizer()
    vocab = len(tok.get_vocab())
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the init, so heads matter to the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny(model_dirs: dict[str, Path], arch: str):
    import circuitcheck as cc

    return cc.load_model(model_dirs[arch], device="cpu")


def own_task(model, n: int = 12, seed: int = 0, corrupt: bool = True, words: int | None = None):
    """A task the model does by construction: answer = its own top token, wrong = its bottom one.

    Prompts have ragged lengths (3..9 words), or all ``words`` words; corrupted prompts have the
    same lengths.
    """
    import random

    import torch

    import circuitcheck as cc

    rng = random.Random(seed)
    vocab = [f"t{i}" for i in range(60)]
    sizes = [words or rng.randint(3, 9) for _ in range(n)]
    prompts = [" ".join(rng.choice(vocab) for _ in range(k)) for k in sizes]
    corrupted = [" ".join(rng.choice(vocab) for _ in p.split()) for p in prompts]
    answers, wrong = [], []
    with torch.inference_mode():
        for p in prompts:
            logits = model(model.to_tokens(p))[0, -1]
            answers.append(int(logits.argmax()))
            wrong.append(int(logits.argmin()))
    mid = [rng.randint(1, len(p.split())) for p in prompts]
    return cc.Task(prompts=prompts, answers=answers, wrong_answers=wrong,
                   corrupted=corrupted if corrupt else None, positions={"mid": mid},
                   groups=[f"g{len(p.split()) % 2}" for p in prompts], name="own-top-token")


def build_bpe_gpt2(out: Path, seed: int = 0) -> Path:
    """A small GPT-2 with a byte-level BPE tokenizer trained here on IOI, greater-than and
    copying sentences, so names are single tokens with a leading space, as in GPT-2."""
    import itertools

    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from circuitcheck.tasks import _copying as copying_mod
    from circuitcheck.tasks import _greater_than as gt_mod
    from circuitcheck.tasks import _ioi as ioi_mod

    corpus = []
    names = ioi_mod.NAMES
    for t, (a, b), p, o in itertools.product(
            ioi_mod.BABA_TEMPLATES + ioi_mod.ABBA_TEMPLATES, itertools.combinations(names, 2),
            ioi_mod.PLACES[:3], ioi_mod.OBJECTS[:3]):
        corpus.append(t.format(S=a, IO=b, PLACE=p, OBJECT=o))
    corpus += [f"The {n} lasted from the year 17{y:02d} to the year 17{y:02d}"
               for n in gt_mod.NOUNS for y in range(100)]
    corpus += [f"{s} {v} {o}. {s} {v} {o}" for s, v, o in copying_mod.TRIPLES] * 50
    corpus += [" ".join(ioi_mod.PLACES + ioi_mod.OBJECTS)] * 200
    tok = Tokenizer(models.BPE())
    # digits in pairs, as GPT-2 splits "1732" into "17" "32"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32,
                                       n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_bpe_gpt2(tmp_path_factory.mktemp("bpe") / "gpt2-bpe")


@pytest.fixture(scope="session", params=[None, True], ids=["bos-as-tokenizer", "bos-forced"])
def bpe_model(request: pytest.FixtureRequest, bpe_dir):
    """A GPT-2-style BPE model, with the tokenizer's start convention (no BOS) and with BOS."""
    import circuitcheck as cc

    return cc.load_model(bpe_dir, device="cpu", prepend_bos=request.param)

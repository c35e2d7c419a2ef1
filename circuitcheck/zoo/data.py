"""Vocabulary, tokenizer and sequence generators shared by the zoo models.

All zoo models use the same word-level vocabulary: four special tokens
(``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``, ids 0-3) followed by the word
tokens ``t0 .. t{N-1}`` (ids 4 ..). Text prompts are whitespace-separated
words, e.g. ``"t3 t17 t3"``. The tokenizer does not add BOS by itself;
TransformerLens (and circuitcheck) prepend it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
N_WORDS = 60  # word tokens t0..t59 -> vocab size 64
WORD_PREFIX = "t"


def build_vocab(n_words: int = N_WORDS) -> dict[str, int]:
    """Token -> id map: special tokens first, then ``t0 .. t{n_words-1}``."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i in range(n_words):
        vocab[f"{WORD_PREFIX}{i}"] = len(vocab)
    return vocab


def make_tokenizer(n_words: int = N_WORDS, model_max_length: int = 64) -> "PreTrainedTokenizerFast":
    """A ``PreTrainedTokenizerFast`` (WordLevel + WhitespaceSplit) over :func:`build_vocab`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(n_words)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = bos_template(vocab[BOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def bos_template(bos_id: int) -> Any:
    """The post-processor that starts every text with BOS: the zoo models were trained so."""
    from tokenizers import processors

    return processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                         special_tokens=[(BOS, bos_id)])


def word_token_ids(vocab_info: Any) -> list[int]:
    """Ids of the word tokens (``t<i>``) of a tokenizer, a vocab dict, or a path to a model dir.

    A plain sequence of ints is returned unchanged (as a list).
    """
    if isinstance(vocab_info, (str, Path)):
        from transformers import AutoTokenizer

        vocab_info = AutoTokenizer.from_pretrained(str(vocab_info))
    if hasattr(vocab_info, "get_vocab"):
        vocab_info = vocab_info.get_vocab()
    if isinstance(vocab_info, dict):
        words = [
            (int(t[len(WORD_PREFIX):]), i)
            for t, i in vocab_info.items()
            if t.startswith(WORD_PREFIX) and t[len(WORD_PREFIX):].isdigit()
        ]
        return [i for _, i in sorted(words)]
    return [int(i) for i in vocab_info]


def _bos_id(vocab_info: Any, bos_id: int | None) -> int | None:
    if bos_id is not None or isinstance(vocab_info, (list, tuple)):
        return bos_id
    if hasattr(vocab_info, "bos_token_id"):
        return vocab_info.bos_token_id
    if isinstance(vocab_info, dict):
        return vocab_info.get(BOS)
    return build_vocab()[BOS]


def repeated_tokens_batch(
    vocab_info: Any,
    n: int,
    seed: int,
    seg_len: int = 20,
    bos_id: int | None = None,
    distinct: bool = True,
) -> list[list[int]]:
    """``n`` sequences ``[BOS] r1..rL r1..rL`` of random word tokens (``L = seg_len``).

    Args:
        vocab_info: a tokenizer, a vocab dict, a model dir, or a list of candidate token ids.
        n: number of sequences.
        seed: seed of the private ``random.Random`` used (the result depends only on the args).
        seg_len: length L of each copy; sequences have ``2 * L + 1`` tokens.
        bos_id: BOS id to prepend; looked up from ``vocab_info`` when None
            (a bare list of ids gets no BOS unless ``bos_id`` is given).
        distinct: sample the L tokens of a copy without replacement, so every
            second-half token has exactly one earlier occurrence.

    Positions: first copy at ``1..L``, second copy at ``L+1..2L`` (with BOS).
    Induction predicts ``tokens[p + 1]`` from position ``p`` for ``p`` in ``L+1 .. 2L-1``.
    """
    words = word_token_ids(vocab_info)
    bos = _bos_id(vocab_info, bos_id)
    if distinct and seg_len > len(words):
        raise ValueError(f"seg_len={seg_len} > {len(words)} candidate tokens with distinct=True")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seg = rng.sample(words, seg_len) if distinct else [rng.choice(words) for _ in range(seg_len)]
        out.append(([bos] if bos is not None else []) + seg + seg)
    return out


def induction_training_batch(
    word_ids: Sequence[int],
    batch: int,
    n_ctx: int,
    rng: random.Random,
    bos_id: int,
    min_len: int = 3,
    max_len: int = 25,
    max_gap: int = 6,
) -> tuple[list[list[int]], list[list[int]]]:
    """Training sequences of packed repeat units, plus loss masks.

    A sequence is ``[BOS]`` followed by units ``f1 seg f2 seg`` (fillers of
    random length 0..max_gap, segment length L in min_len..max_len, all random
    per unit) until ``n_ctx`` is filled; the rest is random tail. Tokens are
    distinct within a sequence (except for the copies), so every second-copy
    token has exactly one earlier occurrence. Because lengths, gaps and the
    number of units vary, neither a fixed offset nor a position-based relay
    predicts the copies: only content-based copying (previous-token head ->
    induction head) does. The mask is 1 at positions whose next token is
    predictable (``r1..r{L-1}`` of each second copy).
    """
    seqs, masks = [], []
    for _ in range(batch):
        pool = rng.sample(list(word_ids), len(word_ids))
        seq, mask = [bos_id], [0]
        while True:
            room = n_ctx - len(seq)
            seg_len = rng.randint(min_len, max_len)
            f1, f2 = rng.randint(0, max_gap), rng.randint(0, max_gap)
            if 2 * seg_len + f1 + f2 > room:
                seg_len = (room - f1 - f2) // 2
            if seg_len < min_len or seg_len + f1 + f2 > len(pool):
                break
            toks, pool = pool[: seg_len + f1 + f2], pool[seg_len + f1 + f2 :]
            seg, fill1, fill2 = toks[:seg_len], toks[seg_len : seg_len + f1], toks[seg_len + f1 :]
            seq += fill1 + seg + fill2
            mask += [0] * (f1 + seg_len + f2)
            seq += seg
            mask += [1] * (seg_len - 1) + [0]
        tail = [rng.choice(word_ids) for _ in range(n_ctx - len(seq))]
        seqs.append(seq + tail)
        masks.append(mask + [0] * len(tail))
    return seqs, masks

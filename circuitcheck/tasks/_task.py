"""``Task``: the prompts a claim is measured on, and their tokenised form for one model."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import TYPE_CHECKING, Any, Union

from ..errors import TaskError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import torch

Prompt = Union[str, Sequence[int]]
Answer = Union[str, int, Sequence[int]]

#: Position names every task has: ``end`` is each prompt's own last token.
BUILTIN_POSITIONS = ("end",)


@dataclass(frozen=True)
class Task:
    """Prompts with their expected next tokens, as a claim is measured on them.

    ``prompts``: text (tokenised by the model, with its default BOS) or token ids (lists of
    ints, used exactly as given: no BOS added). ``answers``: the expected next token of each
    prompt, read at the prompt's own last token; text or an id, and exactly one token.
    ``wrong_answers``: the competing token for logit difference (e.g. the subject in IOI).
    ``corrupted``: counterfactual prompts, one per prompt (baselines, resample ablation,
    patching). ``positions``: named token positions per prompt (``{"S2": [5, 7, ...]}``;
    negative values count from each prompt's end); ``end`` always exists. ``groups``: a template
    label per prompt, for mean ablation by template. ``good_tokens`` / ``bad_tokens``: per
    prompt, sets of tokens whose probability mass the ``prob_diff`` metric compares (e.g. years
    greater / not greater than the start year in the greater-than task). ``meta``: free-form
    notes from the builder (e.g. how many prompts were dropped), kept in reports.
    """

    prompts: Sequence[Prompt]
    answers: Sequence[Answer]
    wrong_answers: Sequence[Answer] | None = None
    corrupted: Sequence[Prompt] | None = None
    positions: Mapping[str, Sequence[int]] = field(default_factory=dict)
    groups: Sequence[Any] | None = None
    name: str = "task"
    good_tokens: Sequence[Sequence[Answer]] | None = None
    bad_tokens: Sequence[Sequence[Answer]] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", _as_list(self.prompts, "prompts"))
        n = len(self.prompts)
        if n == 0:
            raise TaskError("task has no prompts; give at least one prompt with its answer")
        object.__setattr__(self, "answers", _as_list(self.answers, "answers"))
        _same_length("answers", self.answers, n)
        for fld in ("wrong_answers", "corrupted", "groups", "good_tokens", "bad_tokens"):
            value = getattr(self, fld)
            if value is not None:
                value = _as_list(value, fld)
                _same_length(fld, value, n)
                object.__setattr__(self, fld, value)
        positions = {}
        for pos_name, idx in dict(self.positions).items():
            if pos_name in BUILTIN_POSITIONS:
                raise TaskError(f"position name {pos_name!r} is built in; choose another name")
            idx = _as_list(idx, f"positions[{pos_name!r}]")
            _same_length(f"positions[{pos_name!r}]", idx, n)
            if not all(isinstance(i, int) for i in idx):
                raise TaskError(f"positions[{pos_name!r}] must be token indices (ints)")
            positions[pos_name] = idx
        object.__setattr__(self, "positions", positions)
        for fld in ("answers", "wrong_answers"):
            for i, a in enumerate(getattr(self, fld) or ()):
                _check_answer_type(a, f"{fld}[{i}]")
        for what in ("good_tokens", "bad_tokens"):
            for i, toks in enumerate(getattr(self, what) or ()):
                if isinstance(toks, (str, bytes)) or not hasattr(toks, "__iter__"):
                    raise TaskError(f"{what}[{i}] = {toks!r} must be a list of tokens "
                                    "(texts or ids), e.g. [' 17', ' 18']")
                for t in toks:
                    _check_answer_type(t, f"{what}[{i}]")
        for i, g in enumerate(self.groups or ()):
            try:
                hash(g)
            except TypeError:
                raise TaskError(
                    f"groups[{i}] = {g!r} cannot be a template label (a {type(g).__name__} is not "
                    "hashable); label each prompt's template with a text or a number"
                ) from None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def position_names(self) -> tuple[str, ...]:
        return BUILTIN_POSITIONS + tuple(self.positions)

    def check_position(self, name: str) -> None:
        """Raise a TaskError naming the known positions when ``name`` is not one of them."""
        if name not in self.position_names:
            raise TaskError(
                f"unknown position {name!r}{did_you_mean(name, self.position_names)}; "
                f"this task has positions {list(self.position_names)}"
            )

    def subset(self, indices: Any, **meta: Any) -> "Task":
        """The task restricted to the prompts at ``indices`` (in that order); ``meta`` is
        added to the task's ``meta``."""
        keep = [int(i) for i in indices]

        def pick(values: Any) -> Any:
            return None if values is None else [values[i] for i in keep]

        return Task(prompts=pick(self.prompts), answers=pick(self.answers),
                    wrong_answers=pick(self.wrong_answers), corrupted=pick(self.corrupted),
                    positions={k: pick(v) for k, v in self.positions.items()},
                    groups=pick(self.groups), name=self.name,
                    good_tokens=pick(self.good_tokens), bad_tokens=pick(self.bad_tokens),
                    meta={**self.meta, **meta})

    def encode(self, model: Any) -> "EncodedTask":
        """Tokenise for ``model`` (cached per model object) and check every answer is 1 token."""
        cache = self.__dict__.setdefault("_encoded", {})
        key = id(model)
        if key not in cache:
            cache[key] = (model, _encode(self, model))
        return cache[key][1]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the per-model encoding cache (it holds the models themselves), so
        a task travels to another process (a Ray worker) as just its prompts and answers."""
        state = dict(self.__dict__)
        state.pop("_encoded", None)
        return state


@dataclass(frozen=True, eq=False)
class EncodedTask:
    """A task as tensors for one model: right-padded tokens and per-prompt indices."""

    tokens: "torch.Tensor"  # [n, seq] long, right-padded
    lengths: "torch.Tensor"  # [n] long
    answers: "torch.Tensor"  # [n] long
    wrong: "torch.Tensor | None"  # [n] long
    corrupted: "torch.Tensor | None"  # [n, seq_c] long
    corrupted_lengths: "torch.Tensor | None"
    positions: dict[str, "torch.Tensor"]  # name -> [n] long, always has "end"
    groups: "torch.Tensor"  # [n] long group ids (all zero when no groups)
    group_names: tuple[Any, ...]
    good: "torch.Tensor | None" = None  # [n, d_vocab] bool
    bad: "torch.Tensor | None" = None  # [n, d_vocab] bool

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TaskError(f"{what} must be a list (one entry per prompt), got {type(value).__name__}")
    return list(value)


def _same_length(what: str, values: Sequence, n: int) -> None:
    if len(values) != n:
        raise TaskError(f"{what} has {len(values)} entries but there are {n} prompts; give one per prompt")


def _tokenize_prompt(model: Any, prompt: Prompt, i: int, what: str) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise TaskError(f"{what}[{i}] is an empty string")
        ids = model.to_tokens(prompt, truncate=False)[0].tolist()  # too long: refused, not cut
        _check_known(model, prompt, ids, f"{what}[{i}]")
        return ids
    ids = [int(t) for t in prompt]
    if not ids:
        raise TaskError(f"{what}[{i}] is an empty token list")
    _check_ids(model, ids, f"{what}[{i}]")
    return ids


def _check_ids(model: Any, ids: Sequence[int], what: str) -> None:
    vocab = model.cfg.d_vocab
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise TaskError(f"{what} has token ids {bad[:5]} outside the model's vocabulary [0, {vocab})")


def unknown_token_id(model: Any) -> int | None:
    """The tokenizer's unknown-word id (word-level vocabularies have one; byte-level BPE not)."""
    return getattr(model.tokenizer, "unk_token_id", None)


def _check_known(model: Any, text: str, ids: Sequence[int], what: str) -> None:
    unk = unknown_token_id(model)
    unk_text = getattr(model.tokenizer, "unk_token", None)
    if unk is not None and unk in ids and not (unk_text and unk_text in text):
        raise TaskError(
            f"{what} = {text!r} has words the model's tokenizer does not know (they become "
            f"{unk_text!r}); use words from its vocabulary"
        )


def _check_answer_type(answer: Any, what: str) -> None:
    """An answer is a text, a token id or a one-id list; anything else says so up front."""
    def token_id(t: Any) -> bool:
        return isinstance(t, Integral) and not isinstance(t, bool)

    if isinstance(answer, str) or token_id(answer):
        return
    if isinstance(answer, Sequence) and not isinstance(answer, (bytes, Mapping)) and all(
            token_id(t) for t in answer):
        return
    raise TaskError(
        f"{what} = {answer!r} is not an answer token; give the expected next token as text "
        "(e.g. ' Mary'), as a token id (an int) or as a list with one token id"
    )


def _answer_id(model: Any, answer: Answer, i: int, what: str) -> int:
    if isinstance(answer, str):
        ids = model.to_tokens(answer, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            pieces = model.to_str_tokens(answer, prepend_bos=False)
            raise TaskError(
                f"{what}[{i}] = {answer!r} is {len(ids)} tokens {pieces} for this model, not one; "
                "use an answer that is a single token (for GPT-2 usually with a leading space, "
                "e.g. ' Mary')"
            )
        _check_known(model, answer, ids, f"{what}[{i}]")
        return ids[0]
    if isinstance(answer, Integral):
        ids = [int(answer)]
    else:
        ids = [int(t) for t in answer]
        if len(ids) != 1:
            raise TaskError(f"{what}[{i}] = {list(answer)} is {len(ids)} tokens, not one")
    _check_ids(model, ids, f"{what}[{i}]")
    return ids[0]


def _pad(rows: list[list[int]]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-pad with token 0: causal attention never lets a real token see the padding."""
    import torch

    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def _encode(task: Task, model: Any) -> EncodedTask:
    import torch

    n_ctx = model.cfg.n_ctx
    rows = [_tokenize_prompt(model, p, i, "prompts") for i, p in enumerate(task.prompts)]
    too_long = [i for i, r in enumerate(rows) if len(r) > n_ctx]
    if too_long:
        raise TaskError(f"prompts {too_long[:5]} are longer than the model's context ({n_ctx} tokens)")
    tokens, lengths = _pad(rows)
    answers = torch.tensor([_answer_id(model, a, i, "answers") for i, a in enumerate(task.answers)])
    wrong = None
    if task.wrong_answers is not None:
        wrong = torch.tensor(
            [_answer_id(model, a, i, "wrong_answers") for i, a in enumerate(task.wrong_answers)]
        )
    corrupted = corrupted_lengths = None
    if task.corrupted is not None:
        crow = [_tokenize_prompt(model, p, i, "corrupted") for i, p in enumerate(task.corrupted)]
        corrupted, corrupted_lengths = _pad(crow)
    positions = {"end": lengths - 1}
    for name, idx in task.positions.items():
        t = torch.tensor(idx, dtype=torch.long)
        t = torch.where(t < 0, t + lengths, t)
        bad = ((t < 0) | (t >= lengths)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise TaskError(
                f"position {name!r} of prompt {i} is {task.positions[name][i]}, outside its "
                f"{int(lengths[i])} tokens; positions are token indices (BOS included when the "
                "model prepends one)"
            )
        positions[name] = t
    if task.groups is None:
        group_names: tuple[Any, ...] = ("all",)
        groups = torch.zeros(len(rows), dtype=torch.long)
    else:
        group_names = tuple(dict.fromkeys(task.groups))
        index = {g: k for k, g in enumerate(group_names)}
        groups = torch.tensor([index[g] for g in task.groups], dtype=torch.long)
    sets = {}
    for what in ("good_tokens", "bad_tokens"):
        value = getattr(task, what)
        if value is None:
            sets[what] = None
            continue
        mask = torch.zeros(len(rows), model.cfg.d_vocab, dtype=torch.bool)
        for i, toks in enumerate(value):
            ids = [_answer_id(model, t, i, what) for t in toks]
            if not ids:
                raise TaskError(f"{what}[{i}] is empty; give at least one token per prompt")
            mask[i, ids] = True
        sets[what] = mask
    return EncodedTask(tokens, lengths, answers, wrong, corrupted, corrupted_lengths,
                       positions, groups, group_names, sets["good_tokens"], sets["bad_tokens"])

"""Task builders on models the tests build: positions land on the right tokens."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitcheck as cc
from circuitcheck.tasks import _ioi as ioi_mod

SLOW_OK = settings(max_examples=15, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


def _tok_at(model, task, i, position):
    enc = task.encode(model)
    return model.to_string(enc.tokens[i, enc.positions[position][i]].view(1))


@SLOW_OK
@given(names=st.lists(st.sampled_from(ioi_mod.NAMES), min_size=5, max_size=8, unique=True),
       templates=st.sampled_from(["BABA", "ABBA", "mixed"]), seed=st.integers(0, 1000))
def test_ioi_positions_land_on_the_names(bpe_model, names, templates, seed):
    task = cc.tasks.ioi(bpe_model, n=6, seed=seed, templates=templates, names=names)
    enc = task.encode(bpe_model)
    for i in range(len(task)):
        io = task.answers[i]
        s = task.wrong_answers[i]
        assert _tok_at(bpe_model, task, i, "IO") == io
        assert _tok_at(bpe_model, task, i, "S1") == s
        assert _tok_at(bpe_model, task, i, "S2") == s
        assert int(enc.positions["S1+1"][i]) == int(enc.positions["S1"][i]) + 1
        if "BABA" in task.groups[i]:
            assert _tok_at(bpe_model, task, i, "S1+1") == " and"
            assert enc.positions["S1"][i] < enc.positions["IO"][i]
        else:
            assert enc.positions["IO"][i] < enc.positions["S1"][i]
        assert int(enc.positions["end"][i]) == int(enc.lengths[i]) - 1
        assert task.prompts[i].endswith(" to")
        # ABC counterfactual: same length, three fresh names where the names were
        c = bpe_model.to_tokens(task.corrupted[i])[0]
        assert len(c) == int(enc.lengths[i])
        for pos in ("IO", "S1", "S2"):
            tok = bpe_model.to_string(c[enc.positions[pos][i]].view(1))
            assert tok.strip() in ioi_mod.NAMES and tok not in (io, s)


def test_ioi_custom_template_and_groups(bpe_model):
    template = "Then, {S} and {IO} went to the {PLACE}. {S} gave a {OBJECT} to"
    task = cc.tasks.ioi(bpe_model, n=4, templates=[template], corrupt="swap")
    assert set(task.groups) == {"custom-0"}
    # swap: S2 now holds the IO name
    enc = task.encode(bpe_model)
    c = bpe_model.to_tokens(task.corrupted[0])[0]
    assert bpe_model.to_string(c[enc.positions["S2"][0]].view(1)) == task.answers[0]


def test_ioi_name_swap_swaps_every_occurrence(bpe_model):
    """corrupt='swap-names' (the IOI notebook's): IO <-> S at every occurrence, all else equal;
    'swap-s2' (and 'swap') only at S2."""
    task = cc.tasks.ioi(bpe_model, n=6, seed=4, corrupt="swap-names")
    s2 = cc.tasks.ioi(bpe_model, n=6, seed=4, corrupt="swap-s2")
    assert s2.corrupted == cc.tasks.ioi(bpe_model, n=6, seed=4, corrupt="swap").corrupted
    enc = task.encode(bpe_model)
    for i in range(len(task)):
        clean, c = enc.tokens[i, :enc.lengths[i]], bpe_model.to_tokens(task.corrupted[i])[0]
        io, s = (int(bpe_model.to_tokens(t, prepend_bos=False)[0, 0])
                 for t in (task.answers[i], task.wrong_answers[i]))
        want = clean.clone()
        want[enc.positions["IO"][i]] = s
        want[enc.positions["S1"][i]] = io
        want[enc.positions["S2"][i]] = io
        assert c.tolist() == want.tolist()
        only = bpe_model.to_tokens(s2.corrupted[i])[0]
        assert int((only != clean).sum()) == 1 and int(only[enc.positions["S2"][i]]) == io


def test_an_unknown_template_slot_is_named(bpe_model):
    with pytest.raises(cc.TaskError, match=r"has the slot \{WHERE\}, which this task does not "
                                           r"fill; its slots are \['\{IO\}', '\{OBJECT\}'"):
        cc.tasks.ioi(bpe_model, templates=["Then, {S} and {IO} went to the {WHERE}. {S} gave "
                                           "a {OBJECT} to"])
    with pytest.raises(cc.TaskError, match="did you mean 'PLACE'"):
        cc.tasks.ioi(bpe_model, templates=["Then, {S} and {IO} went to the {PLACES}. {S} gave "
                                           "a {OBJECT} to"])


def test_ioi_rejects_multi_token_names(bpe_model):
    with pytest.raises(cc.TaskError, match="single tokens.*Zyxwvutsrq"):
        cc.tasks.ioi(bpe_model, names=["Mary", "John", "Zyxwvutsrq", "Qqqqzzzz"])
    with pytest.raises(cc.TaskError, match="must name the subject"):
        cc.tasks.ioi(bpe_model, templates=["{S} and {IO} to"])


def test_induction_random_tokens(tiny):
    task = cc.tasks.induction(tiny, n=10, seq_len=8, seed=3)
    enc = task.encode(tiny)
    for i in range(10):
        ids = task.prompts[i]
        k = int(enc.positions["target"][i])
        assert ids[k] == task.answers[i]  # the answer is what followed the earlier occurrence
        assert ids[int(enc.positions["prev"][i])] == ids[-1]  # earlier copy of the current token
        assert len(task.corrupted[i]) == len(ids) and task.corrupted[i][:9] == ids[:9]
    assert cc.tasks.induction(tiny, n=10, seq_len=8, seed=3).prompts == task.prompts


def test_induction_repeated_text(bpe_model):
    task = cc.tasks.induction(bpe_model, text="Mary gave a drink to John")
    enc = task.encode(bpe_model)
    words = bpe_model.to_str_tokens("Mary gave a drink to John", prepend_bos=False)
    assert [bpe_model.to_string([a]) for a in task.answers] == words[1:]
    bos = 1 if bpe_model.cfg.default_prepend_bos else 0
    assert int(enc.lengths[0]) == bos + len(words) + 1
    first = int(enc.tokens[0, 0])
    assert (first == bpe_model.tokenizer.bos_token_id) == bool(bos)


def test_greater_than_sets(tiny, bpe_model):
    task = cc.tasks.greater_than(bpe_model, n=5, seed=1)
    enc = task.encode(bpe_model)
    for i in range(5):
        yy = int(task.prompts[i].split("17")[1][:2])
        good = {int(bpe_model.to_string([t])) for t in enc.good[i].nonzero().flatten().tolist()}
        assert good == set(range(yy + 1, 100))
        assert enc.bad[i].sum() == yy + 1
    m = cc.necessity(bpe_model, task, cc.Circuit({"x": ["0.1"]}), ablation="mean",
                     metric="prob_diff", normalize="corrupted")
    assert m.metric == "prob_diff"
    with pytest.raises(cc.TaskError, match="two-digit year 00..99 to be one token"):
        cc.tasks.greater_than(tiny)


def test_copying_only_correct_reports_drops(bpe_model):
    full = cc.tasks.copying(bpe_model)
    kept_ids = []
    import torch
    with torch.inference_mode():
        for i, p in enumerate(full.prompts):
            top = bpe_model(bpe_model.to_tokens(p))[0, -1].argmax()
            if bpe_model.to_string([int(top)]) == full.answers[i]:
                kept_ids.append(i)
    if not kept_ids:
        with pytest.raises(cc.TaskError, match="completes none"):
            cc.tasks.copying(bpe_model, only_correct=True)
        return
    task = cc.tasks.copying(bpe_model, only_correct=True)
    assert len(task) == len(kept_ids)
    assert task.meta["dropped"] == len(full) - len(kept_ids)



def test_keep_correct_agrees_with_the_engine(tiny):
    """The copying filter's own forward pass keeps exactly the prompts the engine reads as
    correct (top-1 == answer) with every head kept."""
    import torch

    from circuitcheck.interventions import Variants, run_variants
    from circuitcheck.tasks import keep_correct

    from .conftest import own_task

    base = own_task(tiny, n=12)
    answers = [w if i % 3 == 0 else a for i, (a, w) in
               enumerate(zip(base.answers, base.wrong_answers))]
    task = cc.Task(prompts=base.prompts, answers=answers, wrong_answers=base.wrong_answers,
                   name="mixed")
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    ok = run_variants(tiny, task.encode(tiny), Variants(torch.ones(1, L, H, dtype=torch.bool)),
                      None).correct[0]
    kept = keep_correct(tiny, task, batch_size=5)
    assert kept.prompts == [p for p, good in zip(task.prompts, ok.tolist()) if good]
    assert kept.meta["dropped"] == len(task) - int(ok.sum()) > 0

def test_user_data_round_trip(tmp_path, tiny):
    records = [{"prompt": "t1 t2 t3", "answer": "t4", "wrong_answer": "t5", "pos:S": 1,
                "group": "a"},
               {"prompt": "t6 t7", "answer": "t8", "wrong_answer": "t9", "pos:S": 2, "group": "b"}]
    a = cc.tasks.from_records(records)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    b = cc.tasks.from_jsonl(path)
    pd.DataFrame(records).to_csv(tmp_path / "data.csv", index=False)
    c = cc.tasks.from_csv(tmp_path / "data.csv")
    for t in (b, c):
        assert t.prompts == a.prompts and t.answers == a.answers and t.positions == a.positions
    assert a.encode(tiny).positions["S"].tolist() == [1, 2]
    with pytest.raises(cc.TaskError, match="unknown column 'prompts'.*did you mean 'prompt'"):
        cc.tasks.from_records([{"prompts": "x", "answer": "y"}])
    path.write_text('{"prompt": "t1", "answer": "t2"}\n{bad json\n')
    with pytest.raises(cc.TaskError, match="data.jsonl:2: not valid JSON"):
        cc.tasks.from_jsonl(path)

"""Sharded (device-mapped) models give the claim values of the unsharded model.

With no GPU here, the mechanics are tested through accelerate's dispatch on the CPU: a map
that puts one layer on ``disk`` makes accelerate keep that layer's weights as ``meta``
placeholders and move them in around each call (the same ``AlignDevicesHook`` that moves
activations between GPUs), so every measurement runs through the hooks a multi-GPU split
uses. A map of modules all on ``cpu`` goes through the same ``device_map`` path without
dispatch. ``meta`` is refused before loading: it holds no weights.
"""
from __future__ import annotations

import pytest

from circuitcheck._devicemap import parse_device_map, parse_max_memory

#: Per zoo layout: its circuit, and a map splitting it with its last layer offloaded.
LAYOUTS = {
    "zoo:planted": ({"previous token": ["0.2"], "induction": ["1.1"]}, {
        "transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
        "transformer.h.1": "disk", "transformer.ln_f": "cpu", "lm_head": "cpu"}),
    "zoo:induction-2l": ({"previous token": ["0.1"], "induction": ["1.2"]}, {
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
        "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}),
}


def _claims(model, circuit):
    """A faithfulness, a patching recovery, a patching grid and a head score, as numbers."""
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    task = cc.tasks.induction(model, n=16, seq_len=10, seed=0)
    heads = [h for hs in circuit.values() for h in hs]
    f = cc.faithfulness(model, task, cc.Circuit(circuit), ablation="mean", metric="logit_diff")
    p = patching_recovery(model, task, heads)
    g = cc.patch_heads(model, task)
    s = cc.head_scores(model, "induction", n=8, seq_len=8)
    return [f.value, *f.ci, p.value, *p.ci, *g.values.ravel(), *s.values.ravel()]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_device_mapped_model_gives_the_unsharded_values(name, tmp_path_factory):
    import numpy as np

    import circuitcheck as cc

    circuit, split = LAYOUTS[name]
    plain = _claims(cc.load_model(name, device="cpu"), circuit)
    on_cpu = cc.load_model(name, device_map={"": "cpu"})
    assert _claims(on_cpu, circuit) == pytest.approx(plain, abs=1e-6)
    sharded = cc.load_model(name, device_map=split)
    # really dispatched: accelerate's map, a layer's weights held as meta placeholders
    assert sharded.cc_device_map == split and sharded.cfg.n_devices == 2
    assert any(p.device.type == "meta" for p in sharded.original_model.parameters())
    assert sharded.cc_processing.startswith("unprocessed")  # the Bridge cannot fold offloaded
    # folded (plain) and unprocessed weights compute the same function up to float rounding
    np.testing.assert_allclose(_claims(sharded, circuit), plain, atol=2e-4)
    assert cc.load_model(name, device_map=split) is sharded  # cached on the map


def test_device_map_inputs_are_checked_with_the_fix():
    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "CPU"}') == {
        "model.layers.0": 0, "lm_head": "cpu"}
    with pytest.raises(ValueError, match="meta holds no weights"):
        parse_device_map({"": "meta"})
    with pytest.raises(ValueError, match="use one of auto, balanced"):
        parse_device_map("everywhere")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_device_map("{model: 0}")
    with pytest.raises(ValueError, match=r"device_map\['x'\] = 'gpu' is not a device"):
        parse_device_map({"x": "gpu"})
    assert parse_max_memory('{"0": "20GiB", "cpu": 1000}') == {0: "20GiB", "cpu": 1000}
    with pytest.raises(ValueError, match="is not a size"):
        parse_max_memory({0: "lots"})


def test_load_model_refuses_contradictory_placement():
    import circuitcheck as cc

    with pytest.raises(ValueError, match="pass one"):
        cc.load_model("zoo:planted", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="only applies with a device_map"):
        cc.load_model("zoo:planted", device="cpu", max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="meta holds no weights"):
        cc.load_model("zoo:planted", device_map={"": "meta"})


def test_yaml_device_map_is_read_and_checked_before_any_model(tmp_path):
    from circuitcheck.claimfile import read_claim_file

    head = "model: zoo:planted\ntask: {builder: induction, n: 8}\n"
    claim = "claims:\n  - name: a\n    expect: {head_scores: {induction: {heads: ['1.1']}}}\n"
    good = tmp_path / "good.yaml"
    good.write_text(head + "device_map: {'': cpu}\nmax_memory: {cpu: 2GiB}\n" + claim)
    (c,) = read_claim_file(good).claims
    assert (c.device_map, c.max_memory) == ({"": "cpu"}, {"cpu": "2GiB"})
    for text, message in [("device_map: {'': meta}\n", "bad.yaml:3: device_map[''] = 'meta'"),
                          ("device_map: everywhere\n", "bad.yaml:3: device_map 'everywhere'"),
                          ("max_memory: {0: 1GiB}\n", "max_memory only applies with a device_map")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(head + text + claim)
        errors = [e[2] for e in read_claim_file(bad).errors]
        assert len(errors) == 1 and message in errors[0], errors


def test_plugin_runs_a_claim_on_a_sharded_model_and_refuses_a_bad_map(pytester):
    circuits = pytester.path / "circuits"
    circuits.mkdir()
    split = LAYOUTS["zoo:planted"][1]
    (circuits / "c.yaml").write_text(
        "model: zoo:planted\ntask: {builder: induction, n: 16, seq_len: 10, seed: 0}\n"
        f"device_map: {split!r}\n"
        "circuit: {groups: {prev: ['0.2'], ind: ['1.1']}}\nclaims:\n  - name: sharded\n"
        "    expect: {faithfulness: {at_least: 0.8, ablation: mean, metric: logit_diff}}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-q")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*HELD*sharded: faithfulness*"])
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits",
                                        "--cc-device-map", '{"": "meta"}')
    assert bad.ret == 4  # a usage error, before anything loads
    bad.stderr.fnmatch_lines(["*--cc-device-map: device_map[[]''[]] = 'meta'*meta holds no weights*"])


def _analyses(model):
    """The read-only analyses, as numbers: attention scores (generic and on the task's
    prompts), attention to positions (plain and value-weighted), OV eigenvalue scores (of
    W_V W_O and of the full circuit), the logit lens and direct logit attribution (every head
    and component); then, apart, what ranks logits: OV copying's top-k rates and the lens'
    final-stage ranks (earlier stages of these zoo models decode to tied logits, whose order
    is rounding noise)."""
    import numpy as np

    import circuitcheck as cc
    from circuitcheck.measures.attention_positions import task_head_scores

    task = cc.tasks.induction(model, n=12, seq_len=8, seed=1)
    parts = [cc.head_scores(model, kind, n=6, seq_len=8).values
             for kind in ("previous_token", "induction")]
    parts.append(task_head_scores(model, task, "induction").values)
    for weighted in (False, True):
        parts.append(cc.position_attention(model, task, to=("target", "first"),
                                           weighted=weighted).values)
    parts += [cc.ov_eigen_scores(model, circuit=c).values for c in ("ov", "full")]
    lens = cc.logit_lens(model, task)
    parts.append(lens.values)
    dla = cc.direct_logit_attribution(model, task)
    parts += [dla.per_prompt, *dla.components.values()]
    values = np.concatenate([np.nan_to_num(np.asarray(p, dtype=float), nan=-9.0).ravel()
                             for p in parts])
    return values, cc.ov_copying(model, task, k=3), lens.ranks[:, -1]


def _unprocessed(name):
    """``name`` whole on the CPU with its weights as stored (not folded), as a sharded model
    with offloaded layers holds them (the Bridge cannot fold what it offloaded)."""
    from transformer_lens.model_bridge import TransformerBridge

    from circuitcheck import models

    source = models.resolve_source(name)
    bridge = TransformerBridge.boot_transformers(source, device="cpu")
    bridge.eval()
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.original_model.config.use_cache = False
    models._set_start_token(bridge, models._original_adds_bos(source, None), None)
    return bridge


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_read_only_analyses_on_a_sharded_model_match_the_unsharded(name):
    """With a layer offloaded (its weights ``meta`` outside a forward), the analyses that read
    weight matrices (OV, DLA, the logit lens' unembedding) bring them in, and every analysis
    gives the values of the same (unprocessed) weights on one device: weight-based scores
    such as OV eigenvalues depend on folding, so the reference is unprocessed too."""
    import numpy as np

    import circuitcheck as cc

    whole = _unprocessed(name)
    sharded = cc.load_model(name, device_map=LAYOUTS[name][1])
    assert any(p.device.type == "meta" for p in sharded.original_model.parameters())
    (got, copying, ranks), (want, copying_want, ranks_want) = _analyses(sharded), _analyses(whole)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 sums in another order
    np.testing.assert_array_equal(ranks, ranks_want)
    # a head whose OV output is ~0 ties every logit: its top-k may flip by one name on rounding
    names = copying.n
    np.testing.assert_allclose(copying.values, copying_want.values, atol=1 / names + 1e-9)
    assert copying.values.max() == copying_want.values.max() == 1.0  # the copying head copies
    # and the offloaded weights went back out: the map still holds them as placeholders
    assert any(p.device.type == "meta" for p in sharded.original_model.parameters())


class _Config:
    """A stand-in for pytest's config: options by name (the option checks read no more)."""

    def __init__(self, **options):
        self.options = {"--cc-device-map": None, "--cc-max-memory": None, "--cc-model": None,
                        "--cc-prepend-bos": None, "--cc-dtype": "float32", "--cc-device": "auto",
                        "--cc-autocast": None, "--cc-autocast-tolerance": None, **options}

    def getoption(self, name):
        return self.options[name]


def test_cc_max_memory_is_checked_up_front_and_needs_a_device_map():
    from circuitcheck._plugin_options import check_max_memory

    check_max_memory(_Config())
    check_max_memory(_Config(**{"--cc-device-map": "auto", "--cc-max-memory": '{"0": "20GiB"}'}))
    for options, message in [
            ({"--cc-device-map": "auto", "--cc-max-memory": '{"0": "lots"}'},
             r"--cc-max-memory: max_memory\['0'\] = 'lots' is not a size"),
            ({"--cc-device-map": "auto", "--cc-max-memory": "{0: 1}"}, "is not valid JSON"),
            ({"--cc-max-memory": '{"cpu": "1GiB"}'},
             "only applies with a device map: pass --cc-device-map too")]:
        with pytest.raises(pytest.UsageError, match=message):
            check_max_memory(_Config(**options))


def test_command_line_placement_overrides_the_claims(monkeypatch):
    """``--cc-device-map`` with ``--cc-max-memory`` replace a claim's ``device_map`` /
    ``max_memory``; without them the claim's own are used."""
    import circuitcheck.models
    from circuitcheck import _claims
    from circuitcheck.plugin import _load

    calls = []
    monkeypatch.setattr(circuitcheck.models, "load_model",
                        lambda name, **kw: calls.append(kw) or object())
    _claims.set_current_test("t")
    _load(_Config(), "zoo:planted", None, None, "auto", {0: "1GiB"})
    _load(_Config(**{"--cc-device-map": "balanced", "--cc-max-memory": '{"0": "2GiB"}'}),
          "zoo:planted", None, None, "auto", {0: "1GiB"})
    _load(_Config(**{"--cc-device-map": "balanced"}), "zoo:planted", None, None, "auto",
          {0: "1GiB"})
    assert [(c["device_map"], c["max_memory"]) for c in calls] == [
        ("auto", {0: "1GiB"}), ("balanced", '{"0": "2GiB"}'), ("balanced", {0: "1GiB"})]
    assert not any("autocast" in c for c in calls)


def test_plugin_refuses_a_bad_cc_max_memory_before_torch(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cc-max-memory",
                                        '{"cpu": "1GiB"}')
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*--cc-max-memory only applies with a device map*"])

"""Executors: Monte-Carlo and sweeps on a local Ray cluster give what one process gives.

The cluster is started here (2 CPUs, a small object store, no dashboard) for the module and
shut down after. Skips, with the install command, only where Ray is not installed and not in
CI; CI installs it (the ``dev`` extra), so a missing Ray fails there.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck import executors
from circuitcheck.errors import CircuitCheckError

HAS_RAY = importlib.util.find_spec("ray") is not None


def test_ray_is_installed_in_ci():
    if os.environ.get("CI") and not HAS_RAY:
        pytest.fail("CI must install Ray (pip install -e '.[dev]' brings it): "
                    "tests/test_executor.py would skip without it")
    if not HAS_RAY:
        pytest.skip("Ray is not installed: pip install 'circuitcheck[ray]'")


needs_ray = pytest.mark.skipif(not HAS_RAY and not os.environ.get("CI"),
                               reason="Ray is not installed: pip install 'circuitcheck[ray]'")


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, object_store_memory=150 * 1024 ** 2, include_dashboard=False,
             log_to_driver=False)
    try:
        yield ray
    finally:
        executors.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def planted():
    return cc.load_model("zoo:planted", device="cpu")


@pytest.fixture(scope="module")
def task(planted):
    return cc.tasks.induction(planted, n=64, seq_len=12, seed=0)


def test_bad_executor_names_are_refused_with_the_forms():
    for bad in ("rya", "ray:", "dask", 3):
        with pytest.raises(CircuitCheckError, match="ray:ADDRESS|names no address"):
            executors.check_spec(bad)
    assert executors.check_spec(None) == "local"
    assert executors.chunks_of(100, 3) == [range(0, 33), range(33, 67), range(67, 100)]
    assert executors.chunks_of(40, 8, at_least=32) == [range(0, 40)]


def test_without_ray_the_option_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "ray" else real(name, *a, **k))
    with pytest.raises(CircuitCheckError, match=r"pip install 'circuitcheck\[ray\]'"):
        executors.check_spec("ray:auto")


def test_load_model_records_how_to_reload(planted):
    """The spec is what load_model was asked (``auto`` lets a worker with a GPU use it; the
    session's cache may have loaded this model first without device=) and reloads it."""
    from circuitcheck.models import resolve_device

    spec = dict(planted.cc_load_spec)
    assert spec.pop("device") in ("cpu", "auto")
    assert spec == {"name_or_dir": "zoo:planted", "dtype": "float32", "revision": None,
                    "prepend_bos": None}
    assert resolve_device(planted.cc_load_spec["device"]) == str(planted.cfg.device) == "cpu"
    assert cc.load_model(**planted.cc_load_spec) is planted


@needs_ray
def test_a_model_built_in_memory_is_refused_with_the_fix(planted, task):
    """Refused before any trial runs (no cluster is needed to say so)."""
    spec = planted.cc_load_spec
    try:
        planted.cc_load_spec = None
        with pytest.raises(CircuitCheckError, match="not loaded by cc.load_model.*save_pretrained"):
            cc.stochastic_ablation(planted, task, trials=8, executor="ray")
        circuit = cc.Circuit({"induction": ["1.1"]})
        with pytest.raises(CircuitCheckError, match="save_pretrained"):
            cc.sweep(planted, task, circuit, executor="ray:auto")
    finally:
        planted.cc_load_spec = spec


@needs_ray
def test_monte_carlo_on_ray_equals_in_process(cluster, planted, task, monkeypatch):
    """Sequential stopping on (rounds of 16, 32, 64 trials, each cut over both workers): the
    driver decides between rounds, so it stops where one process stops, with the same draws."""
    from circuitcheck.measures import _distributed

    monkeypatch.setattr(_distributed, "MIN_CHUNK", 4)
    kw = dict(heads=["0.2", "1.1"], trials=1024, min_trials=16, seed=3, ablation="mean",
              metric="logit_diff", calibration_trials=32)
    local = cc.stochastic_ablation(planted, task, **kw)
    ray_mc = cc.stochastic_ablation(planted, task, executor="ray", **kw)
    assert ray_mc.notes["executor"] == "ray" and local.notes["executor"] == "local"
    assert set(local.raw) == set(ray_mc.raw) == {"importance", "exclusion"}
    for regime in local.raw:
        a, b = local.raw[regime], ray_mc.raw[regime]
        np.testing.assert_array_equal(a["masks"], b["masks"])
        np.testing.assert_array_equal(a["prompt"], b["prompt"])
        np.testing.assert_allclose(a["metric"], b["metric"], rtol=1e-5, atol=1e-5)
        ea, eb = getattr(local, regime), getattr(ray_mc, regime)
        np.testing.assert_allclose(ea.effect, eb.effect, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ea.ci_low, eb.ci_low, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ea.ci_high, eb.ci_high, rtol=1e-4, atol=1e-5)
    assert local.decision == ray_mc.decision == "held"
    assert local.trials_used == ray_mc.trials_used < 2 * 1024  # stopped early, at one look
    # two workers each hold the model: the chunks really left this process
    actors = executors.get_executor("ray").pool(planted)
    assert len(actors) == 2
    pids = set(cluster.get([a.ready.remote() for a in actors]))
    assert os.getpid() not in pids and len(pids) == 2
    assert cluster.get([a.prepared.remote() for a in actors]) == [["trials"], ["trials"]]


@needs_ray
def test_important_claim_on_ray_has_the_same_verdict(cluster, planted, task):
    mc = cc.assert_important(planted, task, ["0.2", "1.1"], trials=1024, seed=0,
                             executor="ray")
    assert mc.decision == "held" and mc.notes["executor"] == "ray"


@needs_ray
def test_sweep_on_ray_equals_in_process(cluster, planted, task):
    circuit = cc.Circuit({"previous token": ["0.2"], "induction": ["1.1"]})
    kw = dict(ablation=["zero", "mean"], metric=["top1", "logit_diff", "kl"], at_least=0.8,
              normalize="ablated", seed=0)
    local = cc.sweep(planted, task, circuit, **kw)
    remote = cc.sweep(planted, task, circuit, executor="ray", **kw)
    assert list(local.measurements) == list(remote.measurements)
    for key, m in local.measurements.items():
        r = remote.measurements[key]
        np.testing.assert_allclose(r.value, m.value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.ci, m.ci, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.per_prompt, m.per_prompt, rtol=1e-5, atol=1e-6)
        assert local.verdict(key) == remote.verdict(key)
    assert any(local.verdict(k) == "held" for k in local.measurements)


def test_cc_executor_option_is_checked_before_anything_runs(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cc-executor", "rya")
    assert bad.ret == 4  # a usage error, before collection
    bad.stderr.fnmatch_lines(["*--cc-executor 'rya' is not an executor; use 'local', 'ray' or "
                              "'ray:ADDRESS'*"])
    if HAS_RAY:  # a good name only sets the default: no cluster starts for a test without one
        good = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cc-executor",
                                             "ray:127.0.0.1:1")
        assert good.ret == 0


HAS_XDIST = importlib.util.find_spec("xdist") is not None


@needs_ray
@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed")
def test_xdist_workers_share_one_cluster_for_a_bare_ray(pytester, monkeypatch):
    """``-n 2 --cc-executor ray``: the controller starts one local cluster and both workers
    join it (``ray:ADDRESS``), instead of each starting its own."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pytester.makepyfile(test_x=f"""
import os
from pathlib import Path

import ray
from circuitcheck import executors

def test_record():
    spec = executors.default()
    executors.get_executor()._ray()  # what a measurement does first: join (or start) Ray
    out = Path({str(pytester.path)!r}) / ("joined-" + os.environ["PYTEST_XDIST_WORKER"])
    out.write_text(spec + " " + ray.get_runtime_context().gcs_address)
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist",
                                           "each", "--cc-executor", "ray")
    result.assert_outcomes(passed=2)
    found = sorted(pytester.path.glob("joined-gw*"))
    seen = {f.name: f.read_text().split() for f in found}
    assert sorted(seen) == ["joined-gw0", "joined-gw1"], seen
    (spec, address), other = seen["joined-gw0"], seen["joined-gw1"]
    assert spec == f"ray:{address}" and other == [spec, address]  # one cluster, joined


def test_yaml_executor_key_is_validated_before_any_model_loads(tmp_path):
    from circuitcheck.claimfile import read_claim_file

    claim = ("model: zoo:planted\ntask: {builder: induction, n: 8}\n"
             "claims:\n  - name: mc\n    expect:\n      important: {heads: ['1.1'], "
             "executor: %s}\n")
    path = tmp_path / "c.yaml"
    path.write_text(claim % "dask")
    errors = read_claim_file(path).errors
    assert len(errors) == 1 and "c.yaml:6: important.executor 'dask' is not an executor; " \
        "use 'local', 'ray' or 'ray:ADDRESS'" in errors[0][2]
    path.write_text(claim % "local")
    assert read_claim_file(path).claims[0].expect["important"]["executor"] == "local"


@needs_ray
def test_ablation_curve_on_ray_equals_in_process(cluster, planted):
    """Seed 004's permutation grid: the rows are cut over the workers and put back in order."""
    kw = dict(ks=(0, 1, 2), lags=(6, 12), n=16, n_permutations=4, modes=("zero", "mean"),
              heads=["1.1", "0.2", "1.0"], seed=0)
    local = cc.ablation_curve(planted, **kw)
    remote = cc.ablation_curve(planted, executor="ray", **kw)
    assert local.permutations == remote.permutations
    for cell in local.chosen:
        np.testing.assert_allclose(remote.chosen[cell], local.chosen[cell], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(remote.random[cell], local.random[cell], rtol=1e-5, atol=1e-5)
    for lag in local.lags:
        np.testing.assert_allclose(remote.excess_ci(2, lag), local.excess_ci(2, lag),
                                   rtol=1e-5, atol=1e-5)
    # a real effect, not zeros compared with zeros: ablating the induction head costs loss
    assert local.chosen[("zero", 6)][1].mean() > 0.1, local.chosen[("zero", 6)][1].mean()


@needs_ray
def test_patching_grids_on_ray_equal_in_process(cluster, planted):
    """The exact cells dealt to the workers by layer and merged back: the same grid, the same
    per-prompt metrics and the same exact mask, for heads, a head subset, the residual stream
    and the attribution-screened grid."""
    from circuitcheck.measures import patching as P
    from circuitcheck.measures.metrics import get_metric

    t = cc.tasks.induction(planted, n=16, seq_len=8, seed=1)
    for fn, kw in ((P.patch_heads, {}), (P.patch_heads, {"heads": ["1.1", "0.2", "1.3"]}),
                   (P.patch_residual, {}), (P.patch_heads, {"screen": "attribution"})):
        here = fn(planted, t, progress=False, **kw)
        there = fn(planted, t, progress=False, executor="ray", **kw)
        np.testing.assert_array_equal(there.exact, here.exact)
        np.testing.assert_allclose(there.values, here.values, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(there.per_prompt, here.per_prompt, atol=1e-6, equal_nan=True)
        assert there.method == here.method and np.isfinite(there.values[there.exact]).all()
    assert np.nanmax(np.abs(P.patch_heads(planted, t, progress=False).values)) > 0.1
    with pytest.raises(CircuitCheckError, match="metric= as a name"):
        P.patch_heads(planted, t, metric=get_metric("logit_diff", has_wrong=True),
                      executor="ray")


def test_local_executor_runs_work_in_order_with_its_cache(planted):
    ex = executors.get_executor("local")
    assert ex.is_local() and ex.slots(planted) == 1
    seen = []

    def work(model, ctx, chunk, cache):
        cache.setdefault("calls", 0)
        cache["calls"] += 1
        return (model is planted, ctx, chunk, cache["calls"])

    out = ex.map(planted, work, "ctx", [3, 1, 2], progress=seen.append, sizes=[30, 10, 20])
    assert out == [(True, "ctx", 3, 1), (True, "ctx", 1, 2), (True, "ctx", 2, 3)]
    assert seen == [30, 10, 20]


@needs_ray
def test_the_session_default_is_used_when_no_executor_is_given(cluster, planted, task):
    """What --cc-executor sets: a measurement called without executor= runs on Ray."""
    executors.set_default("ray")
    try:
        mc = cc.stochastic_ablation(planted, task, trials=64, keep_prob=0.5,
                                    exclusion_keep_prob=None, seed=0)
    finally:
        executors.set_default("local")
    assert mc.notes["executor"] == "ray"
    assert cc.stochastic_ablation(planted, task, trials=64, keep_prob=0.5,
                                  exclusion_keep_prob=None, seed=0).notes["executor"] == "local"

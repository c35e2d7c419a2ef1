"""Where batches of trials or variants run: in this process (the default) or on a Ray cluster.

An *executor* evaluates pieces of one measurement's work, ``fn(model, context, chunk, cache)``
for each chunk, and returns the results in chunk order. The measurement (the driver) keeps
everything else: the random draws, the statistics and the sequential stopping, decided between
rounds. So the same seed gives the same masks, the same values and the same verdict wherever
the forward passes ran.

- ``"local"`` (the default, ``None``): in this process, exactly as without an executor.
- ``"ray"`` / ``"ray:ADDRESS"``: on a Ray cluster (``pip install 'circuitcheck[ray]'``).
  ``ray.init(address=ADDRESS)`` is called only when Ray is not initialised yet (``"ray"``
  alone starts a local cluster, or joins the one ``RAY_ADDRESS`` names). Each worker is an
  actor that loads the model once, by the arguments ``cc.load_model`` got
  (``model.cc_load_spec``; on its GPU when the cluster has GPUs and the model was not asked
  for on the CPU), and keeps it for every later call with the same model.

This module imports neither torch nor Ray until a Ray executor runs, so the pytest plugin can
check ``--cc-executor`` up front.
"""
from __future__ import annotations

import importlib.util
import os
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .errors import CircuitCheckError

INSTALL = "pip install 'circuitcheck[ray]'"
#: What ``executor=`` accepts, in words (errors and option help quote it).
FORMS = "'local', 'ray' or 'ray:ADDRESS' (e.g. 'ray:auto', 'ray:10.0.0.5:6379')"

Work = Callable[[Any, Any, Any, dict], Any]  # fn(model, context, chunk, cache) -> result

_DEFAULT = "local"  # the session default (``--cc-executor``), read when executor=None
_EXECUTORS: dict[str, "Executor"] = {}


class Executor:
    """Runs ``fn(model, context, chunk, cache)`` for each chunk; results in chunk order.

    ``cache`` is a dict that lives as long as the worker (per model): a ``fn`` keeps what it
    prepares once per ``context`` (the task's encoding, ablation values) under its own key."""

    name = "local"

    def slots(self, model: Any) -> int:
        """Into how many chunks a measurement should cut a round of work on ``model``."""
        return 1

    def map(self, model: Any, fn: Work, context: Any, chunks: Sequence[Any],
            progress: Callable[[int], None] | None = None,
            sizes: Sequence[int] | None = None) -> list[Any]:
        raise NotImplementedError

    def is_local(self) -> bool:
        """True when the work runs in this process (the measurement then runs it directly)."""
        return False


class LocalExecutor(Executor):
    """In this process, in order: the default, and what every measurement does without one."""

    name = "local"

    def __init__(self) -> None:
        self._cache: dict[int, dict] = {}

    def map(self, model: Any, fn: Work, context: Any, chunks: Sequence[Any],
            progress: Callable[[int], None] | None = None,
            sizes: Sequence[int] | None = None) -> list[Any]:
        cache = self._cache.setdefault(id(model), {})
        out = []
        for i, chunk in enumerate(chunks):
            out.append(fn(model, context, chunk, cache))
            if progress is not None and sizes is not None:
                progress(int(sizes[i]))
        return out

    def is_local(self) -> bool:
        return True


class RayExecutor(Executor):
    """On a Ray cluster: one actor per worker slot, each holding the model once.

    ``address``: what ``ray.init(address=...)`` gets when Ray is not initialised yet (None:
    a local cluster, or ``RAY_ADDRESS``). ``workers``: how many actors (default: one per GPU
    when the cluster has GPUs and the model may use one, else one per CPU, at most 64)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        require_ray()
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                    or workers < 1):
            raise CircuitCheckError(f"workers must be a positive integer, got {workers!r}")
        self.address = address
        self.workers = workers
        self._pools: dict[tuple, list[Any]] = {}

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.address is None:
                ray.init(include_dashboard=False)
            else:
                ray.init(address=self.address)
        return ray

    def slots(self, model: Any) -> int:
        return len(self.pool(model))

    def pool(self, model: Any) -> list[Any]:
        """The actors holding ``model`` (started, and the model loaded, on first use)."""
        ray = self._ray()
        spec = load_spec(model)
        rc = ray.get_runtime_context()  # a pool belongs to one Ray session and one driver
        key = (rc.get_session_name(), rc.get_job_id(), tuple(sorted(spec.items())))
        if key not in self._pools:
            res = ray.cluster_resources()
            gpus = int(res.get("GPU", 0)) if spec.get("device") != "cpu" else 0
            n = self.workers or (gpus or max(1, min(64, int(res.get("CPU", 1)))))
            opts = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            cls = ray.remote(_Worker).options(**opts)
            actors = [cls.remote(spec) for _ in range(n)]
            ray.get([a.ready.remote() for a in actors])  # load errors surface here, once
            self._pools[key] = actors
        return self._pools[key]

    def map(self, model: Any, fn: Work, context: Any, chunks: Sequence[Any],
            progress: Callable[[int], None] | None = None,
            sizes: Sequence[int] | None = None) -> list[Any]:
        actors = self.pool(model)
        ray = self._ray()
        ctx = ray.put(context)
        refs = [actors[i % len(actors)].run.remote(fn, ctx, chunk) for i, chunk in enumerate(chunks)]
        out = []
        for i, ref in enumerate(refs):  # in order: results come back as the chunks went out
            out.append(ray.get(ref))
            if progress is not None and sizes is not None:
                progress(int(sizes[i]))
        return out

    def shutdown(self) -> None:
        """Stop this executor's actors (the cluster itself is left running)."""
        if self._pools:
            import ray

            for actors in self._pools.values():
                for a in actors:
                    try:
                        ray.kill(a)
                    except Exception:  # the cluster may be gone already
                        pass
        self._pools.clear()


class _Worker:
    """A Ray actor's state: the model, loaded once, and the per-context cache."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from .models import load_model

        self.model = load_model(**spec)
        self.cache: dict = {}

    def ready(self) -> int:
        """The worker's process id (once the model is loaded)."""
        return os.getpid()

    def prepared(self) -> list[str]:
        """What the worker's cache holds, by kind (``"trials"``, ``"sweep"``)."""
        return [str(k[0]) for k in self.cache]

    def run(self, fn: Work, context: Any, chunk: Any) -> Any:
        return fn(self.model, context, chunk, self.cache)


def require_ray() -> None:
    """Raise, naming the install command, when Ray is not installed (Ray is not imported)."""
    if importlib.util.find_spec("ray") is None:
        raise CircuitCheckError(f"the Ray executor needs Ray, which is not installed here: "
                                f"{INSTALL} (or use executor='local')")


def check_spec(spec: Any, what: str = "executor") -> str:
    """``spec`` checked as an executor name (torch- and Ray-free), returned normalised."""
    if spec is None:
        return _DEFAULT
    if not isinstance(spec, str):
        raise CircuitCheckError(f"{what} must be {FORMS} or an Executor, got {spec!r}")
    text = spec.strip()
    if text == "local":
        return text
    m = re.fullmatch(r"ray(?::(.+))?", text)
    if m is None:
        raise CircuitCheckError(f"{what} {spec!r} is not an executor; use {FORMS}")
    if m.group(1) is not None and not m.group(1).strip():
        raise CircuitCheckError(f"{what} {spec!r} names no address after 'ray:'; use 'ray' "
                                "(a local cluster) or 'ray:ADDRESS' (e.g. 'ray:auto')")
    require_ray()
    return text


def get_executor(spec: "str | Executor | None" = None) -> Executor:
    """The executor ``spec`` names (None: the session default, ``--cc-executor``), reused
    across calls so a Ray executor's workers keep their models."""
    if isinstance(spec, Executor):
        return spec
    text = check_spec(spec)
    if text not in _EXECUTORS:
        if text == "local":
            _EXECUTORS[text] = LocalExecutor()
        else:
            address = text.partition(":")[2] or None
            _EXECUTORS[text] = RayExecutor(address)
    return _EXECUTORS[text]


def set_default(spec: str | None) -> None:
    """Make ``spec`` what ``executor=None`` means in this process (the plugin's option)."""
    global _DEFAULT
    _DEFAULT = check_spec(spec or "local", "--cc-executor")


def default() -> str:
    return _DEFAULT


def shutdown() -> None:
    """Stop every Ray executor's actors and forget the executors."""
    for ex in _EXECUTORS.values():
        if isinstance(ex, RayExecutor):
            ex.shutdown()
    _EXECUTORS.clear()


def load_spec(model: Any) -> dict[str, Any]:
    """The ``cc.load_model`` arguments a worker reloads ``model`` by, or a clear error."""
    spec = getattr(model, "cc_load_spec", None)
    if not spec:
        raise CircuitCheckError(
            "a Ray executor reloads the model on each worker by the arguments cc.load_model "
            "got, but this model was not loaded by cc.load_model (built or changed in memory). "
            "Fix: save it with model.save_pretrained(DIR) (with its tokenizer) and use "
            "cc.load_model(DIR), or run with executor='local'")
    return dict(spec)


def chunks_of(n: int, pieces: int, at_least: int = 1) -> list[range]:
    """``range(n)`` cut into at most ``pieces`` contiguous ranges of near-equal size, none
    shorter than ``at_least`` (unless ``n`` is)."""
    k = max(1, min(pieces, n // max(at_least, 1) or 1))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def new_context_id() -> str:
    """A fresh key for a worker's cache: one per measurement call."""
    return uuid.uuid4().hex

"""One local Ray cluster for a pytest-xdist run with a bare ``--cc-executor ray``.

``ray`` alone means "start a local cluster" (``ray.init()``); under pytest-xdist every worker
would start its own, N clusters fighting over the same CPUs and GPUs. Instead the controller
starts one, when xdist configures its first worker (``pytest_configure_node``), hands its
address to every worker in ``node.workerinput``, and each worker's session default becomes
``ray:ADDRESS`` (it joins that cluster). The controller shuts the cluster down when its
session ends. With an address (``ray:ADDRESS``) or ``RAY_ADDRESS`` set, every process joins
that cluster already and nothing here applies. Ray is imported only when a cluster starts.

Ray (2.5x on) starts a local cluster with token authentication, switched on in the starting
process's environment (``RAY_AUTH_MODE=token``, the token in ``~/.ray/auth_token``): a worker
xdist spawned before the cluster started does not inherit that, so the mode and the token's
path travel in ``workerinput`` too (the path, not the token).
"""
from __future__ import annotations

import os
from typing import Any

import pytest

#: The ``workerinput`` key carrying the controller's cluster address.
WORKERINPUT_KEY = "cc_ray_address"
_ENV_KEY = "cc_ray_env"
_ADDRESS = pytest.StashKey[str]()
_STARTED = pytest.StashKey[bool]()


def _bare_ray(config: pytest.Config) -> bool:
    spec = config.getoption("--cc-executor")
    return isinstance(spec, str) and spec.strip() == "ray" and not os.environ.get("RAY_ADDRESS")


def configure_node(node: Any) -> None:
    """xdist's ``pytest_configure_node`` on the controller: start the one cluster (first
    worker only) and give the worker its address."""
    config = node.config
    if hasattr(config, "workerinput") or not _bare_ray(config):
        return
    if _ADDRESS not in config.stash:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(include_dashboard=False, log_to_driver=False)
        config.stash[_ADDRESS] = ray.get_runtime_context().gcs_address
        config.stash[_STARTED] = started
    node.workerinput[WORKERINPUT_KEY] = config.stash[_ADDRESS]
    node.workerinput[_ENV_KEY] = _auth_env()


def _auth_env() -> dict[str, str]:
    """What a process needs in its environment to join this one's cluster: Ray's auth mode
    and where its token is (when token authentication is on)."""
    from pathlib import Path

    env = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
           if k in os.environ}
    token = Path.home() / ".ray" / "auth_token"
    if env.get("RAY_AUTH_MODE", "").lower() == "token" and "RAY_AUTH_TOKEN_PATH" not in env \
            and "RAY_AUTH_TOKEN" not in os.environ and token.is_file():
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


def executor_spec(config: pytest.Config) -> str | None:
    """``--cc-executor`` as this process should use it: on an xdist worker handed the
    controller's cluster, ``ray:ADDRESS`` for a bare ``ray``."""
    spec = config.getoption("--cc-executor")
    given = getattr(config, "workerinput", {})
    address = given.get(WORKERINPUT_KEY)
    if address and isinstance(spec, str) and spec.strip() == "ray":
        for key, value in given.get(_ENV_KEY, {}).items():
            os.environ.setdefault(key, value)  # Ray reads these when it connects
        return f"ray:{address}"
    return spec


def shutdown(config: pytest.Config) -> None:
    """End the controller's cluster, if it started one."""
    if config.stash.get(_STARTED, False):
        import ray

        ray.shutdown()
        config.stash[_STARTED] = False

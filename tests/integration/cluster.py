"""One local Ray cluster with Serve on a free loopback port, per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve

from deployments.serve_env import own_haproxy_files
from deployments.settings import AppArgs
from integration.servers import free_port


@contextmanager
def serve_on_loopback(metrics_port: int | None = None) -> Iterator[int]:
    """Start Ray (2 CPUs, as on CI) and Serve's proxy on 127.0.0.1; yields the HTTP port.

    With ``metrics_port``, Ray exports Prometheus metrics there, reported every second.
    """
    port = free_port()
    extra = {}
    if metrics_port is not None:
        extra = {"_metrics_export_port": metrics_port,
                 "_system_config": {"metrics_report_interval_ms": 1000}}
    with private_haproxy():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, **extra)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield port
        finally:
            serve.shutdown()


def app_config(
    args: AppArgs, name: str = "moderation", route_prefix: str = "/", **extra
) -> dict:
    """One ``applications:`` entry of serve_config.yaml for the real app builder."""
    return {"name": name, "route_prefix": route_prefix, "import_path": "deployments.app:build_app",
            "args": args.model_dump(mode="json"), **extra}


def deploy_apps(port: int, *apps: dict, proxy_location: str | None = None) -> None:
    """Deploy declaratively, as `serve deploy serve_config.yaml` does (same controller call)."""
    from ray.serve.context import _get_global_client  # the client `serve deploy` drives
    from ray.serve.schema import ServeDeploySchema

    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": list(apps)}
    if proxy_location:
        config["proxy_location"] = proxy_location
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)


@contextmanager
def private_haproxy() -> Iterator[None]:
    """For a cluster started inside: HAProxy files of its own, stopped with the cluster
    (``own_haproxy_files``), and free ports for HAProxy's stats and metrics listeners (Ray's
    defaults, 8404 and 9101, are fixed), so an HAProxy that an earlier module's cluster left
    behind cannot block this one. Ray's processes read these when Ray starts."""
    os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    # An ingress replica drains for 30 s before it stops (so HAProxy can stop sending to it
    # during rolling updates); tests stop whole clusters, so every module would wait it out.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    with own_haproxy_files():
        yield


def kill_with_ray(proc) -> None:
    """SIGKILL a process started with ``start_new_session=True`` (its whole group), then
    whatever Ray it started outside that group (``ray stop --force``)."""
    import os
    import signal
    import subprocess
    import sys

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True,
                   timeout=120)


def wait_launcher_healthy(port: int, proc, log, timeout_s: float = 240) -> None:
    """Until ``moderation-serve`` (``proc``, its output in the file ``log``) answers
    ``/healthz`` on ``port``; fails with the log's tail if it exits or takes ``timeout_s``."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"moderation-serve exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"moderation-serve not healthy in {timeout_s} s:\n{log.read_text()[-3000:]}")

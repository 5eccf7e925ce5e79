"""One local Ray cluster with Serve on a free loopback port, per test module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve

from integration.servers import free_port


@contextmanager
def serve_on_loopback() -> Iterator[int]:
    """Start Ray (2 CPUs, as on CI) and Serve's proxy on 127.0.0.1; yields the HTTP port."""
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()

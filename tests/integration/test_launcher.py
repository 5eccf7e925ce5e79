"""`moderation-serve` stops cleanly on SIGTERM and SIGINT, even started as a script's background
job (SIGINT ignored, as a shell without job control starts it): Serve shuts down, Ray and the
HAProxy it started are gone, the port is free. Before, SIGINT was ignored there and SIGTERM
ended the launcher at once through Ray's crash handler, leaving HAProxy on the port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from deployments.settings import AppArgs, KnownImagesSettings
from integration.cluster import app_config, kill_with_ray, wait_launcher_healthy
from integration.servers import free_port

pytestmark = pytest.mark.integration
START_S, STOP_S = 240, 90  # an ingress replica drains for up to 35 s in HAProxy mode


def _as_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def haproxy_under(folder: Path) -> list[int]:
    """Pids of HAProxy processes whose command line names a file under ``folder``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if "haproxy" in cmdline and str(folder) in cmdline:
            pids.append(int(entry.name))
    return pids


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_launcher_stops_cleanly_on_a_signal(tiny_clip_dir, tmp_path, stop_signal):
    port = free_port()
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, known_images=KnownImagesSettings(
        banks_url=f"sqlite:///{tmp_path}/banks.db"))
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump({
        "proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [app_config(args, deployments=[{"name": "ClipModel", "ray_actor_options": {"num_cpus": 1}}])],
    }))
    # The launcher's own HAProxy directory goes under TMPDIR (and Ray's session under it too:
    # kept short, as Ray's socket paths must fit in 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="launch-"))
    env = {**os.environ, "TMPDIR": str(temp), "RAY_SERVE_ENABLE_HA_PROXY": "1",
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    env.pop("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", None)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_as_background_job)
    try:
        wait_launcher_healthy(port, proc, log, START_S)
        assert haproxy_under(temp), "HAProxy mode is on: one should serve the port"
        start = time.monotonic()
        proc.send_signal(stop_signal)  # the launcher only, as `kill PID` or systemd's stop does
        try:
            returncode = proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_S} s after {stop_signal.name}:\n{log.read_text()[-3000:]}")
        print(f"stopped in {time.monotonic() - start:.0f} s after {stop_signal.name}")
        assert returncode == 0, log.read_text()[-3000:]
        assert "Got KeyboardInterrupt, shutting down" in log.read_text()  # serve run's own shutdown
        assert haproxy_under(temp) == []
        assert not port_taken(port)
    finally:
        if proc.poll() is None or haproxy_under(temp):
            kill_with_ray(proc)
            for pid in haproxy_under(temp):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)

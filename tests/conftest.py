"""Shared fixtures: the tiny CLIP checkpoint is built once per test session."""

from __future__ import annotations

import atexit
import os
import sys
import tempfile

import pytest

from classifiers.random_checkpoint import build_random_clip
from pg import db_url, postgres_url  # noqa: F401  (fixtures: a bank database, a PostgreSQL server)
from deployments.serve_env import serve_env_defaults


def pytest_configure(config: pytest.Config) -> None:
    """Serve in the mode ``moderation-serve`` serves in (HAProxy, direct ingress; the controller
    looping every 0.5 s): Ray reads it from the environment of the processes it starts, so it
    is set before any test starts Ray."""
    serve_env_defaults()
    # Hash banks in a file of this run's own, never the user's (Ray's processes inherit it).
    if not os.environ.get("MODERATION_BANKS_URL"):
        banks_dir = tempfile.mkdtemp(prefix="moderation-test-banks-")
        os.environ["MODERATION_BANKS_URL"] = f"sqlite:///{banks_dir}/banks.db"
    atexit.register(_exit_without_finalizing)  # registered first, so it runs last


# Ray 2.60 leaves its OpenTelemetry metrics exporter running in the driver after ray.shutdown():
# a new C++ thread every export interval (1 s once a test sets metrics_report_interval_ms), each
# logging "Failed to export metrics to the metrics agent" to the driver log. One of them crashed
# the test process with SIGSEGV while it tore down, after every test had passed (exit status
# 139, once in four full runs; the kernel logged it as a jump into freed heap memory). So once
# the session is over and its result printed, the process leaves with pytest's exit status
# without running the C++ destructors that thread races with. Exit hooks registered before
# this one are skipped too: under `coverage run -m pytest` coverage's own exit-time save is
# lost (pytest-cov saves at session end and is not affected).
_session_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status.append(int(exitstatus))


def _exit_without_finalizing() -> None:
    if _session_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status[-1])


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight CLIP of the real architecture, saved with ``save_pretrained``."""
    return str(build_random_clip(tmp_path_factory.mktemp("tiny-clip"), size="tiny"))

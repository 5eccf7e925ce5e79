"""Shared fixtures: the tiny CLIP checkpoint is built once per test session."""

from __future__ import annotations

import pytest

from classifiers.random_checkpoint import build_random_clip
from deployments.serve_env import serve_env_defaults


def pytest_configure(config: pytest.Config) -> None:
    """Serve in the mode ``moderation-serve`` serves in (HAProxy, direct ingress; the controller
    looping every 0.5 s): Ray reads it from the environment of the processes it starts, so it
    is set before any test starts Ray."""
    serve_env_defaults()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight CLIP of the real architecture, saved with ``save_pretrained``."""
    return str(build_random_clip(tmp_path_factory.mktemp("tiny-clip"), size="tiny"))

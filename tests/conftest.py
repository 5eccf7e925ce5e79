"""Shared fixtures: the tiny CLIP checkpoint is built once per test session."""

from __future__ import annotations

import pytest

from classifiers.random_checkpoint import build_random_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight CLIP of the real architecture, saved with ``save_pretrained``."""
    return str(build_random_clip(tmp_path_factory.mktemp("tiny-clip"), size="tiny"))

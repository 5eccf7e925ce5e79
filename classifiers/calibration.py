"""Calibration files: a per-classifier temperature that makes scores mean probabilities.

Written by ``moderation evaluate --calibrate FILE`` and loaded by the service
(``calibration: FILE`` in serve_config.yaml). One JSON object::

    {"format": "clip-moderation-calibration/1", "model": "openai/clip-vit-base-patch32",
     "classifiers": {"nudity": {"temperature": 0.62, "ece_before": 0.21, "ece_after": 0.04,
                                "samples": 480, "fit_samples": 336, "holdout_samples": 144}}}

Only ``temperature`` is read here; the rest records the fit (ECE and NLL measured on the
held-out images). ``moderation evaluate`` refuses to write a temperature fitted on too few
images or lying at the bounds below (``MIN_TEMPERATURE``/``MAX_TEMPERATURE``).

Scoring divides each classifier's logits by its temperature before the softmax (or sigmoid):
above 1 softens over-confident scores, below 1 sharpens timid ones; the top label never changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from classifiers.errors import ModelLoadError

FORMAT = "clip-moderation-calibration/1"
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


def _invalid(path: str | Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"Calibration file {str(path)!r} is not usable: {why}. Write one with `moderation evaluate "
        "DATASET -c CLASSIFIER --calibrate FILE`, or remove `calibration` from serve_config.yaml."
    )


def parse_calibration(data: object, known: set[str] | frozenset[str], path: str | Path = "<data>") -> dict:
    """Validate a loaded calibration object; returns it. Raises ``ModelLoadError`` naming the fault."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _invalid(path, f"expected a JSON object with \"format\": \"{FORMAT}\"")
    entries = data.get("classifiers")
    if not isinstance(entries, dict) or not entries:
        raise _invalid(path, "\"classifiers\" must be a non-empty object of classifier name to entry")
    unknown = sorted(set(entries) - set(known))
    if unknown:
        raise _invalid(path, f"unknown classifiers {unknown}; known: {sorted(known)}")
    for name, entry in entries.items():
        t = entry.get("temperature") if isinstance(entry, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
            raise _invalid(path, f"{name}: temperature must be a number in "
                                 f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {t!r}")
    return data


def load_calibration(path: str | Path, known: set[str] | frozenset[str]) -> dict:
    """Read and validate a calibration file; ``ModelLoadError`` on any problem."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise _invalid(path, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _invalid(path, f"not JSON ({exc})") from None
    return parse_calibration(data, known, path)


def temperatures(calibration: dict) -> dict[str, float]:
    """Classifier name to temperature, from a validated calibration object."""
    return {name: float(entry["temperature"]) for name, entry in calibration["classifiers"].items()}

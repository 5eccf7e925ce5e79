"""Calibration temperatures in scoring, and the calibration file the service loads at start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers.calibration import FORMAT, load_calibration, temperatures
from classifiers.errors import ModelLoadError
from classifiers.heads import Head
from classifiers.labels import Label, LabelSet
from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.scoring import LogitRule, label_scores, score, softmax
from deployments.settings import AppArgs, ModelSettings

ROOT = Path(__file__).resolve().parents[2]
KNOWN = set(BUILTIN_CLASSIFIERS)
EXCLUSIVE = LabelSet(name="nudity", kind="exclusive", unsafe=("bad",),
                     labels=(Label("bad", ("bad",)), Label("ok", ("ok",)), Label("meh", ("meh",))))
ATTRS = LabelSet(name="at", kind="attributes", labels=(Label("p", ("p",), ("not p",)),))


def test_temperature_divides_logits_before_softmax_and_keeps_the_top_label():
    head = Head(EXCLUSIVE, np.eye(3, 4, dtype=np.float32))
    image = np.array([0.8, 0.5, 0.1, 0.3], np.float32)
    image /= np.linalg.norm(image)
    logits = 10.0 * np.eye(3, 4) @ image
    np.testing.assert_allclose(label_scores(head, image, LogitRule(10.0), temperature=2.0), softmax(logits / 2), atol=1e-6)
    assert np.array_equal(label_scores(head, image, LogitRule(10.0), 1.0), label_scores(head, image, LogitRule(10.0)))
    hot, cold = score(head, image, LogitRule(10.0), temperature=4.0), score(head, image, LogitRule(10.0), temperature=0.5)
    assert hot.top_label == cold.top_label == "bad"
    assert hot.top_score < score(head, image, LogitRule(10.0)).top_score < cold.top_score
    assert hot.unsafe_score == hot.scores["bad"]
    assert not score(head, image, LogitRule(10.0), threshold=0.7, temperature=4.0).flagged
    assert score(head, image, LogitRule(10.0), threshold=0.7, temperature=0.5).flagged


def test_attribute_temperature_scales_the_label_against_its_negation():
    head = Head(ATTRS, np.eye(2, 3, dtype=np.float32))
    image = np.array([0.6, 0.2, 0.0], np.float32)
    expected = 1 / (1 + np.exp(-(10 * 0.6 - 10 * 0.2) / 3.0))
    assert label_scores(head, image, LogitRule(10.0), temperature=3.0)[0] == pytest.approx(expected, rel=1e-5)


def _write(tmp_path, data) -> str:
    path = tmp_path / "calibration.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_valid_file_loads_as_temperatures(tmp_path):
    data = {"format": FORMAT, "model": "m", "classifiers": {"nudity": {"temperature": 0.5},
                                                             "gore": {"temperature": 2}}}
    assert temperatures(load_calibration(_write(tmp_path, data), KNOWN)) == {"nudity": 0.5, "gore": 2.0}


@pytest.mark.parametrize("data, match", [
    ("{not json", "not JSON"),
    ({"classifiers": {"nudity": {"temperature": 1}}}, "format"),
    ({"format": FORMAT, "classifiers": {}}, "non-empty"),
    ({"format": FORMAT, "classifiers": {"violence": {"temperature": 1}}}, "unknown classifiers"),
    ({"format": FORMAT, "classifiers": {"nudity": {"temperature": 0}}}, "temperature must be"),
    ({"format": FORMAT, "classifiers": {"nudity": {"temperature": "hot"}}}, "temperature must be"),
    ({"format": FORMAT, "classifiers": {"nudity": 1.5}}, "temperature must be"),
])
def test_bad_files_fail_with_one_clear_message(tmp_path, data, match):
    with pytest.raises(ModelLoadError, match=match) as info:
        load_calibration(_write(tmp_path, data), KNOWN)
    assert "\n" not in str(info.value) and "moderation evaluate" in str(info.value)


def test_missing_file_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="FileNotFoundError"):
        load_calibration(tmp_path / "nope.json", KNOWN)


def test_clip_model_applies_the_file_and_refuses_a_bad_one_at_start(tiny_clip_dir, tmp_path):
    from deployments.clip_model import ClipModel

    good = _write(tmp_path, {"format": FORMAT, "classifiers": {"gore": {"temperature": 3.0}}})
    threads = torch.get_num_threads()
    try:
        settings = dict(model=tiny_clip_dir, device="cpu", dtype="float32", torch_threads=threads)
        model = ClipModel.func_or_class(ModelSettings(**settings, calibration=good))
        assert model.temperatures == {"gore": 3.0}
        bad = tmp_path / "bad.json"
        bad.write_text("[]")
        with pytest.raises(ModelLoadError, match="not usable"):
            ClipModel.func_or_class(ModelSettings(**settings, calibration=str(bad)))
    finally:
        torch.set_num_threads(threads)


def test_launcher_refuses_a_bad_calibration_file_in_one_line(tiny_clip_dir, tmp_path):
    config = tmp_path / "serve_config.yaml"
    config.write_text(
        "applications:\n  - name: m\n    import_path: deployments.app:build_app\n"
        f"    args: {{model: {tiny_clip_dir}, calibration: {tmp_path / 'missing.json'}}}\n"
    )
    assert AppArgs.model_validate({"calibration": "x.json"}).model_settings().calibration == "x.json"
    result = subprocess.run([sys.executable, "-m", "deployments.launch", str(config), "--check-only"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.json" in lines[0]

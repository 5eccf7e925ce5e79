"""What a model replica does with a calibration file: shows it, and warns on another model's."""

import json
import logging

import torch

from classifiers.calibration import FORMAT
from deployments.settings import ModelSettings


def test_replica_reports_temperatures_and_warns_about_another_models_file(tiny_clip_dir, tmp_path, caplog):
    from deployments.clip_model import ClipModel

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"format": FORMAT, "model": "some/other-clip",
                                "classifiers": {"gore": {"temperature": 2.5}}}))
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="ray.serve"):
            model = ClipModel.func_or_class(ModelSettings(
                model=tiny_clip_dir, device="cpu", dtype="float32", torch_threads=threads,
                calibration=str(path),
            ))
    finally:
        torch.set_num_threads(threads)
    catalog = {c["name"]: c for c in model.catalog()["classifiers"]}
    assert catalog["gore"]["temperature"] == 2.5 and catalog["nudity"]["temperature"] == 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("fitted for model 'some/other-clip'" in m and r.levelno == logging.WARNING
               for m, r in zip(messages, caplog.records))
    assert any("temperatures {'gore': 2.5}" in m for m in messages)

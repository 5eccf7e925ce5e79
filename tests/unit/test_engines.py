"""Image tower engines: OpenVINO's embeddings against torch float32 (full-size ViT-B/32
architecture, random weights), per-lane towers, and how ``auto`` and ``openvino`` choose."""

import asyncio
from functools import partial

import numpy as np
import pytest
import torch

from classifiers import engines
from classifiers.errors import ModelLoadError
from classifiers.model import load_clip
from classifiers.preprocess import decode_image
from deployments.forward import ForwardLanes
from images import encode, photo_like

needs_openvino = pytest.mark.skipif(not engines.openvino_available(),
                                    reason="openvino is not installed (pip install '.[openvino]')")


def photos(spec, n: int = 4) -> np.ndarray:
    return np.stack([decode_image(encode(photo_like(320, 240, s), "JPEG"), spec) for s in range(n)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def base_clip_dir(tmp_path_factory):
    from classifiers.random_checkpoint import build_random_clip

    return str(build_random_clip(tmp_path_factory.mktemp("base") / "clip", size="base"))


@needs_openvino
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_openvino_embeddings_match_torch_float32_on_the_full_size_architecture(base_clip_dir, dtype):
    if dtype == "bfloat16" and "BF16" not in __import__("openvino").Core().get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16")
    reference_encoder = load_clip(base_clip_dir, "cpu", "float32", trace=False)
    pixels = photos(reference_encoder.image_spec)
    reference = reference_encoder.encode_images(pixels)
    encoder = load_clip(base_clip_dir, "cpu", dtype, trace=False)
    encoder.use_openvino(threads=torch.get_num_threads())
    assert encoder.info()["engine"] == "openvino"
    got = encoder.encode_images(pixels)
    lane = encoder.encode_images(pixels, tower=encoder.lane_tower(1))
    print(f"{dtype}: cosine to torch float32 min {cosines(got, reference).min():.6f}")
    assert cosines(got, reference).min() >= 0.999
    np.testing.assert_allclose(lane, got, atol=2e-2 if dtype == "bfloat16" else 1e-4)


@needs_openvino
def test_every_lane_runs_its_own_openvino_tower_and_auto_says_why(tiny_clip_dir):
    threads = torch.get_num_threads()
    try:
        forward = ForwardLanes(partial(load_clip, tiny_clip_dir, "cpu", "float32"), threads=2, lanes=2,
                               engine="openvino")
        pixels = photos(forward.encoder.image_spec, 5)
        reference = load_clip(tiny_clip_dir, "cpu", "float32", trace=False).encode_images(pixels)
        five = asyncio.run(forward.encode(pixels))
        assert forward.engine == "openvino"
        assert all(isinstance(lane.tower, engines.OpenVinoTower) and lane.tower.threads == 1
                   for lane in forward.lanes)
        assert cosines(five, reference).min() >= 0.999
        forward.shutdown()
        auto = ForwardLanes(partial(load_clip, tiny_clip_dir, "cpu", "float32"), threads=2, lanes=2, engine="auto")
        assert "measured" in auto.engine_reason
        assert [isinstance(lane.tower, engines.OpenVinoTower) for lane in auto.lanes] == [auto.engine == "openvino"] * 2
        assert isinstance(auto.encoder._image_tower, engines.OpenVinoTower) == (auto.lone_engine == "openvino")
        auto.shutdown()
    finally:
        torch.set_num_threads(threads)


def test_engine_choice_without_measuring():
    assert engines.choose("torch", "cpu", True) == ("torch", "asked for")
    with pytest.raises(ModelLoadError, match="engine must be one of"):
        engines.choose("tensorrt", "cpu", True)
    engine, why = engines.choose("auto", "cuda", True)
    assert engine == "torch" and ("CPU only" in why or "not installed" in why)
    engine, why = engines.choose("auto", "cpu", False)
    assert engine == "torch" and ("NaFlex" in why or "not installed" in why)
    with pytest.raises(ModelLoadError, match="engine openvino"):
        engines.choose("openvino", "cuda:0", True)
    assert engines.precision_of(torch.bfloat16) == "bf16" and engines.precision_of(torch.float32) == "f32"


def _lanes(tiny_clip_dir, engine):
    return ForwardLanes(partial(load_clip, tiny_clip_dir, "cpu", "float32"), threads=2, lanes=2, engine=engine)


def _on_torch(forward) -> bool:
    return (forward.encoder.engine == "torch"
            and not isinstance(forward.encoder._image_tower, engines.OpenVinoTower)
            and not any(isinstance(lane.tower, engines.OpenVinoTower) for lane in forward.lanes))


def test_auto_picks_an_engine_per_role():
    # (OpenVINO img/s, torch img/s, OpenVINO ms alone, torch ms alone)
    assert engines.auto_engines(113.0, 138.0, 18.9, 26.5, lanes=2) == ("torch", "openvino")  # measured so
    assert engines.auto_engines(120.0, 100.0, 40.0, 38.0, lanes=2) == ("openvino", "torch")
    assert engines.auto_engines(120.0, 100.0, 20.0, 30.0, lanes=2) == ("openvino", "openvino")
    assert engines.auto_engines(104.0, 100.0, 37.0, 40.0, lanes=2) == ("torch", "torch")  # within the margins
    # One lane: one tower serves both, so one engine.
    assert engines.auto_engines(113.0, 138.0, 18.9, 26.5, lanes=1) == ("torch", "torch")
    assert engines.auto_engines(97.0, 100.0, 30.0, 40.0, lanes=1) == ("openvino", "openvino")
    assert engines.auto_engines(97.0, 100.0, 35.0, 40.0, lanes=1) == ("torch", "torch")


@needs_openvino
@pytest.mark.parametrize("rates, alone, lanes_engine, lone_engine", [
    ([100.0, 50.0, 100.0, 60.0], [40.0, 20.0, 40.0, 20.0], "torch", "openvino"),  # slower loaded, quicker alone
    ([100.0, 120.0, 90.0, 110.0], [40.0, 40.0, 40.0, 40.0], "openvino", "torch"),  # faster loaded only
    ([100.0, 120.0, 90.0, 110.0], [40.0, 30.0, 45.0, 31.0], "openvino", "openvino"),
    ([100.0, 97.0, 95.0, 96.0], [40.0, 32.0, 34.0, 33.0], "torch", "torch"),  # alone, best of two: 32 vs 34
])
def test_auto_runs_each_role_on_its_faster_engine(tiny_clip_dir, monkeypatch, rates, alone, lanes_engine,
                                                  lone_engine):
    order = iter(rates)  # torch, OpenVINO, torch again, OpenVINO again
    monkeypatch.setattr(ForwardLanes, "_rate", lambda self, *args, **kwargs: next(order))
    lone = iter(alone)  # torch, OpenVINO, torch again, OpenVINO again
    monkeypatch.setattr(ForwardLanes, "_alone_ms", lambda self, *args, **kwargs: next(lone))
    threads = torch.get_num_threads()
    forward = _lanes(tiny_clip_dir, "auto")
    try:
        assert (forward.engine, forward.lone_engine) == (lanes_engine, lone_engine)
        assert f"OpenVINO {max(rates[1::2]):.1f}" in forward.engine_reason
        assert (f"one image on all threads: OpenVINO {min(alone[1::2]):.1f} ms, torch {min(alone[::2]):.1f} ms"
                in forward.engine_reason)
        towers = [lane.tower for lane in forward.lanes]
        assert [isinstance(t, engines.OpenVinoTower) for t in towers] == [lanes_engine == "openvino"] * 2
        whole = forward.encoder._image_tower  # the whole lane runs the encoder's default tower
        assert isinstance(whole, engines.OpenVinoTower) == (lone_engine == "openvino")
        # Every lane has a tower of its own (a torch trace, or a one-thread compile), not the whole lane's.
        assert towers[0] is not towers[1] and whole not in towers and None not in towers
        assert all(t.threads == 1 for t in towers if isinstance(t, engines.OpenVinoTower))
        assert not isinstance(whole, engines.OpenVinoTower) or whole.threads == 2
        assert forward.engines() == {"engine": lanes_engine, "lone_image_engine": lone_engine}
        # Every role serves: a lone image on the whole lane, a batch split over the lanes.
        pixels = photos(forward.encoder.image_spec, 3)
        reference = load_clip(tiny_clip_dir, "cpu", "float32", trace=False).encode_images(pixels)
        assert cosines(asyncio.run(forward.encode(pixels[:1])), reference[:1]).min() >= 0.999
        assert cosines(asyncio.run(forward.encode(pixels)), reference).min() >= 0.999
    finally:
        forward.shutdown()
        torch.set_num_threads(threads)


@needs_openvino
@pytest.mark.parametrize("rates, alone, chosen", [
    ([100.0, 50.0, 60.0], [40.0, 20.0, 40.0, 20.0], "torch"),  # one tower: far slower loaded wins over alone
    ([100.0, 97.0, 96.0], [40.0, 30.0, 45.0, 31.0], "openvino"),  # as fast loaded, a quarter quicker alone
])
def test_auto_with_one_lane_runs_one_engine(tiny_clip_dir, monkeypatch, rates, alone, chosen):
    order, lone = iter(rates), iter(alone)  # one lane: torch's rate is measured once
    monkeypatch.setattr(ForwardLanes, "_rate", lambda self, *args, **kwargs: next(order))
    monkeypatch.setattr(ForwardLanes, "_alone_ms", lambda self, *args, **kwargs: next(lone))
    threads = torch.get_num_threads()
    forward = ForwardLanes(partial(load_clip, tiny_clip_dir, "cpu", "float32"), threads=2, lanes=1, engine="auto")
    try:
        assert forward.engines() == {"engine": chosen, "lone_image_engine": chosen}
        assert forward.lanes == [forward.whole]
        assert isinstance(forward.encoder._image_tower, engines.OpenVinoTower) == (chosen == "openvino")
        assert asyncio.run(forward.encode(photos(forward.encoder.image_spec, 3))).shape[0] == 3
    finally:
        forward.shutdown()
        torch.set_num_threads(threads)


@needs_openvino
def test_a_failing_openvino_lane_leaves_torch_whole_or_one_clear_line(tiny_clip_dir, monkeypatch):
    from classifiers.model import ClipEncoder

    def broken(self, threads):
        if self.engine == "openvino":
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:1\nCheck 'x' failed\nno room")
        return self.traced_tower()

    monkeypatch.setattr(ClipEncoder, "lane_tower", broken)
    threads = torch.get_num_threads()
    try:
        forward = _lanes(tiny_clip_dir, "auto")
        assert forward.engine == forward.lone_engine == "torch"
        assert forward.engine_reason == "OpenVINO failed: RuntimeError: no room"
        assert _on_torch(forward)
        assert asyncio.run(forward.encode(photos(forward.encoder.image_spec, 3))).shape[0] == 3
        forward.shutdown()
        with pytest.raises(ModelLoadError, match=r"^engine openvino: RuntimeError: no room$"):
            _lanes(tiny_clip_dir, "openvino")
    finally:
        torch.set_num_threads(threads)


def test_the_launcher_refuses_openvino_on_a_gpu_in_one_line(tiny_clip_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "serve_config.yaml"
    config.write_text("applications:\n  - name: m\n    import_path: deployments.app:build_app\n"
                      f"    args: {{model: {tiny_clip_dir}, engine: openvino, device: cuda}}\n")
    result = subprocess.run([sys.executable, "-m", "deployments.launch", str(config), "--check-only"],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "engine openvino" in lines[0] and ("CPU only" in lines[0] or "not installed" in lines[0])

"""Engines for the image tower: torch (TorchScript, the default) or OpenVINO on CPU.

``engine: auto`` picks by measuring: where OpenVINO is installed, the device is a CPU and the
tower has a fixed input shape, both engines run batches of 16 on every forward lane at once (as
the replica will run them, ``deployments.forward``) and time one image on all threads (a lone
request), best of two each. The lanes run OpenVINO if it was ``AUTO_MARGIN`` faster loaded; lone
images (the whole lane) run it if it was ``LONE_MARGIN`` quicker alone (``auto_engines``), so a
replica can serve load on torch and lone images on OpenVINO; a replica with one lane has one
tower for both (``openvino_wins``). The choice and the figures are logged. Measured on a 2-vCPU
Xeon with AMX, random ViT-B/32, bf16 (cosine to float32 0.99995 both): one day OpenVINO was
quicker alone (batch-1 latency on two threads 19.6 against 26.9 ms) but slower with two
one-thread lanes at once (95 against 120 img/s at batch 16, even at 8). Another day (the same VM,
slower that hour) it was faster with both lanes at 16 (119.5 against 100.7 img/s) and quicker in
the service: 1024x768 c=1 p50 51-52 against 64-80 ms, c=32 50-52 against 47-48 img/s
(``bench.cpu_budget --arg engine=...``, two rounds). A third: torch 138 against 113 img/s loaded,
OpenVINO 18.9 against 26.5 ms alone.

OpenVINO runs the precision the encoder's dtype names (``bfloat16`` -> bf16, ``float32`` ->
f32); int8 is not offered: quantising needs calibration images, and its accuracy must be
checked with ``moderation evaluate`` on real weights.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

from classifiers.errors import ModelLoadError

logger = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "openvino")
AUTO_MARGIN = 1.05  # OpenVINO this much faster with every lane busy: ``auto`` runs the lanes on it
LONE_MARGIN = 0.9  # OpenVINO's time for a lone image at most this fraction of torch's: lone images run on it
SHARED_ALONE_MARGIN = 0.8  # one tower for both: OpenVINO within AUTO_MARGIN loaded and this much quicker alone


def openvino_wins(openvino_rate: float, torch_rate: float, openvino_alone_ms: float, torch_alone_ms: float) -> bool:
    """``auto``'s rule for a replica with one tower (one lane: loaded and lone images share it):
    OpenVINO if its images/s beat torch's by ``AUTO_MARGIN``, or came within it while a lone image
    took at most ``SHARED_ALONE_MARGIN`` of torch's time."""
    if openvino_rate >= AUTO_MARGIN * torch_rate:
        return True
    return openvino_rate * AUTO_MARGIN >= torch_rate and openvino_alone_ms <= SHARED_ALONE_MARGIN * torch_alone_ms


def auto_engines(openvino_rate: float, torch_rate: float, openvino_alone_ms: float, torch_alone_ms: float,
                 lanes: int) -> tuple[str, str]:
    """``auto``'s (lanes' engine, lone images' engine) from the four measurements.

    With two lanes the choices are separate: the lanes run batches under load, the whole lane
    (all threads) runs a lone image, and each can be the engine that is faster at its own job.
    Both measured ways on one 2-vCPU Xeon with AMX (bf16 ViT-B/32): torch 138 against OpenVINO
    113 img/s with both lanes at batch 16, OpenVINO 18.9 against torch 26.5 ms for a lone image.
    """
    if lanes == 1:
        engine = "openvino" if openvino_wins(openvino_rate, torch_rate, openvino_alone_ms, torch_alone_ms) else "torch"
        return engine, engine
    return ("openvino" if openvino_rate >= AUTO_MARGIN * torch_rate else "torch",
            "openvino" if openvino_alone_ms <= LONE_MARGIN * torch_alone_ms else "torch")


_PRECISION = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16"}


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoTower:
    """The image tower compiled by OpenVINO for ``threads`` threads, called like the torch
    tower (normalised pixels in, image embeddings out as a torch tensor). Holds one infer
    request: use it from one thread (each forward lane compiles its own)."""

    def __init__(self, model: Any, precision: str, threads: int) -> None:
        import openvino as ov

        self.precision, self.threads = precision, threads
        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Pinned, two lanes' one-thread towers landed on the same core: 50-66 img/s at
            # once against 106 for one two-thread tower (2-vCPU Xeon, ViT-B/32, batch 8-16).
            "ENABLE_CPU_PINNING": False,
        })
        self._request = compiled.create_infer_request()

    def __call__(self, pixel_values):
        import torch

        result = self._request.infer({0: pixel_values.float().numpy()})
        return torch.from_numpy(result[0].copy())


def convert_tower(eager_tower, image_size: int):
    """The torch image tower as an OpenVINO model with a dynamic batch (from a float32 copy,
    so inputs are float32 whatever the encoder's dtype)."""
    import openvino as ov
    import torch

    tower = copy.deepcopy(eager_tower).float().eval()
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # the tracer's notes on shape checks: not actionable here
        warnings.simplefilter("ignore")
        return ov.convert_model(tower, example_input=example, input=[(-1, 3, image_size, image_size)])


def precision_of(dtype) -> str:
    return _PRECISION.get(str(dtype), "f32")


def choose(requested: str, device: str, fixed_shape: bool) -> tuple[str, str]:
    """The engine to try and why, before any measuring (``auto`` still measures after)."""
    if requested not in ENGINES:
        raise ModelLoadError(f"engine must be one of {ENGINES}, got {requested!r}")
    if requested == "torch":
        return "torch", "asked for"
    problem = (None if openvino_available() else "the openvino package is not installed "
               "(pip install 'clip-moderation[openvino]')")
    if problem is None and not device.startswith("cpu"):
        problem = f"OpenVINO runs the CPU only, the model is on {device}"
    if problem is None and not fixed_shape:
        problem = "the image tower's input shape varies per image (SigLIP 2 NaFlex)"
    if problem is not None:
        if requested == "openvino":
            raise ModelLoadError(f"engine openvino: {problem}")
        return "torch", problem
    return "openvino", "asked for" if requested == "openvino" else "to be measured"


def one_line(exc: BaseException) -> str:
    """An exception as one line: OpenVINO's errors stack "Exception from src/..." lines with
    the useful text last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return f"{type(exc).__name__}: {(useful or lines or [''])[-1]}"[:300]

"""Loading a CLIP checkpoint through `transformers` and encoding texts and images with it."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np

from classifiers.errors import ModelLoadError
from classifiers.preprocess import ImageSpec

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
TEXT_BATCH = 256
# What a local checkpoint directory must hold (any one name of each group).
REQUIRED_FILES = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
     "pytorch_model.bin.index.json"),
    ("tokenizer.json", "vocab.json"),
    ("preprocessor_config.json",),
)

HOW_TO_FIX = (
    "Point the service at a local copy: download the checkpoint on a machine with internet "
    "(`hf download {hub_id} --local-dir clip`), copy the folder here, and set "
    "`args.model: /abs/path/to/clip` in serve_config.yaml or MODERATION_MODEL=/abs/path/to/clip."
)


def _looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(model))


def resolve_device(device: str) -> str:
    """``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU does bfloat16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, device: str):
    """``auto``: float16 on CUDA; bfloat16 on CPUs with native bf16 (about 2x float32, image
    embeddings within cosine 0.9999 of float32); float32 elsewhere."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _features(output):
    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    return output if hasattr(output, "shape") else output.pooler_output


class ClipEncoder:
    """A loaded CLIP model: L2-normalised text and image embeddings, and its logit scale."""

    def __init__(self, model, tokenizer, image_spec: ImageSpec, name: str, device: str, dtype):
        import torch

        self.model, self.tokenizer, self.image_spec = model, tokenizer, image_spec
        self.name, self.device, self.dtype = name, device, dtype
        self.logit_scale = float(model.logit_scale.exp().item())
        self.dim = int(model.config.projection_dim)
        self._mean = torch.tensor(image_spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(image_spec.std, device=device).view(1, 3, 1, 1) * 255.0
        self._eager_tower = self._image_tower = _image_tower(model)

    def traced_tower(self):
        """A new frozen TorchScript trace of the image tower, or None where tracing fails.

        Same weights and maths (cosine 0.99999 to eager), but one graph run in C++: batch-1
        forwards took half the time, and with a busy Python thread in the same process 8x
        less (the eager tower needs the GIL between every op; a Serve replica has such
        threads). Run it on the thread that traced it: on any other it ran 15-40 % slower
        (measured on a 2-core box), so each forward thread traces its own copy.
        """
        import torch

        example = torch.zeros(1, 3, self.image_spec.size, self.image_spec.size, device=self.device,
                              dtype=self.dtype)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.freeze(torch.jit.trace(self._eager_tower, example, check_trace=False))
                traced(example)
                traced(example.expand(2, -1, -1, -1).contiguous())  # batch size stays dynamic
        except Exception as exc:  # noqa: BLE001 - eager mode is always a correct fallback
            logger.warning("image tower tracing failed, staying eager: %s", exc)
            return None
        return traced

    def trace_image_tower(self) -> bool:
        """Make a traced tower (``traced_tower``) this encoder's default; False: stays eager."""
        traced = self.traced_tower()
        if traced is not None:
            self._image_tower = traced
        return traced is not None

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = self.tokenizer(
                    list(texts[start : start + TEXT_BATCH]), padding=True, truncation=True,
                    max_length=self.model.config.text_config.max_position_embeddings,
                    return_tensors="pt",
                ).to(self.device)
                features = _features(self.model.get_text_features(**tokens)).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_images(self, pixels: np.ndarray, tower=None) -> np.ndarray:
        """``pixels``: uint8 ``(n, size, size, 3)`` from ``decode_image``; ``tower``: one from
        ``traced_tower`` to run instead of this encoder's default."""
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
            batch = (batch.permute(0, 3, 1, 2).float() - self._mean) / self._std
            features = (self._image_tower if tower is None else tower)(batch.to(self.dtype))
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def _image_tower(model):
    """Normalised pixels to projected image embeddings, as a module (what gets traced)."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return _features(self.model.get_image_features(pixel_values=pixel_values))

    return ImageTower().eval()


def _image_spec(path_or_id: str) -> ImageSpec:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path_or_id)
    size = processor.crop_size
    size = size["height"] if isinstance(size, dict) else size.height
    return ImageSpec(size=int(size), mean=tuple(processor.image_mean), std=tuple(processor.image_std))


def _load_error(model: str, exc: BaseException) -> ModelLoadError:
    local = _looks_local(model)
    where = f"local directory {os.path.expanduser(model)!r}" if local else f"Hugging Face model {model!r}"
    detail = str(exc).splitlines()[0].rstrip(".") if str(exc) else ""
    return ModelLoadError(
        f"Could not load the CLIP checkpoint from the {where}: {type(exc).__name__}: {detail}. "
        + HOW_TO_FIX.format(hub_id=DEFAULT_MODEL if local else model)
    )


def check_model_available(model: str) -> None:
    """Raise ``ModelLoadError`` unless the checkpoint can be had: a local directory with a
    ``config.json``, or a hub id whose files are cached or downloadable. Cheap: one small file."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        missing = [
            " or ".join(names) for names in REQUIRED_FILES
            if not any(os.path.isfile(os.path.join(path, n)) for n in names)
        ]
        if missing:
            raise _load_error(model, FileNotFoundError(f"{path} lacks {', '.join(missing)}"))
        return
    if _looks_local(model):
        raise _load_error(model, FileNotFoundError(f"no such directory: {path}"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    try:
        hf_hub_download(model, "config.json")
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: one message
        raise _load_error(model, exc) from None


def load_clip(
    model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", trace: bool = True
) -> ClipEncoder:
    """Load a CLIP checkpoint (hub id or local directory) for inference.

    Raises ``ModelLoadError`` with a one-paragraph message on any failure to get the weights.
    """
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source = os.path.expanduser(model) if os.path.isdir(os.path.expanduser(model)) else model
    try:
        clip = CLIPModel.from_pretrained(source, dtype=torch_dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        spec = _image_spec(source)
    except OSError as exc:  # missing, unreadable or undownloadable files
        raise _load_error(model, exc) from None
    except Exception as exc:  # noqa: BLE001 - the files were there; the load itself failed
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"Could not load the CLIP checkpoint {model!r} on device {device!r} ({torch_dtype}): "
            f"{type(exc).__name__}: {detail}. Check `device`/`dtype` in serve_config.yaml and that "
            "the checkpoint is a CLIP model."
        ) from None
    encoder = ClipEncoder(clip, tokenizer, spec, name=model, device=device, dtype=torch_dtype)
    traced = trace and encoder.trace_image_tower()
    logger.info("loaded %s on %s (%s, image tower %s)", model, device, torch_dtype,
                "traced" if traced else "eager")
    return encoder

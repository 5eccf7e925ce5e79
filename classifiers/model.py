"""Loading a CLIP or SigLIP checkpoint and encoding texts and images with it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np

from classifiers.checkpoint import (
    DEFAULT_MODEL, Family, check_weights, family_of, image_spec_of, load_config,
    load_image_processor, load_tokenizer, source_of, unavailable, unusable,
)
from classifiers.errors import ModelLoadError
from classifiers.preprocess import ImageSpec
from classifiers.scoring import LogitRule

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "ClipEncoder", "load_clip", "logit_rule"]
TEXT_BATCH = 256


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


def logit_rule(model) -> LogitRule:
    """How this loaded model's scores are read: a model with a learnt ``logit_bias`` (SigLIP)
    was trained with a sigmoid per image-text pair, one without (CLIP) with a softmax."""
    bias = getattr(model, "logit_bias", None)
    scale = float(model.logit_scale.detach().float().exp().item())
    if bias is None:
        return LogitRule(scale=scale)
    return LogitRule(scale=scale, bias=float(bias.detach().float().reshape(-1)[0].item()), sigmoid=True)


def _embedding_dim(config) -> int:
    for owner, name in ((config, "projection_dim"), (config.text_config, "projection_size"),
                        (config.vision_config, "hidden_size")):
        if getattr(owner, name, None):
            return int(getattr(owner, name))
    raise ValueError("the config names no embedding size")


class ClipEncoder:
    """A loaded CLIP-family model (CLIP, SigLIP, SigLIP 2): L2-normalised text and image
    embeddings, and the rule that turns their cosines into scores (``logits``)."""

    def __init__(self, model, tokenizer, image_spec: ImageSpec, name: str, device: str, dtype,
                 family: Family | None = None, logits: LogitRule | None = None):
        import torch

        from classifiers.checkpoint import FAMILIES

        self.model, self.tokenizer, self.image_spec = model, tokenizer, image_spec
        self.name, self.device, self.dtype = name, device, dtype
        self.family = family or FAMILIES[model.config.model_type]
        self.logits = logits or logit_rule(model)
        self.dim = _embedding_dim(model.config)
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)
        mean = torch.tensor(image_spec.mean, device=device) / image_spec.rescale
        std = torch.tensor(image_spec.std, device=device) / image_spec.rescale
        self._mean, self._std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self._eager_tower = self._image_tower = _image_tower(model)
        # The default tower's engine, "torch" or "openvino" (use_openvino): in a replica, the whole
        # lane's; its forward lanes may run the other (deployments.forward.ForwardLanes.engines).
        self.engine = "torch"
        self._openvino_model = None

    @property
    def logit_scale(self) -> float:
        return self.logits.scale

    def info(self) -> dict:
        """What serves: family, checkpoint, architecture, preprocessing and scoring (plain types)."""
        spec = self.image_spec
        return {
            "family": self.family.name,
            "checkpoint": self.name,
            "architecture": type(self.model).__name__,
            "revision": getattr(self.model.config, "_commit_hash", None),
            "embedding_dim": self.dim,
            "preprocessing": spec.mode,
            "image_size": None if spec.mode == "patches" else spec.size,
            "max_patches": spec.max_patches if spec.mode == "patches" else None,
            "scoring": "sigmoid" if self.logits.sigmoid else "softmax",
            "logit_scale": round(self.logits.scale, 6),
            "logit_bias": round(self.logits.bias, 6) if self.logits.sigmoid else None,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "engine": self.engine,
        }

    def traced_tower(self):
        """A new frozen TorchScript trace of the image tower, or None where tracing fails or
        the input shape varies per image (SigLIP 2 NaFlex, which stays eager).

        Same weights and maths (cosine 0.99999 to eager), but one graph run in C++: batch-1
        forwards took half the time, and with a busy Python thread in the same process 8x
        less (the eager tower needs the GIL between every op; a Serve replica has such
        threads). Run it on the thread that traced it: on any other it ran 15-40 % slower
        (measured on a 2-core box), so each forward thread traces its own copy.
        """
        import torch

        if not self.image_spec.fixed_shape:
            return None
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

    def use_openvino(self, threads: int) -> None:
        """Run the default image tower on OpenVINO with ``threads`` threads (see
        ``classifiers.engines``); call it on the thread that will run the default tower.
        Raises ``ModelLoadError`` when the tower cannot be converted or compiled."""
        from classifiers import engines

        try:
            converted = engines.convert_tower(self._eager_tower, self.image_spec.size)
            tower = engines.OpenVinoTower(converted, engines.precision_of(self.dtype), threads)
        except Exception as exc:  # noqa: BLE001 - one clear line for the operator
            raise ModelLoadError(f"engine openvino could not compile the image tower of {self.name!r}: "
                                 f"{engines.one_line(exc)}") from None
        self._torch_tower = self._image_tower
        self.engine, self._openvino_model, self._image_tower = "openvino", converted, tower

    @property
    def torch_tower(self):
        """The default torch tower, also while OpenVINO is the default (kept for ``use_torch``)."""
        return self._torch_tower if self.engine == "openvino" else self._image_tower

    def use_torch(self) -> None:
        """Back to the torch tower this encoder had before ``use_openvino``."""
        if self.engine == "openvino":
            self.engine, self._openvino_model, self._image_tower = "torch", None, self._torch_tower

    def lane_tower(self, threads: int):
        """A tower of its own for a forward lane with ``threads`` threads, in this encoder's
        engine (None: the default, where a torch trace is not possible)."""
        if self.engine == "openvino":
            from classifiers import engines

            return engines.OpenVinoTower(self._openvino_model, engines.precision_of(self.dtype), threads)
        return self.traced_tower()

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
                    list(texts[start : start + TEXT_BATCH]), padding=self.family.text_padding,
                    truncation=True, max_length=self.max_text_tokens, return_tensors="pt",
                )
                inputs = {"input_ids": tokens["input_ids"].to(self.device)}
                if self.family.text_mask and "attention_mask" in tokens:
                    inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
                features = _features(self.model.get_text_features(**inputs)).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_images(self, pixels: np.ndarray | Sequence[np.ndarray], tower=None) -> np.ndarray:
        """``pixels``: uint8 images from ``decode_frames``, ``(n, h, w, 3)`` or a list of
        ``(h, w, 3)`` (NaFlex: shapes may differ); ``tower``: one from ``traced_tower`` to run
        instead of this encoder's default."""
        import torch

        with torch.inference_mode():
            if not self.image_spec.fixed_shape:
                features = self._encode_patches(pixels)
            else:
                batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(pixels)) if
                                         isinstance(pixels, (list, tuple)) else pixels))
                batch = batch.to(self.device, non_blocking=True)
                batch = (batch.permute(0, 3, 1, 2).float() - self._mean) / self._std
                features = (self._image_tower if tower is None else tower)(batch.to(self.dtype))
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def _encode_patches(self, images: Sequence[np.ndarray]):
        """SigLIP 2 NaFlex: each image cut into ``patch_size`` patches (row by row, each patch
        ``(p, p, 3)`` flattened, as transformers' processor does), padded to ``max_patches``
        with a mask, and its grid passed as ``spatial_shapes``."""
        import torch

        p, n = self.image_spec.patch_size, self.image_spec.max_patches
        values = torch.zeros(len(images), n, p * p * 3, device=self.device)
        mask = torch.zeros(len(images), n, dtype=torch.int32, device=self.device)
        shapes = torch.zeros(len(images), 2, dtype=torch.long, device=self.device)
        mean, std = self._mean.view(3), self._std.view(3)
        for i, image in enumerate(images):
            rows, cols = image.shape[0] // p, image.shape[1] // p
            x = (torch.from_numpy(np.ascontiguousarray(image)).to(self.device).float() - mean) / std
            x = x[: rows * p, : cols * p].reshape(rows, p, cols, p, 3).permute(0, 2, 1, 3, 4)
            values[i, : rows * cols] = x.reshape(rows * cols, p * p * 3)
            mask[i, : rows * cols] = 1
            shapes[i] = torch.tensor((rows, cols))
        return _features(self.model.get_image_features(
            pixel_values=values.to(self.dtype), pixel_attention_mask=mask, spatial_shapes=shapes))


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


def load_clip(
    model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", trace: bool = True
) -> ClipEncoder:
    """Load a CLIP or SigLIP checkpoint (hub id or local directory) for inference, through
    transformers' own loaders (``classifiers.checkpoint``).

    Raises ``ModelLoadError`` with a one-line message on any failure to get or use the weights.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    family = family_of(model, load_config(model))
    check_weights(model)
    spec = image_spec_of(load_image_processor(model), model)
    tokenizer = load_tokenizer(model)
    try:
        # Loaded in float32 and cast after the logit scale and bias are read: in bfloat16,
        # SigLIP's or CLIP's trained scale of 100 reads back as 98.9.
        loaded = AutoModel.from_pretrained(source_of(model), dtype="float32").eval()
        rule = logit_rule(loaded)
        loaded = loaded.to(device=device, dtype=torch_dtype)
    except OSError as exc:  # missing, unreadable or undownloadable weights
        raise unavailable(model, exc) from None
    except Exception as exc:  # noqa: BLE001 - the files were there; the load itself failed
        raise ModelLoadError(
            f"Could not load the checkpoint {model!r} on device {device!r} ({torch_dtype}): "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "Check `device`/`dtype` in serve_config.yaml and that the weights match the config."
        ) from None
    if not (hasattr(loaded, "get_text_features") and hasattr(loaded, "get_image_features")):
        raise unusable(model, f"{type(loaded).__name__} has no text and image towers")
    encoder = ClipEncoder(loaded, tokenizer, spec, name=model, device=device, dtype=torch_dtype,
                          family=family, logits=rule)
    traced = trace and encoder.trace_image_tower()
    logger.info("loaded %s (%s, %s) on %s (%s, image tower %s)", model, family.name,
                type(loaded).__name__, device, torch_dtype, "traced" if traced else "eager")
    return encoder

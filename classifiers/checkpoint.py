"""Finding, checking and loading a checkpoint's parts through transformers' own loaders.

Whatever layout transformers reads loads here: a hub id (downloaded or cached), a directory
with ``preprocessor_config.json`` or with the ``processor_config.json`` that
``CLIPProcessor.save_pretrained`` writes in transformers 5, safetensors (sharded or not) or
``pytorch_model.bin`` weights. Nothing here opens a config file itself: the image
preprocessing numbers come from the image processor transformers returns (``image_spec_of``).
Every failure is one ``ModelLoadError`` line that names the checkpoint and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from classifiers.errors import ModelLoadError
from classifiers.preprocess import ImageSpec

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

HOW_TO_FIX = (
    "Point the service at a local copy: download the checkpoint on a machine with internet "
    "(`hf download {hub_id} --local-dir clip`), copy the folder here, and set "
    "`args.model: /abs/path/to/clip` in serve_config.yaml or MODERATION_MODEL=/abs/path/to/clip."
)


@dataclass(frozen=True)
class Family:
    """A model family the service serves, and what its weights do not say about it.

    ``text_padding`` and ``text_mask`` are how the text tower was trained: SigLIP's pools the
    last position and saw every text padded to its full length, padding attended to (the pad
    token is its end token), so it gets exactly that; CLIP's pools its end token and masks
    padding. How scores are read (softmax or sigmoid) comes from the loaded model itself
    (``classifiers.model.logit_rule``), not from here.
    """

    name: str
    model_type: str  # transformers' config.model_type
    title: str
    text_padding: str  # "longest" or "max_length"
    text_mask: bool


FAMILIES = {
    family.model_type: family
    for family in (
        Family("clip", "clip", "CLIP (CLIPModel)", "longest", True),
        Family("siglip", "siglip", "SigLIP or fixed-resolution SigLIP 2 (SiglipModel)",
               "max_length", False),
        Family("siglip2", "siglip2", "SigLIP 2 NaFlex (Siglip2Model)", "max_length", False),
    )
}
SUPPORTED = ", ".join(f.title for f in FAMILIES.values())


def looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(model))


def source_of(model: str) -> str:
    """What to hand transformers: an expanded local directory, else the hub id."""
    path = os.path.expanduser(model)
    return path if os.path.isdir(path) else model


def _where(model: str) -> str:
    if looks_local(model):
        return f"the local directory {os.path.expanduser(model)!r}"
    return f"the Hugging Face model {model!r}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].rstrip('.')}" if text else type(exc).__name__


def unavailable(model: str, exc: BaseException) -> ModelLoadError:
    """The files cannot be had (missing, unreadable, not downloadable)."""
    hub_id = DEFAULT_MODEL if looks_local(model) else model
    return ModelLoadError(f"Could not load the checkpoint from {_where(model)}: {_first_line(exc)}. "
                          + HOW_TO_FIX.format(hub_id=hub_id))


FAMILY_HINT = (f"Supported: {SUPPORTED}, saved by transformers' save_pretrained or downloaded "
               "from the hub.")
DAMAGED_HINT = "Copy or download the checkpoint again (or save it again with save_pretrained)."


def unusable(model: str, why: str, hint: str = FAMILY_HINT) -> ModelLoadError:
    """The files are there but are not a checkpoint this service can serve."""
    where = _where(model)
    return ModelLoadError(f"{where[0].upper()}{where[1:]} is not a supported checkpoint: {why}. {hint}")


def load_config(model: str):
    """The checkpoint's transformers config (``config.json``; downloads only that file)."""
    from transformers import AutoConfig

    if looks_local(model) and not os.path.isdir(os.path.expanduser(model)):
        raise unavailable(model, FileNotFoundError(f"no such directory: {os.path.expanduser(model)}"))
    try:
        return AutoConfig.from_pretrained(source_of(model))
    except OSError as exc:
        raise unavailable(model, exc) from None
    except (ValueError, KeyError) as exc:  # a config.json transformers cannot read
        raise unusable(model, f"its config.json cannot be read ({_first_line(exc)})") from None


def family_of(model: str, config) -> Family:
    """The family of a loaded config, or a ``ModelLoadError`` saying what the checkpoint is."""
    kind = getattr(config, "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    arch = ", ".join(getattr(config, "architectures", None) or []) or str(kind)
    sees = hasattr(config, "vision_config") or hasattr(config, "num_channels")
    reads = hasattr(config, "text_config") or hasattr(config, "vocab_size")
    if sees and not reads:
        what = f"it is an image model ({kind!r}, {arch}) without a text tower to encode labels"
    elif reads and not sees:
        what = f"it is a text model ({kind!r}, {arch}) without an image tower"
    else:
        what = f"it is a {kind!r} model ({arch}), not a family this service knows how to score"
    raise unusable(model, what)


def check_weights(model: str) -> None:
    """A local checkpoint's weights are there and whole (safetensors headers cover the file)."""
    folder = Path(os.path.expanduser(model))
    if not folder.is_dir():
        return  # a hub id: its weights are fetched (or found in the cache) by the replicas
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise unusable(model, f"it has no weights ({' or '.join(WEIGHT_FILES)})", DAMAGED_HINT)
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards and "model.safetensors.index.json" in present:
        raise unusable(model, "model.safetensors.index.json names shards that are not there", DAMAGED_HINT)
    from safetensors import SafetensorError, safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), "pt"):
                pass  # reads and checks the header against the file's length: cheap
        except (SafetensorError, OSError) as exc:
            raise unusable(model, f"{shard.name} is damaged or truncated ({_first_line(exc)})",
                           DAMAGED_HINT) from None


def load_image_processor(model: str):
    from transformers import AutoImageProcessor

    try:
        # The PIL backend: only its numbers are read, and it needs no torchvision.
        return AutoImageProcessor.from_pretrained(source_of(model), backend="pil")
    except OSError as exc:
        raise unavailable(model, exc) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise unusable(model, f"its image processor cannot be loaded ({_first_line(exc)})") from None


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source_of(model))
    except OSError as exc:
        raise unavailable(model, exc) from None
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise unusable(model, f"its tokenizer cannot be loaded ({_first_line(exc)})") from None


def _size(value, key: str) -> int | None:
    got = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return int(got) if got else None


def _triple(value) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {values}")
    return tuple(values)  # type: ignore[return-value]


def image_spec_of(processor, model: str = "<processor>") -> ImageSpec:
    """The preprocessing numbers of a loaded image processor (CLIP, SigLIP, SigLIP 2 NaFlex)."""
    get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
    try:
        normal = dict(mean=_triple(get("image_mean")), std=_triple(get("image_std"))) \
            if get("do_normalize", True) else dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        common = dict(normal, resample=int(get("resample", 3)),
                      rescale=float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0)
        if not get("do_resize", True):
            raise ValueError("do_resize is off: images of every size would reach the model")
        if get("max_num_patches") and get("patch_size"):
            return ImageSpec(mode="patches", patch_size=int(get("patch_size")),
                             max_patches=int(get("max_num_patches")), **common)
        size, crop = get("size"), get("crop_size")
        if get("do_center_crop") and crop is not None:
            side, width = _size(crop, "height"), _size(crop, "width")
            if side is None or side != width:
                raise ValueError(f"only square crops are served, not {crop}")
            resize = _size(size, "shortest_edge") or side
            return ImageSpec(mode="crop", size=side, resize=resize, **common)
        height, width = _size(size, "height"), _size(size, "width")
        if height and height == width:
            return ImageSpec(mode="squash", size=height, **common)
        raise ValueError(f"resize to {size} without a square crop gives images of varying shape")
    except (TypeError, ValueError) as exc:
        raise unusable(model, f"its image processor ({type(processor).__name__}) is not one "
                              f"this service can match ({exc})") from None


def check_model_available(model: str) -> None:
    """Raise ``ModelLoadError`` unless the checkpoint can be served: its config names a
    supported family, its tokenizer and image processor load, and (for a local directory) its
    weights are there and whole. Cheap: small files and safetensors headers, no weights."""
    family_of(model, load_config(model))
    check_weights(model)
    image_spec_of(load_image_processor(model), model)
    load_tokenizer(model)

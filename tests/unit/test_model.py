"""The real loading code on a tiny random-weight checkpoint (no Ray, no network)."""

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPModel

from classifiers.errors import ModelLoadError
from classifiers.heads import build_head
from classifiers.checkpoint import check_model_available
from classifiers.model import load_clip
from classifiers.preprocess import decode_image
from classifiers.registry import BUILTIN_CLASSIFIERS
from images import encode, photo_like


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu", dtype="float32")


def test_loads_tokenizer_processor_spec_and_logit_scale(encoder, tiny_clip_dir):
    reference = CLIPModel.from_pretrained(tiny_clip_dir)
    assert encoder.image_spec.size == 32 and encoder.dim == 16
    assert encoder.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert encoder.device == "cpu" and encoder.dtype == torch.float32


def test_embeddings_are_l2_normalised(encoder):
    text = encoder.encode_text(["a photo of a cat.", "a dog", "x" * 500])  # long text truncates
    assert text.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    pixels = np.stack([decode_image(encode(photo_like(64, 48, s), "PNG"), encoder.image_spec)
                       for s in range(3)])
    images = encoder.encode_images(pixels)
    assert images.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)


def test_image_embedding_matches_transformers_with_its_own_processor(encoder, tiny_clip_dir):
    image = photo_like(96, 64, seed=3)
    ours = encoder.encode_images(decode_image(encode(image, "PNG"), encoder.image_spec)[None])[0]
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    with torch.inference_mode():
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        ref = model.get_image_features(pixel_values=pixel_values).pooler_output[0]
    ref = (ref / ref.norm()).numpy()
    assert float(ours @ ref) > 0.9999


def test_batching_does_not_change_embeddings(encoder):
    pixels = np.stack([decode_image(encode(photo_like(64, 64, s), "PNG"), encoder.image_spec)
                       for s in range(4)])
    together = encoder.encode_images(pixels)
    alone = np.concatenate([encoder.encode_images(p[None]) for p in pixels])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_builtin_heads_build_from_the_real_text_tower(encoder):
    for label_set in BUILTIN_CLASSIFIERS.values():
        head = build_head(label_set, encoder.encode_text)
        rows = len(label_set.labels) * (2 if label_set.kind == "attributes" else 1)
        assert head.matrix.shape == (rows, encoder.dim)


def test_missing_weights_fail_with_one_actionable_message(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_clip(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "MODERATION_MODEL" in message and "serve_config.yaml" in message
    assert "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        check_model_available(str(tmp_path / "empty"))


def test_check_model_available_accepts_a_saved_checkpoint(tiny_clip_dir):
    check_model_available(tiny_clip_dir)


def test_bfloat16_embeddings_stay_within_cosine_0999_of_float32(tiny_clip_dir):
    fp32 = load_clip(tiny_clip_dir, device="cpu", dtype="float32")
    bf16 = load_clip(tiny_clip_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    pixels = np.stack([decode_image(encode(photo_like(80, 60, s), "JPEG"), fp32.image_spec)
                       for s in range(8)])
    image_cos = (fp32.encode_images(pixels) * bf16.encode_images(pixels)).sum(axis=1)
    texts = ["a photo of a cat.", "explicit nudity", "a person wearing glasses"]
    text_cos = (fp32.encode_text(texts) * bf16.encode_text(texts)).sum(axis=1)
    assert image_cos.min() >= 0.999 and text_cos.min() >= 0.999


def test_auto_dtype_is_float16_on_cuda_and_bf16_only_where_the_cpu_has_it(monkeypatch):
    from classifiers import model as model_module

    assert model_module.resolve_dtype("auto", "cuda") == torch.float16
    assert model_module.resolve_dtype("float32", "cpu") == torch.float32
    monkeypatch.setattr(model_module, "cpu_has_fast_bf16", lambda: False)
    assert model_module.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(model_module, "cpu_has_fast_bf16", lambda: True)
    assert model_module.resolve_dtype("auto", "cpu") == torch.bfloat16


def test_traced_image_tower_matches_eager_at_every_batch_size(tiny_clip_dir):
    eager = load_clip(tiny_clip_dir, device="cpu", dtype="float32", trace=False)
    traced = load_clip(tiny_clip_dir, device="cpu", dtype="float32", trace=True)
    assert traced._image_tower is not eager._image_tower
    assert type(traced._image_tower).__name__ != "ImageTower"  # really a TorchScript module
    for n in (1, 3, 16):
        pixels = np.stack([decode_image(encode(photo_like(64, 48, s), "PNG"), eager.image_spec)
                           for s in range(n)])
        np.testing.assert_allclose(traced.encode_images(pixels), eager.encode_images(pixels), atol=1e-5)

"""The real loading code on a tiny random-weight checkpoint (no Ray, no network)."""

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPModel

from classifiers.errors import ModelLoadError
from classifiers.heads import build_head
from classifiers.model import check_model_available, load_clip
from classifiers.preprocess import decode_image
from classifiers.registry import BUILTIN_CLASSIFIERS
from images import encode, photo_like


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu")


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

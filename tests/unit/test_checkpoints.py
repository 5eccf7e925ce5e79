"""Every checkpoint layout and family transformers saves, through the service's own loader."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from classifiers.checkpoint import check_model_available, image_spec_of
from classifiers.errors import ModelLoadError
from classifiers.heads import Head
from classifiers.labels import Label, LabelSet
from classifiers.model import load_clip
from classifiers.preprocess import decode_image
from classifiers.random_checkpoint import FAMILIES, LAYOUTS, build_random_checkpoint
from classifiers.scoring import score
from images import encode, jpeg, photo_like

CASES = [(family, layout) for family in FAMILIES for layout in LAYOUTS]
EXPECTED = {  # family -> (model family served, preprocessing, scoring)
    "clip": ("clip", "crop", "softmax"),
    "siglip": ("siglip", "squash", "sigmoid"),
    "siglip2": ("siglip", "squash", "sigmoid"),  # fixed-resolution SigLIP 2 is a SiglipModel
    "siglip2-naflex": ("siglip2", "patches", "sigmoid"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {case: str(build_random_checkpoint(root / "-".join(case), family=case[0], layout=case[1]))
            for case in CASES}


@pytest.fixture(scope="module")
def encoders(checkpoints):
    return {case: load_clip(path, device="cpu", dtype="float32") for case, path in checkpoints.items()}


def reference_pixels(path: str, image) -> np.ndarray:
    """The checkpoint's own image processor: normalised pixels, channels last (or patches)."""
    processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    return processor(images=image, return_tensors="np")


def ours_normalised(encoder, pixels: np.ndarray) -> np.ndarray:
    spec = encoder.image_spec
    return (pixels.astype(np.float32) * spec.rescale - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_every_layout_loads_with_its_family_preprocessing_and_scoring(case, checkpoints, encoders):
    encoder = encoders[case]
    family, mode, scoring = EXPECTED[case[0]]
    info = encoder.info()
    assert (info["family"], info["preprocessing"], info["scoring"]) == (family, mode, scoring)
    assert info["checkpoint"] == checkpoints[case]
    model = AutoModel.from_pretrained(checkpoints[case])
    assert info["architecture"] == type(model).__name__
    assert encoder.logits.scale == pytest.approx(math.exp(float(model.logit_scale.detach())))
    if scoring == "sigmoid":
        assert encoder.logits.bias == pytest.approx(float(model.logit_bias.detach())) and encoder.logits.sigmoid
    else:
        assert encoder.logits.bias == 0.0 and not encoder.logits.sigmoid
    check_model_available(checkpoints[case])


@pytest.mark.parametrize("case", CASES, ids="-".join)
@pytest.mark.parametrize("size", [(96, 64), (50, 130), (32, 32)])
def test_fast_preprocessing_matches_the_checkpoints_own_processor(case, size, checkpoints, encoders):
    encoder, image = encoders[case], photo_like(*size, seed=sum(size))
    ours = decode_image(encode(image, "PNG"), encoder.image_spec)
    ref = reference_pixels(checkpoints[case], image)
    grey_level = encoder.image_spec.rescale / min(encoder.image_spec.std)
    if encoder.image_spec.mode == "patches":
        rows, cols = [int(v) for v in ref["spatial_shapes"][0]]
        p = encoder.image_spec.patch_size
        assert ours.shape == (rows * p, cols * p, 3)
        patches = ours_normalised(encoder, ours).reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4)
        theirs = ref["pixel_values"][0][: rows * cols]
        diff = np.abs(patches.reshape(rows * cols, -1) - theirs)
    else:
        theirs = ref["pixel_values"][0].transpose(1, 2, 0)
        assert ours.shape == theirs.shape
        diff = np.abs(ours_normalised(encoder, ours) - theirs)
    assert diff.max() <= 2 * grey_level + 1e-5 and diff.mean() < 0.5 * grey_level


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_embeddings_match_transformers_run_its_own_way(case, checkpoints, encoders):
    """Image: the checkpoint's processor and model. Text: padded as the family was trained
    (SigLIP: to 64 tokens, no mask; CLIP: to the longest, masked)."""
    encoder, path = encoders[case], checkpoints[case]
    model = AutoModel.from_pretrained(path).eval()
    image = photo_like(80, 60, seed=5)
    with torch.inference_mode():
        inputs = {k: torch.as_tensor(v) for k, v in reference_pixels(path, image).items()}
        ref = model.get_image_features(**inputs).pooler_output[0]
        texts = ["a photo of a cat.", "graphic gore"]
        tokenizer = AutoTokenizer.from_pretrained(path)
        if encoder.logits.sigmoid:
            tokens = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
            text_ref = model.get_text_features(input_ids=tokens["input_ids"]).pooler_output
        else:
            text_ref = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
    ours = encoder.encode_images([decode_image(encode(image, "PNG"), encoder.image_spec)])[0]
    assert float(ours @ (ref / ref.norm()).numpy()) > 0.9999
    text_ref = torch.nn.functional.normalize(text_ref, dim=-1).numpy()
    assert (encoder.encode_text(texts) * text_ref).sum(axis=1).min() > 0.9999


def test_naflex_images_of_different_shapes_batch_as_they_score_alone(encoders):
    encoder = encoders[("siglip2-naflex", "processor")]
    images = [decode_image(jpeg(w, h, seed=w), encoder.image_spec) for w, h in ((640, 480), (200, 600), (64, 64))]
    assert len({im.shape for im in images}) == 3
    together = encoder.encode_images(images)
    alone = np.concatenate([encoder.encode_images([im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert encoder.traced_tower() is None  # shapes vary per image: the tower stays eager


def test_sigmoid_models_score_attributes_on_their_own_logit_and_exclusive_by_softmax(encoders):
    rule = encoders[("siglip", "processor")].logits
    attrs = LabelSet(name="a", kind="attributes", labels=(Label("p", ("p",), ("not p",)),), unsafe=("p",))
    image = np.array([0.8, 0.6, 0.0], np.float32)
    result = score(Head(attrs, np.eye(2, 3, dtype=np.float32)), image, rule)
    assert result.scores["p"] == pytest.approx(1 / (1 + math.exp(-(rule.scale * 0.8 + rule.bias))), rel=1e-5)
    exclusive = LabelSet(name="e", kind="exclusive", labels=(Label("x", ("x",)), Label("y", ("y",))))
    scores = score(Head(exclusive, np.eye(2, 3, dtype=np.float32)), image, rule).scores
    assert scores["x"] == pytest.approx(1 / (1 + math.exp(-rule.scale * 0.2)), rel=1e-5)  # bias cancels


def test_image_spec_reads_the_processors_numbers_not_its_files(checkpoints):
    processor = AutoImageProcessor.from_pretrained(checkpoints[("clip", "processor")], backend="pil")
    processor.crop_size = {"height": 20, "width": 20}
    processor.size = {"shortest_edge": 24}
    processor.image_mean, processor.image_std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    spec = image_spec_of(processor)
    assert (spec.mode, spec.size, spec.resize, spec.mean, spec.std) == ("crop", 20, 24, (0.5,) * 3, (0.25,) * 3)
    image = photo_like(90, 60, seed=1)
    ours = decode_image(encode(image, "PNG"), spec).astype(np.float32) / 255
    theirs = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0) * 0.25 + 0.5
    assert ours.shape == (20, 20, 3) and np.abs(ours - theirs).max() <= 2 / 255 + 1e-5


def _one_line_refusal(path, *words):
    for check in (check_model_available, lambda p: load_clip(p, device="cpu", dtype="float32")):
        with pytest.raises(ModelLoadError) as info:
            check(str(path))
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message
        for word in words:
            assert word in message, message


def test_a_text_model_is_refused_in_one_line(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    _one_line_refusal(tmp_path, "not a supported checkpoint", "text model", "bert", "SigLIP")


def test_a_vit_without_a_text_tower_is_refused_in_one_line(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(tmp_path)
    _one_line_refusal(tmp_path, "without a text tower", "vit")


def test_truncated_or_missing_weights_are_refused_in_one_line(checkpoints, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoints[("clip", "processor")], damaged)
    weights = damaged / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    _one_line_refusal(damaged, "model.safetensors is damaged or truncated")
    weights.unlink()
    _one_line_refusal(damaged, "has no weights")


def test_a_broken_config_or_missing_directory_says_what_to_do(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints[("siglip", "processor")], broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    _one_line_refusal(broken, "config.json")
    _one_line_refusal(tmp_path / "nowhere", "MODERATION_MODEL", "no such directory")


def test_pytorch_bin_weights_load_too(checkpoints, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(checkpoints[("siglip", "preprocessor")], folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    check_model_available(str(folder))
    encoder = load_clip(str(folder), device="cpu", dtype="float32")
    assert encoder.info()["family"] == "siglip"

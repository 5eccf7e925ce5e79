"""Reading labelled image sets and checking their labels against the classifier."""

import json

import pytest

from classifiers.registry import BUILTIN_CLASSIFIERS
from evaluation.dataset import (
    DatasetError,
    Sample,
    load_samples,
    parse_label_map,
    relabel,
)
from evaluation.variants import BASELINE, load_variants


def test_folder_per_class_recurses_and_skips_non_images(tmp_path):
    for name in ("cat/a.jpg", "cat/deep/b.PNG", "dog/c.webp", "dog/notes.txt", ".hidden/d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert load_samples(tmp_path) == [
        Sample(str(tmp_path / "cat/a.jpg"), "cat"), Sample(str(tmp_path / "cat/deep/b.PNG"), "cat"),
        Sample(str(tmp_path / "dog/c.webp"), "dog")]


def test_csv_with_or_without_header_resolves_relative_paths(tmp_path):
    (tmp_path / "set.csv").write_text("path_or_url,label\nimg/a.jpg, cat\nhttps://x.test/b.jpg,dog\n")
    assert load_samples(tmp_path / "set.csv") == [
        Sample(str(tmp_path / "img/a.jpg"), "cat"), Sample("https://x.test/b.jpg", "dog")]
    (tmp_path / "bare.csv").write_text("/abs/a.jpg,cat\n")
    assert load_samples(tmp_path / "bare.csv") == [Sample("/abs/a.jpg", "cat")]
    (tmp_path / "bad.csv").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match="row 1"):
        load_samples(tmp_path / "bad.csv")


def test_jsonl_accepts_path_or_url_keys(tmp_path):
    lines = [{"path": "a.jpg", "label": "cat"}, {"url": "http://x.test/b.png", "label": "dog"}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert [s.label for s in load_samples(tmp_path / "set.jsonl")] == ["cat", "dog"]
    (tmp_path / "bad.jsonl").write_text('{"label": "cat"}\n')
    with pytest.raises(DatasetError, match="line 1"):
        load_samples(tmp_path / "bad.jsonl")


def test_missing_and_empty_datasets_say_so(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        load_samples(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no labelled images"):
        load_samples(tmp_path)


def test_labels_must_be_the_classifiers_and_can_be_mapped_or_dropped():
    samples = [Sample("a", "porn"), Sample("b", "neutral"), Sample("c", "drawings")]
    names = BUILTIN_CLASSIFIERS["nudity"].label_names
    with pytest.raises(DatasetError, match=r"\['drawings', 'neutral', 'porn'\].*--map"):
        relabel(samples, names)
    mapped = relabel(samples, names, parse_label_map(["porn=explicit", "neutral=none", "drawings=-"]))
    assert mapped == [Sample("a", "explicit"), Sample("b", "none")]
    with pytest.raises(DatasetError, match="not labels"):
        relabel(samples, names, {"porn": "nsfw"})
    with pytest.raises(DatasetError, match="DATASET_LABEL=CLASSIFIER_LABEL"):
        parse_label_map(["porn"])


def test_variants_file_changes_templates_or_wording_and_keeps_a_baseline(tmp_path):
    base = BUILTIN_CLASSIFIERS["nudity"]
    (tmp_path / "v.yaml").write_text(
        "variants:\n  - name: bare\n    templates: ['{}']\n"
        "  - name: short\n    prompts: {explicit: [nudity]}\n")
    variants = load_variants(tmp_path / "v.yaml", base)
    assert [v.name for v in variants] == [BASELINE, "bare", "short"]
    assert variants[1].label_set.templates == ("{}",) and variants[1].label_set.labels == base.labels
    assert variants[2].label_set.labels[0].prompts == ("nudity",)
    assert variants[2].label_set.labels[1:] == base.labels[1:]
    (tmp_path / "bad.yaml").write_text("variants:\n  - name: x\n    prompts: {nsfw: [a]}\n")
    with pytest.raises(DatasetError, match="nsfw"):
        load_variants(tmp_path / "bad.yaml", base)
    (tmp_path / "bad2.json").write_text('{"variants": [{"name": "x", "templates": ["no slot"]}]}')
    with pytest.raises(DatasetError, match="template"):
        load_variants(tmp_path / "bad2.json", base)

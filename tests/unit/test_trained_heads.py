"""Trained heads: training on generated images with the tiny checkpoint, head files, refusals,
and the registry's reloads (no Ray, no network)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from classifiers.fingerprint import fingerprint, similarity
from classifiers.model import load_clip
from classifiers.random_checkpoint import build_random_checkpoint
from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.scoring import score
from classifiers.trained import (
    HeadError, HeadStack, TrainedHead, build_label_set, head_path, load_head, load_heads_dir, save_head,
)
from deployments.head_registry import HeadRegistry
from evaluation.dataset import Sample, load_samples
from evaluation.fit import fit_linear, probabilities
from evaluation.synthetic import write_dataset
from evaluation.train import TrainOptions, train, zero_shot_prior

BUILTINS = frozenset(BUILTIN_CLASSIFIERS)


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("colours"), "colours", per_class=30)


@pytest.fixture(scope="module")
def trained(encoder, colours, tmp_path_factory):
    """A head trained on the colours set: its report and the folder it was written to."""
    root = tmp_path_factory.mktemp("trained")
    opts = TrainOptions(dataset=str(colours), name="colour_policy", head_file=head_path(root / "heads", "colour_policy"),
                        out_dir=root / "report", unsafe=("red",), target_precision=0.9, progress=False,
                        cache=str(root / "cache.sqlite"))
    return train(load_samples(colours), encoder, opts), root


def test_a_trained_head_learns_what_zero_shot_cannot(trained, encoder):
    report, root = trained
    metrics = report["training"]["metrics"]
    assert metrics["heldout_images"] == 18 and report["training"]["train_images"] == 72
    assert metrics["accuracy"] >= 0.95  # held-out images, scored by the saved head
    assert metrics["zero_shot_accuracy"] <= 0.6  # three labels: chance is 1/3
    rule = report["training"]["threshold_rule"]  # chosen on the training images only
    assert rule["rule"] == "target_precision" and rule["out_of_fold"]["precision"] >= 0.9
    assert metrics["at_threshold"]["threshold"] == rule["threshold"] == report["variants"]["baseline"]["threshold"]
    assert (root / "report" / "report.md").read_text().startswith("# Training: `colour_policy`")
    for plot in ("confusion_matrix.png", "pr_curve.png", "score_histogram.png"):
        assert (root / "report" / plot).stat().st_size > 1000
    head = load_head(root / "heads" / "colour_policy.head.safetensors", BUILTINS)
    head.check_model(fingerprint(encoder), encoder.name)
    assert head.meta["metrics"] == metrics and head.version == report["training"]["version"]


def test_training_again_reuses_the_embedding_cache(trained, encoder, colours, tmp_path):
    _, root = trained
    opts = TrainOptions(dataset=str(colours), name="again", head_file=tmp_path / "again.head.safetensors",
                        out_dir=tmp_path / "report", progress=False, cache=str(root / "cache.sqlite"))
    report = train(load_samples(colours), encoder, opts)
    assert report["cache"]["images_encoded"] == 0 and report["cache"]["images_from_cache"] == 90


def test_attribute_heads_learn_each_label_on_its_own(encoder, colours, tmp_path):
    # red and blue are attributes; green images have neither (dataset label "none")
    samples = [Sample(s.source, "none" if s.label == "green" else s.label) for s in load_samples(colours)]
    opts = TrainOptions(dataset="colours", name="tint", head_file=tmp_path / "tint.head.safetensors",
                        out_dir=tmp_path / "report", kind="attributes", unsafe=("red",), progress=False)
    report = train(samples, encoder, opts)
    per_label = report["training"]["metrics"]["per_label"]
    assert set(per_label) == {"blue", "red"}
    assert all(v["roc_auc"] >= 0.95 for v in per_label.values())
    head = load_head(tmp_path / "tint.head.safetensors")
    assert head.label_set.kind == "attributes"
    red = HeadStack({"tint": head}).score(["tint"], fingerprint(encoder)[0])["tint"]
    assert 0 <= red.scores["red"] <= 1 and set(red.scores) == {"blue", "red"}
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Training: `tint`")


@pytest.mark.parametrize("name", ["nudity", "face_attributes"])
def test_init_prior_reproduces_the_zero_shot_scores(encoder, name):
    """--init starts from the built-in's own logits: held there (a huge penalty), the head
    scores exactly as the zero-shot classifier does through the service's scoring."""
    label_set = BUILTIN_CLASSIFIERS[name]
    prior = zero_shot_prior(label_set, encoder)
    x = fingerprint(encoder)
    exclusive = label_set.kind == "exclusive"
    y = np.arange(len(x)) % len(label_set.labels) if exclusive else np.eye(len(label_set.labels), dtype=int)[
        np.arange(len(x)) % len(label_set.labels)]
    fit = fit_linear(x, y, exclusive, l2=1e6, prior=prior, labels=len(label_set.labels))
    from classifiers.heads import build_head

    zero_shot = build_head(label_set, encoder.encode_text)
    for row, p in zip(x, probabilities(fit, x, exclusive)):
        expected = score(zero_shot, row, encoder.logits).scores
        assert p == pytest.approx([expected[n] for n in label_set.label_names], abs=2e-3)


def _head(dim=8, name="policy", labels=("ok", "bad"), unsafe=("bad",), seed=0) -> TrainedHead:
    rng = np.random.default_rng(seed)
    fp = rng.normal(size=(8, dim)).astype(np.float32)
    return TrainedHead(build_label_set(name, "exclusive", list(labels), list(unsafe), 0.7),
                       rng.normal(size=(len(labels), dim)).astype(np.float32),
                       rng.normal(size=len(labels)).astype(np.float32), fp,
                       {"model": {"checkpoint": "m"}, "metrics": {"accuracy": 0.9}})


def test_a_head_file_round_trips(tmp_path):
    head = _head()
    saved = save_head(head, tmp_path / "policy.head.safetensors")
    loaded = load_head(tmp_path / "policy.head.safetensors")
    assert loaded.version == saved.version and len(saved.version) == 12
    assert loaded.label_set == head.label_set
    np.testing.assert_array_equal(loaded.weight, head.weight)
    np.testing.assert_array_equal(loaded.fingerprint, head.fingerprint)
    e = np.ones(8, np.float32) / np.sqrt(8)
    z = head.weight @ e + head.bias
    result = HeadStack({"policy": loaded}).score(["policy"], e)["policy"]
    assert list(result.scores.values()) == pytest.approx(np.exp(z) / np.exp(z).sum(), abs=1e-6)
    assert result.unsafe_score == result.scores["bad"] and result.flagged == (result.scores["bad"] >= 0.7)
    assert loaded.meta["metrics"] == {"accuracy": 0.9} and loaded.summary()["kind"] == "trained"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_damaged_and_invalid_files_are_refused_saying_why(tmp_path):
    good = save_head(_head(), tmp_path / "policy.head.safetensors")
    data = (tmp_path / "policy.head.safetensors").read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "not a whole safetensors file"),
        "garbage": (b"\x00" * 64, "not a whole safetensors file"),
    }
    for name, (content, why) in cases.items():
        path = tmp_path / f"{name}.head.safetensors"
        path.write_bytes(content)
        with pytest.raises(HeadError, match=why) as info:
            load_head(path)
        assert "\n" not in str(info.value)
    # a bad label set: an unsafe label that is not a label (the file written by hand)
    from safetensors.numpy import save

    doc = {**good.meta, "unsafe_labels": ["missing"]}
    (tmp_path / "policy.head.safetensors").write_bytes(save(
        {"weight": good.weight, "bias": good.bias, "fingerprint": good.fingerprint},
        metadata={"moderation_head": json.dumps(doc)}))
    with pytest.raises(HeadError, match="bad label set.*not labels"):
        load_head(tmp_path / "policy.head.safetensors")
    save_head(_head(name="nudity"), tmp_path / "nudity.head.safetensors")
    with pytest.raises(HeadError, match="taken by a built-in"):
        load_head(tmp_path / "nudity.head.safetensors", BUILTINS)
    save_head(_head(), tmp_path / "renamed.head.safetensors")
    with pytest.raises(HeadError, match="name the file policy.head.safetensors"):
        load_head(tmp_path / "renamed.head.safetensors")


def test_a_head_for_another_model_is_refused(tmp_path, encoder, tiny_clip_dir):
    other_dir = build_random_checkpoint(tmp_path / "other", seed=1)
    other = fingerprint(load_clip(str(other_dir), device="cpu", dtype="float32"))
    mine = fingerprint(encoder)
    assert similarity(mine, fingerprint(load_clip(tiny_clip_dir, device="cpu", dtype="bfloat16"))) > 0.99
    head = replace(_head(dim=mine.shape[1]), fingerprint=other)
    with pytest.raises(HeadError, match="embeddings differ"):
        head.check_model(mine, tiny_clip_dir)
    with pytest.raises(HeadError, match="has 16-d embeddings"):
        _head(dim=32).check_model(mine, tiny_clip_dir)


def test_registry_reloads_changes_and_keeps_the_last_good_version(tmp_path):
    fp = _head().fingerprint
    folder = tmp_path / "heads"
    first = save_head(_head(), head_path(folder, "policy"))
    registry = HeadRegistry(str(folder), fp, "m", BUILTINS, poll_s=0.05)
    try:
        assert registry.current.heads["policy"].version == first.version
        # a new head appears: the poller picks it up
        save_head(_head(name="second", seed=0), head_path(folder, "second"))
        deadline = time.monotonic() + 5
        while "second" not in registry.current.heads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert set(registry.current.heads) == {"policy", "second"}
        # the file of a served head is damaged: the head stays at its last good version
        head_path(folder, "policy").write_bytes(b"not a head")
        status = registry.reload()
        assert status.heads["policy"].version == first.version
        assert "still serving version" in status.refused["policy.head.safetensors"]
        # a head for another model is refused; removing a file stops serving it
        save_head(replace(_head(name="alien"), fingerprint=-fp), head_path(folder, "alien"))
        head_path(folder, "second").unlink()
        registry.reload()
        assert set(registry.current.heads) == {"policy"}
        assert "embeddings differ" in registry.status()["refused"]["alien.head.safetensors"]
    finally:
        registry.close()


def test_a_missing_heads_dir_is_reported_not_fatal(tmp_path):
    heads = load_heads_dir(tmp_path / "nope", np.ones((8, 4), np.float32), "m")
    assert not heads.heads and "does not exist" in heads.unreadable
    assert load_heads_dir(None, np.ones((8, 4)), "m").version == "none"


def test_a_stack_scores_each_head_as_a_numpy_reference_does():
    rng = np.random.default_rng(3)
    heads = {"a": _head(name="a", seed=1),
             "b": replace(_head(name="b", seed=2), label_set=build_label_set("b", "attributes", ["x", "y", "z"],
                                                                                  ["y"], 0.6)),
             "c": _head(name="c", seed=3, labels=("p", "q", "r", "s"), unsafe=("q", "r"))}
    heads["b"] = replace(heads["b"], weight=rng.normal(size=(3, 8)).astype(np.float32),
                         bias=rng.normal(size=3).astype(np.float32))
    frames = rng.normal(size=(3, 8)).astype(np.float32)  # an animation: three frames
    results = HeadStack(heads).score(["c", "a", "b"], frames)
    assert list(results) == ["c", "a", "b"]
    for name, head in heads.items():
        z = frames @ head.weight.T + head.bias
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) if head.label_set.kind == "exclusive" \
            else 1 / (1 + np.exp(-z))
        idx = list(head.label_set.unsafe_indices)
        unsafe = (p[:, idx].sum(axis=1) if head.label_set.kind == "exclusive" else p[:, idx].max(axis=1)).max()
        assert list(results[name].scores.values()) == pytest.approx(p.max(axis=0), abs=1e-6)
        assert results[name].unsafe_score == pytest.approx(unsafe, abs=1e-6)
        assert results[name].flagged == (results[name].unsafe_score >= head.label_set.threshold)
    assert HeadStack(heads).score(["a"], frames[0], {"a": 0.01})["a"].threshold == 0.01


def test_evaluate_scores_a_head_file_on_new_images_and_refuses_another_model(trained, tiny_clip_dir, tmp_path,
                                                                              capsys):
    from evaluation.cli import main as evaluate

    _, root = trained
    fresh = write_dataset(tmp_path / "fresh", "colours", per_class=8, seed=7)  # images training never saw
    head = str(root / "heads" / "colour_policy.head.safetensors")
    common = [str(fresh), "--head", head, "--cache", "none", "-q"]
    assert evaluate([*common, "--model", tiny_clip_dir, "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["classifier"] == "colour_policy" and report["variants"]["baseline"]["accuracy"] >= 0.9
    other = build_random_checkpoint(tmp_path / "other", seed=1)
    assert evaluate([*common, "--model", str(other), "--out", str(tmp_path / "r2")]) == 2
    assert "embeddings differ" in capsys.readouterr().err


def test_train_cli_starts_from_a_builtin_and_says_what_is_wrong_in_one_line(colours, tiny_clip_dir, tmp_path,
                                                                             capsys):
    from evaluation.train_cli import main as train_cli

    common = [str(colours), "--model", tiny_clip_dir, "--heads-dir", str(tmp_path / "heads"), "--cache", "none"]
    maps = ["--map", "red=explicit", "--map", "green=suggestive", "--map", "blue=none"]
    assert train_cli([*common, "--name", "my_nudity", "--init", "nudity", *maps, "--out", str(tmp_path / "r")]) == 0
    assert "my_nudity: held-out accuracy" in capsys.readouterr().out
    head = load_head(tmp_path / "heads" / "my_nudity.head.safetensors")
    assert head.label_set.label_names == ("explicit", "suggestive", "none") and head.label_set.unsafe == ("explicit",)
    assert head.meta["training"]["init"] == "nudity"
    for argv, message in (([*common, "--name", "x", "--init", "nudity"], "are not labels of the head"),
                          ([*common, "--name", "nudity"], "taken by a built-in"),
                          ([*common, "--name", "Bad Name"], "use 1-64 of a-z"),
                          ([*common, "--name", "x", "--init", "nope"], "not a built-in")):
        assert train_cli([*argv, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("moderation train: ")


def test_a_folder_that_cannot_be_listed_keeps_the_heads_served(tmp_path):
    fp = _head().fingerprint
    folder = tmp_path / "heads"
    save_head(_head(), head_path(folder, "policy"))
    registry = HeadRegistry(str(folder), fp, "m", BUILTINS)
    folder.rename(tmp_path / "away")  # a remount, or a folder swapped by two renames
    assert set(registry.reload().heads) == {"policy"}
    assert "does not exist" in registry.status()["refused"]["(directory)"]
    (tmp_path / "away").rename(folder)
    assert set(registry.reload().heads) == {"policy"} and registry.status()["refused"] == {}


def test_odd_files_are_refused_never_raised(tmp_path):
    from safetensors.numpy import save

    good = save_head(_head(), tmp_path / "policy.head.safetensors")
    assert (tmp_path / "policy.head.safetensors").stat().st_mode & 0o777 == 0o644  # other users' replicas
    cases = {"nullmodel": {**good.meta, "name": "nullmodel", "model": None},
             "listmetrics": {**good.meta, "name": "listmetrics", "metrics": [1, 2]}}
    for name, doc in cases.items():
        (tmp_path / f"{name}.head.safetensors").write_bytes(save(
            {"weight": good.weight, "bias": good.bias, "fingerprint": good.fingerprint},
            metadata={"moderation_head": json.dumps(doc)}))
    save_head(replace(_head(name="huge"), weight=np.full((2, 8), 3e38, np.float32)), tmp_path / "huge.head.safetensors")
    heads = load_heads_dir(tmp_path, good.fingerprint, "m")
    assert set(heads.heads) == {"policy"}
    assert "is not an object" in heads.refused["nullmodel.head.safetensors"]
    assert "is not an object" in heads.refused["listmetrics.head.safetensors"]
    assert "weights beyond" in heads.refused["huge.head.safetensors"]
    with pytest.raises(HeadError, match="use 1-64"):
        build_label_set("ok\n", "exclusive", ["a", "b"], [], 0.5)


def test_attribute_heads_hold_out_images_of_every_label(encoder, colours, tmp_path):
    from evaluation.fit import split_holdout_multilabel

    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.03, 0.02]).astype(int)  # rare labels, many combinations
    train_idx, held_idx = split_holdout_multilabel(y, 0.2)
    assert len(set(train_idx) | set(held_idx)) == 200 and not set(train_idx) & set(held_idx)
    for label in range(6):
        assert y[held_idx, label].sum() >= 1 and y[train_idx, label].sum() >= 1
    assert 0.15 <= len(held_idx) / 200 <= 0.3


def test_a_label_whose_images_all_fail_is_refused_not_dropped(encoder, colours, tmp_path):
    from evaluation.dataset import DatasetError

    samples = load_samples(colours)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(30):
        (broken / f"{i}.png").write_bytes(b"not a png")
    samples = [s for s in samples if s.label != "green"] + [Sample(str(broken / f"{i}.png"), "green") for i in range(30)]
    opts = TrainOptions(dataset="x", name="x", head_file=tmp_path / "x.head.safetensors", out_dir=tmp_path / "r",
                        progress=False)
    with pytest.raises(DatasetError, match="short: \\['green'\\]"):
        train(samples, encoder, opts)
    assert not (tmp_path / "x.head.safetensors").exists()


def test_the_embedding_cache_tells_checkpoints_at_the_same_path_apart(tmp_path):
    from evaluation.backends import model_identity

    path = tmp_path / "model"
    build_random_checkpoint(path, seed=0)
    first = model_identity(load_clip(str(path), device="cpu", dtype="float32"), 1, True, 1000)
    build_random_checkpoint(path, seed=1)  # same architecture, same file sizes, other weights
    assert model_identity(load_clip(str(path), device="cpu", dtype="float32"), 1, True, 1000) != first

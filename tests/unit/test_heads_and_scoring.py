import zlib

import numpy as np
import pytest

from classifiers.heads import HeadCache, build_head
from classifiers.labels import Label, LabelSet
from classifiers.scoring import LogitRule, label_scores, score, softmax


class FakeTextEncoder:
    """Deterministic embeddings per text, normalised; records every call."""

    dim = 8

    def __init__(self):
        self.calls = []

    def vector(self, text: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])


EXCLUSIVE = LabelSet(
    name="ex", kind="exclusive", templates=("a photo of {}.", "a picture of {}."),
    labels=(Label("bad", ("bad thing", "worse thing")), Label("ok", ("fine thing",))),
    unsafe=("bad",), threshold=0.5,
)
ATTRS = LabelSet(
    name="at", kind="attributes", templates=("a photo of {}.",),
    labels=(Label("p", ("p",), ("not p",)), Label("q", ("q",), ("not q",))),
    unsafe=("q",), threshold=0.8,
)


def unit(v):
    return v / np.linalg.norm(v)


def test_head_rows_are_normalised_means_over_prompts_and_templates():
    enc = FakeTextEncoder()
    head = build_head(EXCLUSIVE, enc)
    texts = ["a photo of bad thing.", "a picture of bad thing.",
             "a photo of worse thing.", "a picture of worse thing."]
    expected_bad = unit(np.mean([enc.vector(t) for t in texts], axis=0))
    assert head.matrix.shape == (2, enc.dim)
    np.testing.assert_allclose(head.matrix[0], expected_bad, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(head.matrix, axis=1), 1.0, atol=1e-6)
    assert len(enc.calls) == 1  # every prompt encoded in one call


def test_attribute_heads_interleave_label_and_negation():
    enc = FakeTextEncoder()
    head = build_head(ATTRS, enc)
    assert head.matrix.shape == (4, enc.dim)
    np.testing.assert_allclose(head.matrix[1], enc.vector("a photo of not p."), atol=1e-6)
    np.testing.assert_allclose(head.matrix[2], enc.vector("a photo of q."), atol=1e-6)


def test_exclusive_scores_are_softmax_of_scaled_cosines():
    head = build_head(EXCLUSIVE, FakeTextEncoder())
    image = unit(head.matrix[0] + 0.2 * head.matrix[1])
    probs = label_scores(head, image, LogitRule(100.0))
    np.testing.assert_allclose(probs, softmax(100.0 * head.matrix @ image), atol=1e-6)
    assert probs.sum() == pytest.approx(1.0)
    result = score(head, image, LogitRule(100.0))
    assert result.top_label == "bad" and result.flagged
    assert result.unsafe_score == pytest.approx(probs[0], abs=1e-6)


def test_attribute_scores_do_not_depend_on_other_attributes():
    enc = FakeTextEncoder()
    both = build_head(ATTRS, enc)
    only_p = build_head(LabelSet(name="at", kind="attributes", templates=("a photo of {}.",),
                                 labels=(ATTRS.labels[0],)), enc)
    image = unit(np.ones(enc.dim, np.float32))
    p_alone = label_scores(only_p, image, LogitRule(50.0))[0]
    p_with_q = label_scores(both, image, LogitRule(50.0))[0]
    assert p_alone == pytest.approx(p_with_q, rel=1e-5)
    cos = both.matrix @ image
    assert p_alone == pytest.approx(1 / (1 + np.exp(-50.0 * (cos[0] - cos[1]))), rel=1e-5)


def test_attribute_unsafe_score_is_the_max_and_threshold_decides():
    enc = FakeTextEncoder()
    head = build_head(ATTRS, enc)
    image = unit(head.matrix[2] - head.matrix[3])  # towards "q", away from "not q"
    result = score(head, image, LogitRule(2.0))
    assert 0.5 < result.scores["q"] < 0.99 and result.unsafe_score == result.scores["q"]
    assert result.unsafe_score == max(result.scores[u] for u in ATTRS.unsafe)
    assert score(head, image, LogitRule(2.0), threshold=result.unsafe_score).flagged
    assert not score(head, image, LogitRule(2.0), threshold=result.unsafe_score + 1e-3).flagged


def test_threshold_boundary_and_no_unsafe_labels_never_flag():
    head = build_head(EXCLUSIVE, FakeTextEncoder())
    image = unit(head.matrix[0] + head.matrix[1])
    result = score(head, image, LogitRule(10.0))
    assert score(head, image, LogitRule(10.0), threshold=result.unsafe_score).flagged
    assert not score(head, image, LogitRule(10.0), threshold=min(1.0, result.unsafe_score + 1e-3)).flagged
    safe_only = build_head(LabelSet(name="s", kind="exclusive", labels=EXCLUSIVE.labels), FakeTextEncoder())
    assert not score(safe_only, image, LogitRule(10.0), threshold=0.01).flagged


def test_head_cache_is_bounded_lru():
    cache = HeadCache(max_entries=2)
    a, b, c = (("a", "x"), ("b", "x"), ("c", "x"))
    cache.put(a, np.zeros(1))
    cache.put(b, np.zeros(1))
    assert cache.get(a) is not None  # a is now most recent
    cache.put(c, np.zeros(1))
    assert len(cache) == 2 and cache.get(b) is None and cache.get(a) is not None

"""Request parsing helpers, schemas and the pure response builder."""

import base64
import json

import pytest
from pydantic import ValidationError

from classifiers.errors import ModerationError
from classifiers.results import Classification, ClassifierResult
from classifiers.schemas import ClassifyBatchResponse, ClassifyJsonRequest, ClassifyResponse
from deployments.parsing import _decode_batch_json, _form_list, decode_base64
from deployments.responses import as_moderation_error


def test_json_request_needs_exactly_one_image_source():
    ClassifyJsonRequest(url="https://example.com/a.jpg")
    ClassifyJsonRequest(image_base64="aGk=")
    for bad in ({}, {"url": "https://e.com/a.jpg", "image_base64": "aGk="}):
        with pytest.raises(ValidationError, match="exactly one"):
            ClassifyJsonRequest(**bad)


@pytest.mark.parametrize(
    "extra",
    [{"labels": ["one"]}, {"labels": [str(i) for i in range(101)]}, {"bogus": 1},
     {"threshold": 0}, {"classifiers": [], "labels": None}, {"unsafe_labels": ["x"]},
     {"threshold": 0.3}, {"url": ""}],
)
def test_json_request_rejects_bad_options(extra):
    with pytest.raises(ValidationError):
        ClassifyJsonRequest(**{"url": "https://example.com/a.jpg", **extra})


def test_base64_strict_with_data_url_prefix_and_size_cap():
    raw = b"\x89PNG fake bytes"
    encoded = base64.b64encode(raw).decode()
    assert decode_base64(encoded, 100) == raw
    assert decode_base64("data:image/png;base64," + encoded[:8] + "\n" + encoded[8:], 100) == raw
    with pytest.raises(ModerationError) as info:
        decode_base64("not base64!!", 100)
    assert info.value.code == "invalid_request"
    with pytest.raises(ModerationError) as info:
        decode_base64(base64.b64encode(b"x" * 200).decode(), 100)
    assert info.value.code == "image_too_large"


def test_form_lists_accept_repeats_json_and_commas():
    assert _form_list(["a", "b"]) == ["a", "b"]
    assert _form_list(['["a, with comma", "b"]']) == ["a, with comma", "b"]
    assert _form_list(["nudity, gore"]) == ["nudity", "gore"]
    for bad in ('[{"a": 1}, "b"]', "[1, 2]", "[not json"):
        with pytest.raises(ModerationError):
            _form_list([bad])


def test_response_is_a_faithful_view_of_the_classification():
    result = ClassifierResult(
        name="nudity", kind="exclusive", scores={"explicit": 0.7, "none": 0.3},
        top_label="explicit", top_score=0.7, unsafe_labels=("explicit",), unsafe_score=0.7,
        threshold=0.5, flagged=True,
    )
    classification = Classification(model="m", results=(result,), decode_ms=1.5, inference_ms=9.0)
    response = ClassifyResponse.from_classification(classification, "rid", 12.345)
    assert isinstance(response, ClassifyResponse)
    body = response.model_dump()
    assert body["flagged"] is True and body["request_id"] == "rid" and body["model"] == "m"
    assert body["results"]["nudity"]["scores"] == {"explicit": 0.7, "none": 0.3}
    assert body["timing"] == {"total_ms": 12.35, "decode_ms": 1.5, "inference_ms": 9.0, "batch_size": 1}


def test_batch_json_keeps_a_bad_image_as_its_own_error_and_refuses_too_many():
    good = base64.b64encode(b"some image bytes").decode()
    body = {"images": [{"image_base64": good, "id": "a"}, {"image_base64": "%%%", "id": "b"},
                       {"url": "https://example.com/c.jpg"},
                       {"image_base64": base64.b64encode(b"x" * 200).decode()}],
            "classifiers": ["nudity"]}
    parsed = _decode_batch_json(json.dumps(body).encode(), max_bytes=100, max_images=4)
    assert [e.id for e in parsed.entries] == ["a", "b", None, None]
    assert parsed.entries[0].data == b"some image bytes" and parsed.entries[2].url == "https://example.com/c.jpg"
    assert [e.error and e.error.code for e in parsed.entries] == [None, "invalid_request", None, "image_too_large"]
    assert parsed.model_kwargs["classifiers"] == ["nudity"]
    with pytest.raises(ModerationError, match="at most 3"):
        _decode_batch_json(json.dumps(body).encode(), max_bytes=100, max_images=3)
    for bad in ({"images": []}, {"images": [{"url": "https://e.com/a", "image_base64": good}]},
                {"images": [{"url": "https://e.com/a"}], "classifiers": ["no such name!"]}):
        with pytest.raises(ModerationError):
            _decode_batch_json(json.dumps(bad).encode(), max_bytes=100, max_images=4)


def test_a_huge_images_list_is_refused_at_once():
    import time

    body = json.dumps({"images": [{}] * 100_000}).encode()
    start = time.perf_counter()
    with pytest.raises(ModerationError) as info:
        _decode_batch_json(body, max_bytes=100, max_images=32)
    assert info.value.code == "invalid_request"
    assert time.perf_counter() - start < 1.0  # the list's length is checked before its items


def test_batch_response_keeps_order_ids_and_per_image_errors():
    result = ClassifierResult(
        name="gore", kind="exclusive", scores={"gore": 0.9, "none": 0.1}, top_label="gore",
        top_score=0.9, unsafe_labels=("gore",), unsafe_score=0.9, threshold=0.5, flagged=True,
    )
    ok = Classification(model="m", results=(result,), decode_ms=2.0, inference_ms=8.0, batch_size=3)
    outcomes = [ModerationError("image_decode_error", "cannot decode"), ok]
    response = ClassifyBatchResponse.from_outcomes(outcomes, ["x", None], "rid", 20.0).model_dump()
    assert response["model"] == "m" and response["flagged"] is True and response["errors"] == 1
    first, second = response["items"]
    assert first == {"index": 0, "id": "x", "flagged": None, "action": None, "results": None, "matches": None,
                     "hashes": None, "cached": None, "faces": None, "policies": None, "timing": None,
                     "error": {"code": "image_decode_error", "message": "cannot decode", "status": 422}}
    assert second["index"] == 1 and second["results"]["gore"]["flagged"] is True
    assert second["timing"] == {"total_ms": 10.0, "decode_ms": 2.0, "inference_ms": 8.0, "batch_size": 3}
    empty = ClassifyBatchResponse.from_outcomes([outcomes[0]], [None], "rid", 1.0)
    assert empty.model is None and empty.flagged is False


def test_errors_keep_their_code_through_wrapping_and_pickling():
    import pickle

    error = ModerationError("fetch_timeout", "slow")
    assert pickle.loads(pickle.dumps(error)).code == "fetch_timeout"
    wrapped = RuntimeError("remote failure")
    wrapped.cause = error
    assert as_moderation_error(wrapped).code == "fetch_timeout"
    assert as_moderation_error(ValueError("bug")).code == "internal_error"
    with pytest.raises(ValueError):
        ModerationError("not_a_code", "x")

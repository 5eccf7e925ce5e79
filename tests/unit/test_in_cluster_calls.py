"""How ``InClusterClient`` calls the model, with fake handles behind the same interface: which
handle a call takes (by value up to ``BY_VALUE_MAX_BYTES`` of images), an answer too large for a
gRPC message asked for again by reference, the service's errors as the ``ModerationAPIError``
an HTTP caller gets, and the per-image calls to a replica of an older version."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc.aio import AioRpcError
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, RayServeException, RequestCancelledError

from classifiers.errors import ModerationError
from clients.errors import ModerationAPIError
from clients.in_cluster import InClusterClient
from deployments.model_calls import BY_VALUE_MAX_BYTES
from fake_handles import FakeHandle, FakeResponse, calls_in, rpc_error


def fake_client(by_value: list, by_reference: list):
    log: list = []
    client = InClusterClient.__new__(InClusterClient)
    client._by_reference = FakeHandle("reference", by_reference, log)
    client._by_value = FakeHandle("value", by_value, log)
    return client, log


def answer(client, method: str, payload, asynchronous: bool):
    options = (None, None, (), None)
    if asynchronous:
        return asyncio.run(client._answer(method, payload, options))
    return client._result(method, payload, options)


def sent(log: list) -> list[str]:
    return [entry[0] for entry in calls_in(log)]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_calls_that_fit_go_by_value_and_larger_ones_by_reference(asynchronous):
    client, log = fake_client(by_value=["small", "array", "batch"], by_reference=["large", "large batch"])
    assert answer(client, "try_classify", b"x" * BY_VALUE_MAX_BYTES, asynchronous) == "small"
    assert answer(client, "try_classify", b"x" * (BY_VALUE_MAX_BYTES + 1), asynchronous) == "large"
    assert answer(client, "try_classify", np.zeros(BY_VALUE_MAX_BYTES, np.uint8), asynchronous) == "array"
    half = b"x" * (BY_VALUE_MAX_BYTES // 2)
    assert answer(client, "try_classify_many", [half, half], asynchronous) == "batch"
    assert answer(client, "try_classify_many", [half, half, b"x"], asynchronous) == "large batch"
    assert sent(log) == ["value", "reference", "value", "value", "reference"]


@pytest.mark.parametrize("by_value", [True, False])
def test_the_constructor_asks_for_each_way_by_name(monkeypatch, by_value):
    asked = []

    class Handle:
        def options(self, **options):
            asked.append(options)
            return SimpleNamespace(by_reference=options["_by_reference"])

    monkeypatch.setattr("ray.serve.get_deployment_handle", lambda name, app_name: Handle())
    client = InClusterClient("moderation", by_value=by_value)
    assert client._by_reference.by_reference is True
    assert client._by_value.by_reference is (not by_value)
    assert asked == ([{"_by_reference": True}, {"_by_reference": False}] if by_value else [{"_by_reference": True}])


def test_by_value_off_sends_every_call_by_reference():
    log: list = []
    client = InClusterClient.__new__(InClusterClient)
    client._by_reference = client._by_value = FakeHandle("reference", ["a"], log)
    assert answer(client, "try_classify", b"x", False) == "a" and sent(log) == ["reference"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_answer_too_large_for_grpc_is_asked_for_again_by_reference(asynchronous):
    client, log = fake_client(by_value=[rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)], by_reference=[["a", "b"]])
    assert answer(client, "try_classify_many", [b"x", b"y"], asynchronous) == ["a", "b"]
    assert sent(log) == ["value", "reference"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_too_large_by_reference_is_not_asked_again(asynchronous):
    client, log = fake_client(by_value=[], by_reference=[rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)])
    with pytest.raises(AioRpcError):
        answer(client, "try_classify", b"x" * (BY_VALUE_MAX_BYTES + 1), asynchronous)
    assert sent(log) == ["reference"]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("failure", [rpc_error(grpc.StatusCode.CANCELLED), rpc_error(grpc.StatusCode.ABORTED),
                                     ActorUnavailableError("gone", b"\0" * 16), ActorDiedError(),
                                     asyncio.CancelledError(), RequestCancelledError("r")])
def test_a_replica_that_died_or_stopped_is_a_retryable_503(failure, asynchronous):
    """By value, a replica that stops sends its own cancellation back: neither a blocking caller
    nor an async one that is not being cancelled asked for it."""
    client, log = fake_client(by_value=[failure], by_reference=[])
    with pytest.raises(ModerationAPIError) as raised:
        answer(client, "try_classify", b"x", asynchronous)
    assert (raised.value.status, raised.value.code) == (503, "model_unavailable") and sent(log) == ["value"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_full_queue_is_a_retryable_503_overloaded(asynchronous):
    client, _ = fake_client(by_value=[BackPressureError(num_queued_requests=128, max_queued_requests=128)],
                            by_reference=[])
    with pytest.raises(ModerationAPIError) as raised:
        answer(client, "try_classify", b"x", asynchronous)
    assert (raised.value.status, raised.value.code) == (503, "overloaded")


def test_a_caller_that_is_cancelled_cancels_its_call_and_is_cancelled():
    responses = []

    class Slow(FakeResponse):
        def __await__(self):
            return asyncio.sleep(30).__await__()

    class Handle:
        def __getattr__(self, method):
            def remote(*args):
                responses.append(Slow(None, [], "value"))
                return responses[-1]

            return SimpleNamespace(remote=remote)

    client = InClusterClient.__new__(InClusterClient)
    client._by_value, client._by_reference = Handle(), Handle()

    async def scenario():
        task = asyncio.ensure_future(client._answer("try_classify", b"x", (None, None, (), None)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(responses) == 1 and responses[0].cancelled


@pytest.mark.parametrize("asynchronous", [False, True])
def test_other_failures_are_raised_as_they_are(asynchronous):
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT)
    client, _ = fake_client(by_value=[failure], by_reference=[])
    with pytest.raises(AioRpcError) as raised:
        answer(client, "try_classify", b"x", asynchronous)
    assert raised.value is failure and raised.value.__cause__ is None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_older_replica_gets_every_image_sent_at_once_and_each_fails_alone(asynchronous):
    older = RayServeException("Tried to call a method 'try_classify_many' that does not exist.")
    good = SimpleNamespace(code="ok")  # what _response turns into a ClassifyResponse is not under test here
    client, log = fake_client(by_value=[older, good, ActorDiedError(), ModerationError("unsupported_media_type", "no")],
                              by_reference=[])

    def run():
        import clients.in_cluster as module

        original = module._item
        module._item = lambda result, start: result  # the outcomes themselves, in order
        try:
            if asynchronous:
                return asyncio.run(client.aclassify_batch([b"a", b"b", b"c"]))
            return client.classify_batch([b"a", b"b", b"c"])
        finally:
            module._item = original

    outcomes = run()
    assert outcomes[0] is good
    assert isinstance(outcomes[1], ModerationAPIError) and outcomes[1].code == "model_unavailable"
    assert isinstance(outcomes[2], ModerationAPIError) and (outcomes[2].status, outcomes[2].code) == (
        415, "unsupported_media_type")  # a replica's error raised, not returned: the same error as over HTTP
    assert [entry[:2] for entry in calls_in(log)] == [("value", "try_classify_many")] + [("value", "try_classify")] * 3
    if not asynchronous:  # every per-image call sent before the first answer is awaited
        assert [entry[0] for entry in log[2:]] == ["value", "value", "value", "result", "result", "result"]


def test_images_are_counted_in_bytes_sent_pixels_included():
    from deployments.model_calls import payload_bytes

    arrays = [np.zeros((768, 1024, 3), np.uint8)] * 2
    assert payload_bytes(arrays) == 2 * 768 * 1024 * 3 > BY_VALUE_MAX_BYTES
    assert payload_bytes([b"abc", np.zeros(5, np.uint8)]) == 8
    with pytest.raises(TypeError):
        payload_bytes("photo.jpg")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_failed_batch_call_is_not_sent_again_image_by_image(asynchronous):
    """Only a replica without ``try_classify_many`` gets a call per image: back pressure on a batch
    must not become one call per image."""
    full = BackPressureError(num_queued_requests=128, max_queued_requests=128)
    client, log = fake_client(by_value=[full], by_reference=[])
    with pytest.raises(ModerationAPIError) as raised:
        if asynchronous:
            asyncio.run(client.aclassify_batch([b"a", b"b"]))
        else:
            client.classify_batch([b"a", b"b"])
    assert raised.value.code == "overloaded" and isinstance(raised.value.__cause__, BackPressureError)
    assert sent(log) == ["value"]

"""How ``InClusterClient`` calls the model, with fake handles behind the same interface: which
handle a call takes (by value up to ``BY_VALUE_MAX_BYTES`` of images), an answer too large for a
gRPC message asked for again by reference, and a replica that died or stopped as the same 503
``model_unavailable`` an HTTP caller gets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc.aio import AioRpcError, Metadata
from ray.exceptions import ActorDiedError

from clients.errors import ModerationAPIError
from clients.in_cluster import InClusterClient
from deployments.responses import BY_VALUE_MAX_BYTES


def rpc_error(code: grpc.StatusCode) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), f"{code.name} from the fake")


class FakeResponse:
    """Like a ``DeploymentResponse``: ``result()`` and ``await`` answer ``outcome`` or raise it."""

    def __init__(self, outcome) -> None:
        self.outcome, self.cancelled = outcome, False

    def result(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def __await__(self):
        if False:
            yield
        return self.result()

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """``handle.<method>.remote(payload, *options)`` records the call and answers the next outcome."""

    def __init__(self, name: str, outcomes: list, calls: list) -> None:
        self.name, self.outcomes, self.calls = name, outcomes, calls

    def __getattr__(self, method: str):
        def remote(payload, *options):
            self.calls.append((self.name, method))
            return FakeResponse(self.outcomes.pop(0))

        return SimpleNamespace(remote=remote)


def fake_client(by_value: list, by_reference: list):
    calls: list = []
    client = InClusterClient.__new__(InClusterClient)
    client._handle = FakeHandle("reference", by_reference, calls)
    client._by_value = FakeHandle("value", by_value, calls)
    return client, calls


def answer(client, method: str, payload, asynchronous: bool):
    options = (None, None, (), None)
    if asynchronous:
        return asyncio.run(client._answer(method, payload, options))
    return client._result(method, payload, options)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_calls_that_fit_go_by_value_and_larger_ones_by_reference(asynchronous):
    client, calls = fake_client(by_value=["small", "array", "batch"], by_reference=["large", "large batch"])
    assert answer(client, "try_classify", b"x" * BY_VALUE_MAX_BYTES, asynchronous) == "small"
    assert answer(client, "try_classify", b"x" * (BY_VALUE_MAX_BYTES + 1), asynchronous) == "large"
    assert answer(client, "try_classify", np.zeros(BY_VALUE_MAX_BYTES, np.uint8), asynchronous) == "array"
    half = b"x" * (BY_VALUE_MAX_BYTES // 2)
    assert answer(client, "try_classify_many", [half, half], asynchronous) == "batch"
    assert answer(client, "try_classify_many", [half, half, b"x"], asynchronous) == "large batch"
    assert [name for name, _ in calls] == ["value", "reference", "value", "value", "reference"]


def test_by_value_off_sends_every_call_by_reference():
    calls: list = []
    client = InClusterClient.__new__(InClusterClient)
    client._handle = client._by_value = FakeHandle("reference", ["a"], calls)
    assert answer(client, "try_classify", b"x", False) == "a" and calls == [("reference", "try_classify")]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_answer_too_large_for_grpc_is_asked_for_again_by_reference(asynchronous):
    client, calls = fake_client(by_value=[rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)], by_reference=[["a", "b"]])
    assert answer(client, "try_classify_many", [b"x", b"y"], asynchronous) == ["a", "b"]
    assert calls == [("value", "try_classify_many"), ("reference", "try_classify_many")]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("failure", [rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.CANCELLED),
                                     rpc_error(grpc.StatusCode.ABORTED), ActorDiedError()])
def test_a_replica_that_died_or_stopped_is_a_retryable_503(failure, asynchronous):
    client, calls = fake_client(by_value=[failure], by_reference=[])
    with pytest.raises(ModerationAPIError) as raised:
        answer(client, "try_classify", b"x", asynchronous)
    assert (raised.value.status, raised.value.code) == (503, "model_unavailable") and len(calls) == 1


def test_the_replicas_own_cancellation_sent_back_by_value_is_a_503_not_the_callers():
    client, _ = fake_client(by_value=[asyncio.CancelledError()], by_reference=[])
    with pytest.raises(ModerationAPIError) as raised:
        answer(client, "try_classify", b"x", True)
    assert raised.value.code == "model_unavailable"


@pytest.mark.parametrize("asynchronous", [False, True])
def test_other_failures_are_raised_as_they_are(asynchronous):
    client, _ = fake_client(by_value=[rpc_error(grpc.StatusCode.INVALID_ARGUMENT)], by_reference=[])
    with pytest.raises(AioRpcError):
        answer(client, "try_classify", b"x", asynchronous)

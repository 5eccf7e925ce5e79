"""How the ingress calls the model (``Ingress._call_model`` and ``_call``), with fake handles
behind the same interface: which handle a call takes, an answer too large for a gRPC message
asked for again by reference, and the failures of a call by value as the service's codes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from classifiers.errors import ModerationError
from deployments.ingress import Ingress
from deployments.model_calls import BY_VALUE_MAX_BYTES, too_large_for_grpc
from deployments.responses import as_moderation_error
from fake_handles import FakeHandle, FakeResponse, calls_in, rpc_error

IngressClass = Ingress.func_or_class


def fake_ingress(by_value: list, by_reference: list):
    calls: list = []
    ingress = SimpleNamespace(settings=SimpleNamespace(request_timeout_s=5), wait_limit_s=1.0,
                              model=FakeHandle("reference", by_reference, calls),
                              model_by_value=FakeHandle("value", by_value, calls))
    ingress._call = lambda *args, **kwargs: IngressClass._call(ingress, *args, **kwargs)
    return ingress, calls


def call_model(ingress, size: int, method: str = "try_classify", many: bool = False):
    return asyncio.run(IngressClass._call_model(ingress, method, b"image", size, {"classifiers": None}, many=many))


def test_uploads_that_fit_go_by_value_and_larger_ones_by_reference():
    ingress, calls = fake_ingress(by_value=["small"], by_reference=["large"])
    assert call_model(ingress, BY_VALUE_MAX_BYTES) == "small"
    assert call_model(ingress, BY_VALUE_MAX_BYTES + 1) == "large"
    assert [name for name, _, _ in calls_in(calls)] == ["value", "reference"]


def test_an_answer_too_large_for_grpc_is_asked_for_again_by_reference():
    ingress, calls = fake_ingress(by_value=[rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)],
                                  by_reference=[["a", "b"]])
    assert call_model(ingress, 1000, "try_classify_many", many=True) == ["a", "b"]
    assert calls_in(calls) == [("value", "try_classify_many", b"image"), ("reference", "try_classify_many", b"image")]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED])
def test_a_replica_that_stops_under_a_call_by_value_is_a_retryable_503(code):
    ingress, calls = fake_ingress(by_value=[rpc_error(code)], by_reference=[])
    with pytest.raises(ModerationError) as raised:
        call_model(ingress, 10)
    assert raised.value.code == "model_unavailable" and len(calls_in(calls)) == 1


def test_the_replicas_own_cancellation_sent_back_by_value_is_a_503_not_the_callers():
    ingress, _ = fake_ingress(by_value=[asyncio.CancelledError()], by_reference=[])
    with pytest.raises(ModerationError) as raised:
        call_model(ingress, 10)
    assert raised.value.code == "model_unavailable"


def test_a_caller_that_leaves_still_cancels_its_call():
    responses = []

    class Slow(FakeResponse):
        def __await__(self):
            return asyncio.sleep(30).__await__()

    async def scenario():
        ingress = SimpleNamespace(settings=SimpleNamespace(request_timeout_s=60))
        response = Slow(None, [], "value")
        responses.append(response)
        task = asyncio.ensure_future(IngressClass._call(ingress, response))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert responses[0].cancelled


def test_grpc_codes_as_the_services_errors():
    assert too_large_for_grpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert not too_large_for_grpc(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not too_large_for_grpc(RuntimeError("RESOURCE_EXHAUSTED"))
    assert as_moderation_error(rpc_error(grpc.StatusCode.CANCELLED)).code == "model_unavailable"
    assert as_moderation_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT)).code == "internal_error"


class OptionsHandle:
    """A handle whose ``options(**kw)`` returns a handle that remembers them."""

    def __init__(self, options: dict | None = None) -> None:
        self.asked = options

    def options(self, **options):
        return OptionsHandle(options)


@pytest.mark.parametrize("by_value", [True, False])
def test_the_ingress_asks_for_each_way_by_name(by_value):
    """By reference named too: ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` would make by value the default,
    and a URL's call, which carries the fetcher's response, must go by reference."""
    from deployments.settings import IngressSettings

    user_class = IngressClass.__mro__[1]  # under serve.ingress's ASGI wrapper
    ingress = object.__new__(user_class)
    user_class.__init__(ingress, OptionsHandle(), OptionsHandle(), IngressSettings(uploads_by_value=by_value))
    assert ingress.model.asked == ingress.fetcher.asked == {"_by_reference": True}
    assert ingress.model_by_value.asked == {"_by_reference": not by_value}
    assert ingress.wait_limit_s == 2 * IngressSettings().queue_deadline_ms / 1000

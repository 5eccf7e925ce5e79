"""Admission at the ingress (Little's law on the completion rate) and buffered metric counts."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from deployments.admission import Admission, AdmissionGate
from deployments.metrics import BufferedCounter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bound_is_min_inflight_until_the_rate_is_known_then_rate_times_deadline():
    clock = Clock()
    admission = Admission(queue_deadline_s=0.5, min_inflight=4, clock=clock)
    assert [admission.try_enter() for _ in range(5)] == [True] * 4 + [False]
    for _ in range(4):  # four done in 0.02 s: too few to trust a rate
        clock.now += 0.005
        admission.leave(classified=1)
    assert admission.limit() == 4
    for _ in range(500):  # 200 completions/s, steadily, for longer than the window
        admission.try_enter()
        clock.now += 0.005
        admission.leave(classified=1)
    assert admission.rate() == pytest.approx(200, rel=0.05)
    assert admission.limit() == pytest.approx(100, abs=2)  # 200/s x 0.5 s
    assert admission.retry_after_s() == 1
    clock.now += 3  # nothing completed for longer than the window: back to the floor
    assert admission.limit() == 4


def test_a_multi_image_request_takes_a_place_per_image_and_counts_each_answer():
    clock = Clock()
    admission = Admission(queue_deadline_s=0.5, min_inflight=8, clock=clock)
    assert admission.try_enter(6) and admission.inflight == 6
    assert admission.try_enter(6) and admission.inflight == 12  # room was left: not refused for size
    assert not admission.try_enter(1)  # now full
    clock.now += 0.1
    admission.leave(6, classified=6)
    admission.leave(6, classified=6)
    assert admission.inflight == 0 and admission.rate() == pytest.approx(12 / 2.0)  # over the 2 s window


def test_failed_requests_leave_without_counting_as_service():
    clock = Clock()
    admission = Admission(queue_deadline_s=0.5, min_inflight=2, clock=clock)
    for _ in range(50):
        assert admission.try_enter()
        clock.now += 0.001
        admission.leave(classified=0)
    assert admission.inflight == 0 and admission.rate() == 0


def test_the_gate_sheds_classify_while_full_before_reading_the_body():
    app = FastAPI()
    app.add_middleware(AdmissionGate)
    app.state.admission = Admission(queue_deadline_s=0.5, min_inflight=1)
    bodies_read = []

    @app.post("/v1/classify")
    async def classify(request: Request):
        bodies_read.append(len(await request.body()))
        return {"ok": True}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    with TestClient(app) as client:
        app.state.admission.inflight = 1  # every place taken
        shed = client.post("/v1/classify", content=b"x" * 1000)
        assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
        assert shed.json()["error"]["code"] == "overloaded" and bodies_read == []
        assert client.get("/healthz").status_code == 200  # other routes are never gated
        app.state.admission.inflight = 0
        assert client.post("/v1/classify", content=b"x" * 10).status_code == 200
        assert bodies_read == [10]  # the route takes a place itself, once the body is in


class FakeCounter:
    def __init__(self) -> None:
        self.calls = []

    def inc(self, value=1.0, tags=None):
        self.calls.append((value, tags))


def test_a_buffered_counter_hands_ray_one_sum_per_tag_set_a_second():
    fake = FakeCounter()
    counter = BufferedCounter(fake)

    async def main():
        for _ in range(100):
            counter.inc(tags={"code": "overloaded"})
        counter.inc(2, tags={"code": "invalid_request"})
        assert fake.calls == []  # nothing recorded on the request path
        await asyncio.sleep(counter.FLUSH_S + 0.2)

    asyncio.run(main())
    assert sorted(fake.calls, key=lambda call: call[0]) == [(2, {"code": "invalid_request"}), (100, {"code": "overloaded"})]
    counter.inc(tags={"code": "x"})  # no event loop in this thread: recorded at once
    assert fake.calls[-1] == (1, {"code": "x"})

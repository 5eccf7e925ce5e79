"""Forward lanes: which thread runs which batch, per-thread torch thread counts, and the real
encoder giving the same embeddings whichever way a batch is split."""

import asyncio
import os
import threading
from functools import partial

import numpy as np
import pytest
import torch

from classifiers.model import load_clip
from classifiers.preprocess import decode_image
from deployments.forward import ForwardLanes, default_lanes, split_threads
from images import encode, photo_like


class RecordingEncoder:
    """The two methods ForwardLanes uses; records the thread and tower of each call, and blocks
    while ``hold`` is clear so a test can keep a lane busy."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, int]] = []
        self.hold = threading.Event()
        self.hold.set()

    def lane_tower(self, threads: int) -> str:
        return f"tower of {threading.current_thread().name}"

    def encode_images(self, pixels: np.ndarray, tower=None) -> np.ndarray:
        self.calls.append((threading.current_thread().name, tower, len(pixels)))
        assert self.hold.wait(10)
        return pixels[:, :1].astype(np.float32)


@pytest.fixture
def fake():
    threads = torch.get_num_threads()
    encoder = RecordingEncoder()
    forward = ForwardLanes(lambda: encoder, threads=2, lanes=2)
    yield encoder, forward
    encoder.hold.set()
    forward.shutdown()
    torch.set_num_threads(threads)  # ForwardLanes sets the calling thread's count


async def all_idle(forward: ForwardLanes) -> None:
    for _ in range(200):
        if len(forward._idle) == len(forward.lanes):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"lanes still busy: {len(forward._idle)} of {len(forward.lanes)} idle")


def ids(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1)


def test_thread_shares_and_defaults():
    assert split_threads(2, 2) == [1, 1]
    assert split_threads(3, 2) == [2, 1]
    assert split_threads(8, 2) == [4, 4]
    assert split_threads(1, 1) == [1]
    assert ForwardLanes(RecordingEncoder, threads=1, lanes=2).layout == "1 threads"  # capped
    assert default_lanes("cpu", 2) == 2
    assert default_lanes("cpu", 1) == 1
    assert default_lanes("cuda", 8) == 1
    assert default_lanes("cuda:1", 8) == 1
    with pytest.raises(ValueError):
        ForwardLanes(RecordingEncoder, threads=2, lanes=3)


def test_each_lane_thread_keeps_its_own_torch_thread_count(fake):
    _, forward = fake
    counts = [lane.submit(torch.get_num_threads).result() for lane in [forward.whole, *forward.lanes]]
    assert counts == [2, 1, 1]
    assert forward.layout == "1 + 1 threads"


def test_lane_threads_run_at_the_niceness_asked_for_and_the_caller_keeps_its_own():
    own = os.nice(0)
    forward = ForwardLanes(RecordingEncoder, threads=2, lanes=2, nice=5)
    try:
        niceness = [lane.submit(os.nice, 0).result() for lane in [forward.whole, *forward.lanes]]
    finally:
        forward.shutdown()
    assert niceness == [min(19, own + 5)] * 3
    assert os.nice(0) == own


def test_a_lone_image_runs_on_all_threads_and_a_batch_is_split_over_the_lanes(fake):
    encoder, forward = fake

    async def scenario():
        one = await forward.encode(ids(1))
        five = await forward.encode(ids(5))
        return one, five

    one, five = asyncio.run(scenario())
    assert one.ravel().tolist() == [0]
    assert five.ravel().tolist() == [0, 1, 2, 3, 4]  # parts come back in order
    assert encoder.calls[0] == ("forward_0", None, 1)
    assert sorted(encoder.calls[1:]) == [
        ("forward-0_0", "tower of forward-0_0", 3), ("forward-1_0", "tower of forward-1_0", 2),
    ]


def test_with_a_lane_busy_batches_go_whole_to_the_idle_one_and_then_wait(fake):
    encoder, forward = fake

    async def scenario():
        encoder.hold.clear()
        busy = asyncio.ensure_future(forward.call(encoder.encode_images, ids(1, 100), "held"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(forward.encode(ids(3)))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(forward.wait_ready())
        await asyncio.sleep(0.05)
        assert not waiting.done() and not busy.done() and not second.done()
        encoder.hold.set()
        await asyncio.wait_for(asyncio.gather(busy, second, waiting), 10)
        return second.result()

    assert asyncio.run(scenario()).ravel().tolist() == [0, 1, 2]
    lanes = {name for name, tower, n in encoder.calls}
    assert lanes == {"forward-0_0", "forward-1_0"}  # never the whole lane while a lane was busy
    assert [n for _, tower, n in encoder.calls if tower != "held"] == [3]


def test_a_cancelled_caller_frees_its_lane_only_when_the_thread_is_done(fake):
    encoder, forward = fake

    async def scenario():
        encoder.hold.clear()
        first = asyncio.ensure_future(forward.encode(ids(2)))  # both lanes
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.05)
        ready = asyncio.ensure_future(forward.wait_ready())
        await asyncio.sleep(0.05)
        assert not ready.done()  # the threads still compute
        encoder.hold.set()
        await asyncio.wait_for(ready, 10)
        await all_idle(forward)  # both lanes come back, not just one

    asyncio.run(scenario())


def test_an_error_on_a_lane_reaches_the_caller_and_frees_the_lanes(fake):
    encoder, forward = fake
    working, failures = encoder.encode_images, [RuntimeError("out of memory")]

    def broken(pixels, tower=None):
        if len(pixels) == 2 and failures:  # once: the lane that got the last two images
            raise failures.pop()
        return working(pixels, tower)

    encoder.encode_images = broken

    async def scenario():
        with pytest.raises(RuntimeError, match="out of memory"):
            await forward.encode(ids(5))  # split 3 + 2 over the lanes
        await all_idle(forward)
        return await forward.encode(ids(3))  # and the next batch still runs

    assert asyncio.run(scenario()).ravel().tolist() == [0, 1, 2]


def test_lanes_are_not_lost_when_work_cannot_be_started(fake):
    _, forward = fake
    forward.shutdown()  # submitting to a shut-down pool raises

    async def scenario():
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await forward.encode(ids(4))
        return len(forward._idle)

    assert asyncio.run(scenario()) == 2


def test_real_encoder_gives_the_same_embeddings_split_or_whole(tiny_clip_dir):
    forward = ForwardLanes(partial(load_clip, tiny_clip_dir, "cpu", "float32"), threads=2, lanes=2)
    try:
        encoder = forward.encoder
        pixels = np.stack([decode_image(encode(photo_like(64, 48, s), "PNG"), encoder.image_spec)
                           for s in range(5)])
        reference = load_clip(tiny_clip_dir, "cpu", "float32", trace=False).encode_images(pixels)

        async def scenario():
            return await forward.encode(pixels[:1]), await forward.encode(pixels)

        one, five = asyncio.run(scenario())
        assert all(lane.tower is not None for lane in forward.lanes)  # each lane traced its own
        np.testing.assert_allclose(one, reference[:1], atol=1e-5)
        np.testing.assert_allclose(five, reference, atol=1e-5)
    finally:
        forward.shutdown()

"""deployments.coalesce: uploads that arrive together share a model call, each gets its own outcome."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from deployments.coalesce import UploadCoalescer, options_key

CALLER = contextvars.ContextVar("caller", default=None)  # stands for Serve's request context


def run(coro, timeout_s: float = 5.0):
    """A test's coroutine, failed rather than hung if a caller is never answered."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class FakeModel:
    """``send_group`` behind the coalescer: answers each image with its own name and options; the
    first call can be held open (an upload "out at the model") until ``release`` is set."""

    def __init__(self, hold_first: bool = False, fail: bool = False, short: bool = False) -> None:
        self.calls: list[tuple[list[bytes], dict]] = []
        self.contexts: list = []  # the caller's context variable as each call saw it
        self.release = asyncio.Event()
        self.hold_first, self.fail, self.short = hold_first, fail, short

    async def send_group(self, images: list[bytes], model_kwargs: dict) -> list:
        self.calls.append((list(images), model_kwargs))
        self.contexts.append(CALLER.get())
        if self.hold_first and len(self.calls) == 1:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("replica bug")
        answers = [(image, model_kwargs.get("classifiers")) for image in images]
        return answers[:-1] if self.short else answers


async def one_held_out(model: FakeModel, send_group=None, **settings) -> tuple[UploadCoalescer, asyncio.Task]:
    """A coalescer (``settings``: its keyword arguments) with one upload, ``b"first"``, out at the
    model: ``model``'s first call, held until ``model.release`` is set. Uploads arriving now wait
    for group-mates (``min_out`` is 1 unless given)."""
    coalescer = UploadCoalescer(send_group or model.send_group, **settings)
    first = asyncio.create_task(coalescer.classify(b"first", {}))
    await asyncio.sleep(0)  # out at the model, held
    return coalescer, first


def test_a_lone_upload_goes_at_once():
    async def main():
        model = FakeModel()
        coalescer = UploadCoalescer(model.send_group, max_images=16, wait_s=10.0)  # a wait would time out the test
        answer = await asyncio.wait_for(coalescer.classify(b"a", {"classifiers": ["gore"]}), 1.0)
        assert coalescer._out == 0
        assert answer == (b"a", ["gore"]) and model.calls == [([b"a"], {"classifiers": ["gore"]})]
    run(main())


def test_uploads_arriving_while_one_is_out_share_calls_by_options_and_size():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer, first = await one_held_out(model, max_images=3, wait_s=0.05)
        nudity = [asyncio.create_task(coalescer.classify(f"n{i}".encode(), {"classifiers": ["nudity"]}))
                  for i in range(4)]
        gore = [asyncio.create_task(coalescer.classify(f"g{i}".encode(), {"classifiers": ["gore"]}))
                for i in range(2)]
        answers = await asyncio.gather(*nudity, *gore)
        assert answers == [(f"n{i}".encode(), ["nudity"]) for i in range(4)] + [
            (f"g{i}".encode(), ["gore"]) for i in range(2)]
        groups = sorted(images for images, _ in model.calls[1:])
        assert groups == [[b"g0", b"g1"], [b"n0", b"n1", b"n2"], [b"n3"]]  # full at 3; the rest on the timer
        model.release.set()
        assert await first == (b"first", None)
        assert (coalescer.calls, coalescer.images) == (4, 7) and coalescer._out == 0
    run(main())


def test_a_caller_gone_is_skipped_and_a_failed_call_reaches_every_caller():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer, first = await one_held_out(model, max_images=16, wait_s=0.05)
        kept = asyncio.create_task(coalescer.classify(b"kept", {}))
        gone = asyncio.create_task(coalescer.classify(b"gone", {}))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == (b"kept", None)
        assert model.calls[1][0] == [b"kept"]
        model.fail = True
        failing = [asyncio.create_task(coalescer.classify(b"x", {})) for _ in range(2)]
        for outcome in await asyncio.gather(*failing, return_exceptions=True):
            assert isinstance(outcome, RuntimeError)
        model.release.set()
        with pytest.raises(RuntimeError):
            await first
        assert coalescer._out == 0 and not coalescer._pending and not coalescer._sending
    run(main())


def test_uploads_wait_only_once_min_out_others_are_out():
    async def main():
        model = FakeModel()
        held = asyncio.Event()

        async def send_group(images, model_kwargs):  # the first two calls are held out
            answers = await model.send_group(images, model_kwargs)
            if len(model.calls) <= 2:
                await held.wait()
            return answers

        coalescer = UploadCoalescer(send_group, max_images=16, wait_s=10.0, min_out=2)  # a wait would time out
        first = asyncio.create_task(coalescer.classify(b"first", {}))
        await asyncio.sleep(0)
        second = asyncio.create_task(coalescer.classify(b"second", {}))  # 1 out, fewer than 2: at once
        await asyncio.sleep(0)
        assert [images for images, _ in model.calls] == [[b"first"], [b"second"]]
        coalescer.wait_s = 0.02  # 2 out now: these two wait and share a call
        pair = await asyncio.gather(coalescer.classify(b"a", {}), coalescer.classify(b"b", {}))
        assert pair == [(b"a", None), (b"b", None)] and model.calls[2][0] == [b"a", b"b"]
        held.set()
        assert await asyncio.gather(first, second) == [(b"first", None), (b"second", None)]
        assert coalescer._out == 0
    run(main())


def test_no_wait_means_a_call_per_upload():
    async def main():
        model = FakeModel()
        coalescer = UploadCoalescer(model.send_group, max_images=16, wait_s=0.0)
        await asyncio.gather(*(coalescer.classify(bytes([i]), {}) for i in range(5)))
        assert [images for images, _ in model.calls] == [[bytes([i])] for i in range(5)]
    run(main())


def test_options_key_tells_options_apart():
    assert options_key({"classifiers": ["a"], "threshold": None}) == options_key({"threshold": None, "classifiers": ["a"]})
    assert options_key({"classifiers": ["a"]}) != options_key({"classifiers": ["a", "b"]})
    assert options_key({"labels": ["x"], "unsafe_labels": ()}) != options_key({"labels": ["x"], "unsafe_labels": ("x",)})


def test_the_shared_call_runs_outside_every_callers_request_context():
    """Serve cancels a request's child calls when its client leaves: the shared call must be no
    caller's child, or one client leaving would fail the whole group."""
    async def main():
        model = FakeModel(hold_first=True)
        coalescer = UploadCoalescer(model.send_group, max_images=2, wait_s=0.05)

        async def caller(name: str, data: bytes):
            CALLER.set(name)
            return await coalescer.classify(data, {})

        first = asyncio.create_task(caller("first", b"0"))
        await asyncio.sleep(0)
        full = await asyncio.gather(caller("a", b"1"), caller("b", b"2"))  # flushed when full
        on_timer = await caller("c", b"3")  # flushed by its timer
        assert full == [(b"1", None), (b"2", None)] and on_timer == (b"3", None)
        assert model.contexts == ["first", None, None]  # alone: its own; shared: nobody's
        model.release.set()
        await first
    run(main())


def test_options_that_differ_anywhere_are_never_merged():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer, first = await one_held_out(model, max_images=16, wait_s=0.02)
        variants = [{"classifiers": ["nudity"], "labels": None, "threshold": None},
                    {"classifiers": ["nudity"], "labels": ["a cat"], "threshold": None},
                    {"classifiers": ["nudity"], "labels": None, "threshold": 0.3},
                    {"classifiers": ["nudity"], "labels": None, "threshold": None, "unsafe_labels": ("x",)}]
        await asyncio.gather(*(coalescer.classify(bytes([n, k]), options)
                               for n, options in enumerate(variants) for k in range(2)))
        shared = model.calls[1:]
        assert len(shared) == len(variants)
        for images, options in shared:
            assert len(images) == 2 and len({image[0] for image in images}) == 1
            assert options == variants[images[0][0]]
        model.release.set()
        await first
    run(main())


def test_a_group_left_by_its_timer_does_not_cut_the_next_groups_wait_short():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer, first = await one_held_out(model, max_images=2, wait_s=0.1)
        await asyncio.gather(coalescer.classify(b"1", {}), coalescer.classify(b"2", {}))  # full: sent at once
        late = asyncio.create_task(coalescer.classify(b"3", {}))  # opens the next group
        await asyncio.sleep(0.07)  # the first group's timer fires about now: not this group's
        assert not late.done() and len(model.calls) == 2
        assert await late == (b"3", None) and len(model.calls) == 3
        model.release.set()
        await first
    run(main())


def test_short_answers_and_a_call_cancelled_before_it_ran_fail_every_caller():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer, first = await one_held_out(model, max_images=3, wait_s=0.01)
        model.short = True  # from the next call on, one answer too few
        short = await asyncio.gather(*(coalescer.classify(bytes([i]), {}) for i in range(3)),
                                     return_exceptions=True)
        assert all(isinstance(o, RuntimeError) and "answers to" in str(o) for o in short)
        callers = [asyncio.create_task(coalescer.classify(bytes([i]), {})) for i in range(3)]
        await asyncio.sleep(0)  # full: the call's task exists but has not run
        for task in list(coalescer._sending):
            task.cancel()
        for outcome in await asyncio.gather(*callers, return_exceptions=True):
            assert isinstance(outcome, RuntimeError) and "cancelled" in str(outcome)
        model.release.set()
        with pytest.raises(RuntimeError, match="answers to 1 image"):
            await first
        assert coalescer._out == 0 and not coalescer._sending
    run(main())


def test_a_sent_call_is_cancelled_once_every_caller_has_left_and_not_before():
    async def main():
        model = FakeModel(hold_first=True)
        seen_cancel = asyncio.Event()
        slow = asyncio.Event()

        async def send_group(images, model_kwargs):
            if model.calls:  # the shared calls: held until released, noting a cancellation
                model.calls.append((list(images), model_kwargs))
                try:
                    await slow.wait()
                except asyncio.CancelledError:
                    seen_cancel.set()
                    raise
                return [(image, None) for image in images]
            return await model.send_group(images, model_kwargs)

        coalescer, first = await one_held_out(model, send_group, max_images=2, wait_s=0.05)
        pair = [asyncio.create_task(coalescer.classify(bytes([i]), {})) for i in range(2)]  # full: sent
        await asyncio.sleep(0.01)
        pair[0].cancel()
        await asyncio.sleep(0.01)
        assert not seen_cancel.is_set()  # one caller still waits: the call goes on
        pair[1].cancel()
        await asyncio.wait_for(seen_cancel.wait(), 1.0)  # the last one left: the call is cancelled
        kept = [asyncio.create_task(coalescer.classify(bytes([i]), {})) for i in range(2)]
        await asyncio.sleep(0.01)
        kept[0].cancel()
        slow.set()
        assert await kept[1] == (b"\x01", None)
        model.release.set()
        await first
        assert coalescer._out == 0 and not coalescer._sending
    run(main())

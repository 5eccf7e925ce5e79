"""deployments.coalesce: uploads that arrive together share a model call, each gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from deployments.coalesce import UploadCoalescer, options_key


class FakeModel:
    """``send_group`` behind the coalescer: answers each image with its own name and options; the
    first call can be held open (an upload "out at the model") until ``release`` is set."""

    def __init__(self, hold_first: bool = False, fail: bool = False) -> None:
        self.calls: list[tuple[list[bytes], dict]] = []
        self.release = asyncio.Event()
        self.hold_first, self.fail = hold_first, fail

    async def send_group(self, images: list[bytes], model_kwargs: dict) -> list:
        self.calls.append((list(images), model_kwargs))
        if self.hold_first and len(self.calls) == 1:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("replica bug")
        return [(image, model_kwargs.get("classifiers")) for image in images]


def test_a_lone_upload_goes_at_once():
    async def main():
        model = FakeModel()
        coalescer = UploadCoalescer(model.send_group, max_images=16, wait_s=10.0)  # a wait would time out the test
        answer = await asyncio.wait_for(coalescer.classify(b"a", {"classifiers": ["gore"]}), 1.0)
        assert answer == (b"a", ["gore"]) and model.calls == [([b"a"], {"classifiers": ["gore"]})]
    asyncio.run(main())


def test_uploads_arriving_while_one_is_out_share_calls_by_options_and_size():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer = UploadCoalescer(model.send_group, max_images=3, wait_s=0.05)
        first = asyncio.create_task(coalescer.classify(b"first", {}))
        await asyncio.sleep(0)  # out at the model, held
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
        assert (coalescer.calls, coalescer.images) == (4, 7)
    asyncio.run(main())


def test_a_caller_gone_is_skipped_and_a_failed_call_reaches_every_caller():
    async def main():
        model = FakeModel(hold_first=True)
        coalescer = UploadCoalescer(model.send_group, max_images=16, wait_s=0.05)
        first = asyncio.create_task(coalescer.classify(b"first", {}))
        await asyncio.sleep(0)
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
    asyncio.run(main())


def test_no_wait_means_a_call_per_upload():
    async def main():
        model = FakeModel()
        coalescer = UploadCoalescer(model.send_group, max_images=16, wait_s=0.0)
        await asyncio.gather(*(coalescer.classify(bytes([i]), {}) for i in range(5)))
        assert [images for images, _ in model.calls] == [[bytes([i])] for i in range(5)]
    asyncio.run(main())


def test_options_key_tells_options_apart():
    assert options_key({"classifiers": ["a"], "threshold": None}) == options_key({"threshold": None, "classifiers": ["a"]})
    assert options_key({"classifiers": ["a"]}) != options_key({"classifiers": ["a", "b"]})
    assert options_key({"labels": ["x"], "unsafe_labels": ()}) != options_key({"labels": ["x"], "unsafe_labels": ("x",)})

"""Where a model replica's forward passes run: lanes, each an OS thread with its own torch
intra-op thread count and its own image tower (traced, or OpenVINO), shared out from the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from classifiers.errors import ModelLoadError
from classifiers.model import ClipEncoder

MAX_LANES = 2  # ClipModel.embed's serve.batch runs up to this many batches at once

logger = logging.getLogger("ray.serve")


# ``auto`` compares the engines at the largest batch a lane takes by default (max_batch_size 16):
# where they differ most (one day OpenVINO 95 against torch 120 img/s at 16, even at 8).
RATE_BATCH = 16


def default_lanes(device: str, threads: int) -> int:
    """Two lanes on a CPU with two or more threads; one on a GPU, whose kernels queue anyway."""
    return 1 if device.startswith("cuda") or threads < 2 else MAX_LANES


def split_threads(threads: int, lanes: int) -> list[int]:
    """``threads`` shared as evenly as possible by ``lanes`` (each gets at least one)."""
    return [max(1, threads // lanes + (i < threads % lanes)) for i in range(lanes)]


class Lane:
    """One thread for torch work, with its own intra-op thread count and image tower.

    ``torch.set_num_threads`` called on a thread sets that thread's OpenMP and MKL thread
    counts (both are per-thread settings), so lanes with different counts coexist.
    """

    def __init__(self, name: str, threads: int, nice: int = 0) -> None:
        self.name, self.threads = name, threads
        self.tower = None  # None: the encoder's default tower
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=worker_thread,
                                        initargs=(name, nice))
        self.submit(_set_torch_threads, threads).result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def worker_thread(name: str, nice: int = 0) -> None:
    """Initialise a replica's worker thread: its OS name, and ``nice`` added to its CPU
    niceness (threads it starts, e.g. OpenMP's, inherit it)."""
    name_os_thread(name)
    lower_priority(nice)


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: niceness is per thread).

    On a machine the model shares with the ingress, the proxy and the fetcher, its forward
    passes and decodes then yield the CPU to them whenever they have work: that work is short
    and on every request's path, and a 503 waiting behind a forward pass is no longer fast.
    The model still gets every cycle the others leave, so its throughput does not drop.
    Raising niceness needs no privilege; best effort.
    """
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            logger.warning("could not lower this thread's CPU priority by %d", nice)


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS too (``top -H``, /proc/<pid>/task/*/comm), so CPU
    time can be told apart per thread; Linux only, 15 bytes at most, best effort."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _set_torch_threads(threads: int) -> None:
    import torch

    # A thread's first torch call copies torch's global count into the thread's own setting:
    # make that happen now, or it would later overwrite ours with whatever was set last.
    torch.get_num_threads()
    torch.set_num_threads(threads)


class ForwardLanes:
    """A replica's forward passes, on ``lanes`` lanes that share ``threads`` torch threads.

    With two lanes on two cores, each lane runs its own batches on one thread. Against one
    forward on two threads (measured in a plain process, bf16 ViT-B/32): 38.4 against 36
    img/s idle, and 31 against 27.5 img/s with another process taking 15 % of the machine,
    since two threads of one forward wait for each other whenever either loses its core.
    In the service the gain was smaller: +2.5 % at c=32 over 22 paired rounds, 17 of them
    higher (docs/benchmarks.md).
    A batch smaller than the number of lanes, arriving while all lanes are idle (a lone
    request), runs on the ``whole`` lane instead: all threads on one forward, 37-46 ms for
    one image against 69-73 ms on one thread.

    Everything is loaded on the lanes' own threads, one after another: the checkpoint and
    its traced tower on the whole lane, then one traced tower per lane (a traced tower runs
    slower on other threads; tracing two at once hung). Scheduling methods must be called
    from one event loop.
    """

    def __init__(self, load: Callable[[], ClipEncoder], threads: int, lanes: int, nice: int = 0,
                 engine: str = "torch") -> None:
        if not 1 <= lanes <= MAX_LANES:
            raise ValueError(f"lanes must be 1..{MAX_LANES}, got {lanes}")
        if lanes > threads:  # one thread is the least a lane can have
            logger.warning("%d forward lanes asked for, but only %d torch threads: running %d",
                           lanes, threads, threads)
            lanes = threads
        self.whole = Lane("forward", threads, nice)
        self.encoder: ClipEncoder = self.whole.submit(load).result()
        if lanes == 1:
            self.lanes = [self.whole]
        else:
            self.lanes = [Lane(f"forward-{i}", n, nice) for i, n in enumerate(split_threads(threads, lanes))]
            for lane in self.lanes:
                lane.tower = lane.submit(self.encoder.lane_tower, lane.threads).result()
        try:
            self.engine, self.lone_engine, self.engine_reason = self._choose_engine(engine, threads)
        except BaseException:
            self.shutdown()
            raise
        _set_torch_threads(threads)  # threads not yet started take torch's last global setting
        self._idle = list(self.lanes)
        self._waiters: list[asyncio.Future] = []

    def _choose_engine(self, requested: str, threads: int) -> tuple[str, str, str]:
        """Put the image towers on ``requested`` (``classifiers.engines``); returns the lanes'
        engine, the lone images' (the whole lane's) and why. ``auto`` measures both engines the
        way this replica runs them: every lane at once, and one image on the whole lane; each
        role gets the engine that is faster at it (``engines.auto_engines``). One tower alone
        misleads: on a 2-vCPU Xeon OpenVINO was faster on one thread alone (72.8 against 66.2
        img/s) but slower with two lanes at once (95 against 120)."""
        from classifiers import engines

        if requested == "torch":
            return "torch", "torch", "asked for"
        engine, why = engines.choose(requested, self.encoder.device, self.encoder.image_spec.fixed_shape)
        if engine == "torch":
            return engine, engine, why
        torch_towers = [lane.tower for lane in self.lanes]
        torch_rate = self._rate() if requested == "auto" else 0.0
        torch_alone = self._alone_ms() if requested == "auto" else 0.0

        def lanes_to_torch() -> None:
            for lane, tower in zip(self.lanes, torch_towers):
                lane.tower = tower

        try:
            self.whole.submit(self.encoder.use_openvino, threads).result()
            if len(self.lanes) > 1:
                for lane in self.lanes:
                    lane.tower = lane.submit(self.encoder.lane_tower, lane.threads).result()
            if requested == "openvino":
                return "openvino", "openvino", why
            # Alternated, best of two each: a busy neighbour during one run must not decide.
            openvino_rate = self._rate()
            openvino_alone = self._alone_ms()
            torch_rate = max(torch_rate, self._with_towers(torch_towers))
            torch_alone = min(torch_alone, self._alone_ms(self.encoder.torch_tower))
            openvino_rate = max(openvino_rate, self._rate())
            openvino_alone = min(openvino_alone, self._alone_ms())
        except Exception as exc:  # noqa: BLE001 - torch stays; one clear line when it was asked for
            self.whole.submit(self.encoder.use_torch).result()
            lanes_to_torch()
            message = engines.one_line(exc)
            if requested == "openvino":
                if isinstance(exc, ModelLoadError):
                    raise
                raise ModelLoadError(f"engine openvino: {message}") from None
            return "torch", "torch", f"OpenVINO failed: {message}"
        loaded, lone = engines.auto_engines(openvino_rate, torch_rate, openvino_alone, torch_alone, len(self.lanes))
        if loaded == "torch":
            lanes_to_torch()
        if lone == "torch":  # lanes on OpenVINO keep their own compiled towers
            self.whole.submit(self.encoder.use_torch).result()
        why = (f"measured with {self.layout} at once, batch {RATE_BATCH}: OpenVINO {openvino_rate:.1f} img/s, "
               f"torch {torch_rate:.1f} img/s; one image on all threads: OpenVINO {openvino_alone:.1f} ms, "
               f"torch {torch_alone:.1f} ms")
        return loaded, lone, why

    def _with_towers(self, towers: list) -> float:
        """``_rate`` with the lanes on ``towers`` for the run (then back to their own); a
        single lane runs the encoder's default tower, whatever ``towers`` holds."""
        if len(self.lanes) == 1:
            return 0.0  # the default tower is not switched back and forth: torch's first run stands
        own = [lane.tower for lane in self.lanes]
        for lane, tower in zip(self.lanes, towers):
            lane.tower = tower
        try:
            return self._rate()
        finally:
            for lane, tower in zip(self.lanes, own):
                lane.tower = tower

    def _rate(self, batch: int = RATE_BATCH, repeats: int = 3) -> float:
        """Images a second with every lane running ``repeats`` batches of zeros at once."""
        size = self.encoder.image_spec.size
        pixels = np.zeros((batch, size, size, 3), np.uint8)

        def run(lane: Lane, count: int) -> None:
            for _ in range(count):
                self.encoder.encode_images(pixels, lane.tower)

        for lane in self.lanes:  # warm-up
            lane.submit(run, lane, 1).result()
        start = time.perf_counter()
        for future in [lane.submit(run, lane, repeats) for lane in self.lanes]:
            future.result()
        return len(self.lanes) * batch * repeats / (time.perf_counter() - start)

    def _alone_ms(self, tower=None, repeats: int = 5) -> float:
        """Median milliseconds of one image on the whole lane (a lone request), after a warm-up,
        on ``tower`` (default: the encoder's default tower, the whole lane's)."""
        size = self.encoder.image_spec.size
        pixels = np.zeros((1, size, size, 3), np.uint8)

        def run() -> list[float]:
            self.encoder.encode_images(pixels, tower)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.encoder.encode_images(pixels, tower)
                times.append((time.perf_counter() - start) * 1000)
            return times

        return float(np.median(self.whole.submit(run).result()))

    def engines(self) -> dict[str, str]:
        """What runs the lanes' batches and what runs a lone image (``model_info``)."""
        return {"engine": self.engine, "lone_image_engine": self.lone_engine}

    @property
    def layout(self) -> str:
        return " + ".join(str(lane.threads) for lane in self.lanes) + " threads"

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the whole lane and wait (start-up work, before any traffic)."""
        return self.whole.submit(fn, *args).result()

    async def wait_ready(self) -> None:
        """Return once a lane is idle."""
        while not self._idle:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on one idle lane (waiting for one): other torch work, e.g. text heads."""
        await self.wait_ready()
        lane = self._idle.pop(0)
        return await self._start(lane, [lane], fn, *args)

    async def encode(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Image embeddings for uint8 images (``(h, w, 3)`` each, or one ``(n, h, w, 3)``
        array), split over idle lanes.

        Waits for an idle lane first; after ``wait_ready()`` returns, with no await in between,
        it does not wait. Idle lanes go to whichever caller runs first, not in arrival order.
        """
        await self.wait_ready()
        if len(self.lanes) > 1 and len(self._idle) == len(self.lanes) and len(pixels) < len(self.lanes):
            taken, self._idle = self._idle, []
            return await self._start(self.whole, taken, self.encoder.encode_images, pixels)
        cuts = np.array_split(np.arange(len(pixels)), min(len(self._idle), len(pixels)))
        parts = [pixels[c[0] : c[-1] + 1] for c in cuts]
        taken, self._idle = self._idle[: len(parts)], self._idle[len(parts) :]
        started = []
        try:
            for index, (lane, part) in enumerate(zip(taken, parts)):
                started.append(self._start(lane, [lane], self.encoder.encode_images, part, lane.tower))
        except BaseException:
            self._release(taken[index + 1 :])  # _start freed the lane it failed on
            raise
        return np.concatenate(await asyncio.gather(*started))

    def _start(self, lane: Lane, taken: list[Lane], fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn`` on ``lane``; ``taken`` lanes become idle when the thread is done (not when
        the caller stops waiting: a cancelled caller must not free a lane that still computes)."""
        loop = asyncio.get_running_loop()
        try:
            future = lane.submit(fn, *args)
        except BaseException:  # e.g. the pool is shut down: the lanes must not be lost
            self._release(taken)
            raise
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, taken))
        return asyncio.wrap_future(future)

    def _release(self, lanes: list[Lane]) -> None:
        self._idle.extend(lanes)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def shutdown(self) -> None:
        for lane in {id(lane): lane for lane in [self.whole, *self.lanes]}.values():
            lane.shutdown()

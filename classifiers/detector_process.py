"""A face detector in worker processes: for one whose C code holds the GIL while it works.

``yuface`` (YuNet) does: measured, a Python thread ran 150 steps in the 0.36 s that ten
detections took, against 12,000 a second otherwise, so on a model replica every detection
would stall the event loop and the forward lanes' Python for its ~20 ms. In worker processes
(``spawn``: no fork of a threaded Ray worker) it runs beside them; each call sends the small
detection copy (at most ``detect_max_side`` pixels a side, ~0.6 MB) and gets boxes back.

Workers start niced like the replica's decode threads, make one detection before the pool is
used (YuNet's first call initialises lazily, and two first calls at once can deadlock), and
exit on their own when the replica that started them is gone.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

_detector = None  # in a worker: the detector it runs


def _start(name: str, nice: int) -> None:
    global _detector
    from classifiers.faces import in_thread_detector

    if nice:
        os.nice(nice)
    _detector = in_thread_detector(name)
    parent = os.getppid()
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-parent", daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)  # the replica is gone (killed, not shut down): do not outlive it


def _detect(rgb: np.ndarray, min_size: int) -> list[tuple[float, float, float, float, float]]:
    return _detector.detect(rgb, min_size)


class DetectorProcesses:
    """``FaceDetector`` whose ``detect`` runs in one of ``workers`` processes."""

    def __init__(self, name: str, min_window: int, workers: int = 2, nice: int = 0) -> None:
        self.name, self.min_window = name, min_window
        self._pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start,
                                         initargs=(name, nice))
        try:
            # Start every worker and make its first detection now, one each, before any request.
            warm = [self._pool.submit(_detect, np.zeros((32, 32, 3), np.uint8), 10) for _ in range(workers)]
            for future in warm:
                future.result(timeout=120)
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise

    def detect(self, rgb: np.ndarray, min_size: int) -> list[tuple[float, float, float, float, float]]:
        return self._pool.submit(_detect, np.ascontiguousarray(rgb), min_size).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

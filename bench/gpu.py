"""GPU utilisation while a load runs, sampled from ``nvidia-smi`` (no-op where it is missing)."""

from __future__ import annotations

import shutil
import subprocess
import threading

QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def parse(output: str) -> list[tuple[float, float]]:
    """``(utilisation %, memory MiB)`` per GPU from one ``nvidia-smi`` query."""
    rows = []
    for line in output.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and all(part.replace(".", "", 1).isdigit() for part in parts):
            rows.append((float(parts[0]), float(parts[1])))
    return rows


class GpuSampler:
    """``with GpuSampler() as gpu: ...`` then ``gpu.summary()``: mean and max utilisation of
    GPU 0 and its peak memory over the block, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.5, command: list[str] = QUERY) -> None:
        self.interval_s, self.command = interval_s, command
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which(self.command[0]) is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                out = subprocess.run(self.command, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            rows = parse(out)
            if rows:
                self.samples.append(rows[0])

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        utilisation = [u for u, _ in self.samples]
        return {"util_mean_pct": round(sum(utilisation) / len(utilisation), 1), "util_max_pct": max(utilisation),
                "memory_peak_mib": max(m for _, m in self.samples), "samples": len(self.samples)}

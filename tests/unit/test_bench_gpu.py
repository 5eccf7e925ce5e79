"""The GPU utilisation sampler behind ``bench.run --device cuda``: parsing nvidia-smi's CSV,
and sampling a stand-in command (no GPU needed)."""

import sys
import time

from bench.gpu import GpuSampler, parse


def test_parse_reads_each_gpu_and_skips_noise():
    assert parse("87, 20312\n3, 1024\n") == [(87.0, 20312.0), (3.0, 1024.0)]
    assert parse("[N/A], 100\nNo devices were found\n") == []


def test_the_sampler_summarises_what_the_command_printed():
    command = [sys.executable, "-c", "print('42, 512')"]
    with GpuSampler(interval_s=0.05, command=command) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    summary = sampler.summary()
    assert summary["util_mean_pct"] == 42.0 and summary["memory_peak_mib"] == 512.0 and summary["samples"] >= 2
    assert GpuSampler(command=["no-such-nvidia-smi"]).__enter__().summary() is None

"""The result cache: throughput on one repeated image with the cache on, then off.

    python -m bench.cache [--size base|tiny] [--model DIR] [--concurrency 32] [--requests 1500] [--pdq-off]

One model replica (`moderation-serve`, serve_config.yaml's settings), the same 1024x768 JPEG
uploaded over and over to 127.0.0.1 by the load generator `bench.run` uses. The service is
started twice: `known_images.cache_size` at its default, then 0. Prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.load import run_load
from bench.overload import ROOT, write_config
from bench.photos import jpeg
from bench.run import free_port, stop, wait_until_up
from deployments.serve_env import HAPROXY_CONFIG, stop_leftover_haproxy


def measure(model: str, work: Path, name: str, known_images: dict, concurrency: int, requests: int,
            images: list[bytes] | None = None, overrides: dict | None = None) -> dict:
    """One service with these ``known_images`` settings (and other ``args`` ``overrides``),
    loaded with ``images`` in rotation (default: one repeated 1024x768 JPEG)."""
    port = free_port()
    config = work / f"serve_config-{name}.yaml"
    write_config(model, port, config, {"known_images": known_images, **(overrides or {})})
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.setdefault("MODERATION_BANKS_URL", f"sqlite:///{work}/banks.db")
    haproxy = work / f"haproxy-{name}"
    haproxy.mkdir()
    env.setdefault(HAPROXY_CONFIG, str(haproxy / "haproxy.cfg"))
    with open(work / f"service-{name}.log", "wb") as log:
        service = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config)], cwd=ROOT, env=env,
                                   start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz")
        images = images or [jpeg(1024, 768, seed=7, quality=90)]
        result = run_load(f"http://127.0.0.1:{port}/v1/classify", images, concurrency, requests,
                          warmup=min(requests, 4 * concurrency))
    finally:
        print(f"service {stop(service)}", file=sys.stderr)
        stop_leftover_haproxy(str(haproxy))
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "base"), default="base")
    parser.add_argument("--model", help="checkpoint directory (default: a random one of --size)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--pdq-off", action="store_true", help="also run with the cache and PDQ hashing off")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    model = args.model
    if not model:
        from classifiers.random_checkpoint import build_random_clip

        model = str(build_random_clip(work / f"clip-{args.size}", size=args.size))
    fewer = max(args.requests // 5, 2 * args.concurrency)
    runs = {"cache on": measure(model, work, "on", {"cache_size": 10_000}, args.concurrency, args.requests),
            "cache off": measure(model, work, "off", {"cache_size": 0}, args.concurrency, fewer)}
    if args.pdq_off:
        runs["cache off, no PDQ"] = measure(model, work, "nopdq", {"cache_size": 0, "pdq": False},
                                            args.concurrency, fewer)
    print(f"| one repeated 1024x768 JPEG, c={args.concurrency} | img/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} ({r['requests']} requests) | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |")
    print(f"cache on / off: {runs['cache on']['images_per_s'] / runs['cache off']['images_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

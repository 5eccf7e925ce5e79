"""``InClusterClient`` latency by value against as Ray tasks, alternated in one Ray instance:

    python -m bench.in_cluster --model DIR [--rounds 3]

The service is deployed as ``bench.cpu_budget`` deploys it (one model replica with all the CPUs);
from this driver, each round runs both clients in turn (the order alternating): 80 blocking
``classify`` calls, 20 ``aclassify`` and 6 ``classify_batch`` of 16, each a 1024x768 JPEG, and
prints the p50 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from bench.cpu_budget import deploy
from bench.photos import jpeg
from bench.run import free_port
from deployments.serve_env import own_haproxy_files, serve_env_defaults


def p50_ms(call, count: int, skip: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[skip:])


def measure(client, image: bytes, batch: list[bytes]) -> str:
    async def one():
        await client.aclassify(image, classifiers=["nudity"])

    sync = p50_ms(lambda: client.classify(image, classifiers=["nudity"]), 80, 5)
    asynchronous = p50_ms(lambda: asyncio.run(one()), 20, 3)
    many = p50_ms(lambda: client.classify_batch(batch, classifiers=["nudity"]), 6, 1)
    return f"classify p50 {sync:.1f} ms | aclassify p50 {asynchronous:.1f} ms | batch of 16 p50 {many:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    serve_env_defaults()  # the mode moderation-serve serves in; before Ray starts
    import ray
    from ray import serve

    from clients.in_cluster import InClusterClient

    threads = os.cpu_count() or 2
    port = free_port()
    image, batch = jpeg(1024, 768, seed=1), [jpeg(1024, 768, seed=s) for s in range(16)]
    with own_haproxy_files():  # set before Ray starts; ends with Ray shut down
        ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            deploy(args.model, port, threads)
            clients = [("by value", InClusterClient("moderation")),
                       ("as Ray tasks", InClusterClient("moderation", by_value=False))]
            for _, client in clients:  # warm-up
                for _ in range(10):
                    client.classify(image, classifiers=["nudity"])
            for round_ in range(args.rounds):
                for name, client in clients if round_ % 2 == 0 else clients[::-1]:
                    print(f"round {round_}  {name:12} {measure(client, image, batch)}", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

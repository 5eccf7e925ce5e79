"""Single-upload throughput and latency with and without shared model calls, at several
concurrencies, side by side in one Ray instance (alternated rounds):

    python -m bench.coalescing --model DIR [--concurrency 1,2,4,8,16,32] [--rounds 2]

Each setting (``coalesce_uploads_ms`` 0, then 5 with ``coalesce_min_out`` 8 and 1) is deployed as
``bench.cpu_budget`` deploys the service (one model replica with all the CPUs) and gets 1024x768
uploads from 127.0.0.1 at each concurrency.
"""

from __future__ import annotations

import argparse
import os

from bench.cpu_budget import deploy
from bench.load import run_load
from bench.photos import jpeg
from bench.run import free_port
from deployments.serve_env import own_haproxy_files, serve_env_defaults

SETTINGS = {
    "a call per upload": {"coalesce_uploads_ms": 0},
    "coalesced, min_out 8": {"coalesce_uploads_ms": 5, "coalesce_min_out": 8},
    "coalesced, min_out 1": {"coalesce_uploads_ms": 5, "coalesce_min_out": 1},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    serve_env_defaults()  # the mode moderation-serve serves in; before Ray starts
    import ray
    from ray import serve

    threads = os.cpu_count() or 2
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/classify"
    images, form = [jpeg(1024, 768, seed=1)], {"classifiers": "nudity"}
    with own_haproxy_files():  # set before Ray starts; ends with Ray shut down
        ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for round_ in range(args.rounds):
                order = list(SETTINGS.items())
                for name, overrides in order if round_ % 2 == 0 else order[::-1]:
                    deploy(args.model, port, threads, overrides)
                    run_load(url, images, 8, 32, form=form)  # warm-up
                    for c in levels:
                        result = run_load(url, images, c, max(96, min(48 * c, 384)), form=form)
                        print(f"round {round_}  {name:22} c={c:<3} {result.images_per_s:6.2f} img/s  "
                              f"p50 {result.p50_ms:6.1f} ms  p95 {result.p95_ms:6.1f} ms  errors {result.errors}",
                              flush=True)
        finally:
            serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the CPU goes under load: CPU time per image of every process, from /proc (Linux).

    python -m bench.cpu_budget --model DIR [--concurrency 32] [--requests 256] [--size 1024x768]
                               [--per-request 1]

Starts Ray and the service in this process (one model replica with all the CPUs, as
``bench.run`` configures it), sends uploads from 127.0.0.1, and prints, per process, the CPU
milliseconds spent per image during the measured requests.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.load import run_load
from bench.photos import jpeg
from bench.run import free_port
from deployments.serve_env import own_haproxy_files, serve_env_defaults

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> tuple[str, float]:
    """(comm, user + system CPU seconds) from a /proc stat file."""
    stat = path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user + system CPU seconds) for every process we can read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, seconds = _stat(entry / "stat")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = ((cmdline.strip() or comm)[:70], seconds)
    return out


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of one process's threads, summed by thread name. The model replica names
    its forward and decode threads; threads they start (torch's OpenMP workers) inherit the
    name, Ray's threads keep the process's."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm, seconds = _stat(task / "stat")
        except OSError:  # the thread ended
            continue
        out[comm] = out.get(comm, 0.0) + seconds
    return out


def deploy(model: str, port: int, threads: int, overrides: dict | None = None) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app = {
        "name": "moderation", "route_prefix": "/", "import_path": "deployments.app:build_app",
        # one image sent over and over: the result cache would answer it, so it is off unless asked for
        # faces off too (bench.faces measures them): the budget compares with earlier runs
        "args": {"model": model, "torch_threads": threads, "known_images": {"cache_size": 0},
                 "faces": {"enabled": False}, **(overrides or {})},
        "deployments": [{"name": "ClipModel", "num_replicas": 1,
                         "ray_actor_options": {"num_cpus": threads}}],
    }
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=YAML",
                        help="override one of the app's args (repeatable), e.g. batch_wait_timeout_s=0.02")
    parser.add_argument("--per-request", type=int, default=1,
                        help="images per request (> 1: POST /v1/classify/batch; --requests counts images)")
    args = parser.parse_args(argv)
    if args.per_request > 32:
        parser.error("--per-request: the service takes at most 32 images a request by default")
    k = args.per_request
    if not 1 <= k <= args.requests:
        parser.error("--per-request must be between 1 and --requests")

    serve_env_defaults()  # the mode moderation-serve serves in; before Ray starts
    import ray
    from ray import serve

    threads = os.cpu_count() or 2
    port = free_port()
    with own_haproxy_files():  # set before Ray starts; ends with Ray shut down
        ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            import yaml

            deploy(args.model, port, threads, {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.arg)})
            width, height = (int(v) for v in args.size.split("x"))
            url = f"http://127.0.0.1:{port}/v1/classify" + ("/batch" if k > 1 else "")
            images = [jpeg(width, height, seed=1)]
            form = {"classifiers": "nudity"}
            run_load(url, images, args.concurrency, 2 * args.concurrency, form=form, per_request=k)  # warm-up
            before, start = cpu_seconds(), time.perf_counter()
            replica = next(pid for pid, (name, _) in before.items() if "ClipModel" in name)
            threads_before = thread_seconds(replica)
            result = run_load(url, images, args.concurrency, args.requests // k, form=form, per_request=k)
            wall, after = time.perf_counter() - start, cpu_seconds()
            threads_after = thread_seconds(replica)
        finally:
            serve.shutdown()
    used = sorted(((after[pid][1] - before[pid][1], after[pid][0]) for pid in after if pid in before),
                  reverse=True)
    per_image = 1000 / (args.requests // k * k)
    print(f"{result.images_per_s} img/s, {args.requests // k * k} images ({k} per request) at "
          f"c={args.concurrency} in {wall:.1f} s; per request p50 {result.p50_ms} ms, p95 {result.p95_ms} ms"
          + (f", {result.errors} images without a result" if result.errors else ""))
    for seconds, name in used:
        if seconds * per_image >= 0.2:
            print(f"{seconds * per_image:7.1f} ms/img  {name}")
            if "ClipModel" in name:
                spent_by = {t: s - threads_before.get(t, 0.0) for t, s in threads_after.items()}
                for thread, spent in sorted(spent_by.items(), key=lambda kv: -kv[1]):
                    if spent * per_image >= 0.2:
                        print(f"{'':9}{spent * per_image:7.1f} ms/img  thread {thread}")
    print(f"{sum(s for s, _ in used) * per_image:7.1f} ms/img  in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

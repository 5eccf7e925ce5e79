"""Overload: peak goodput at a modest concurrency, then far more traffic than the service can
take, and what the callers get.

    python -m bench.overload [--size tiny|base] [--model DIR] [--peak-c 8] [--over-c 128]
                             [--seconds 20] [--processes 2] [--output FILE]

One model replica (as `moderation-serve` runs on a laptop), 640x480 JPEG uploads, all traffic to
127.0.0.1. Goodput is 200 answers per second. Prints a table and writes JSON.

A 503's time is measured three ways, since on a small machine the load generator competes
with the service for the same cores: by the load generator (its own event loop's lag, printed
beside it, is part of every time it measures), by a probe (one caller in a process of its
own, a request every 100 ms: what a newcomer gets), and by the ingress (Serve's access log).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.load import TimedRun, merged, run_for, run_together, share
from bench.photos import jpeg
from bench.run import free_port, stop, wait_until_up
from deployments.serve_env import HAPROXY_CONFIG, stop_leftover_haproxy

ROOT = Path(__file__).resolve().parents[1]


def write_config(model: str, port: int, path: Path, args_overrides: dict, ingress_env: dict | None = None) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    # the load sends a few images in rotation: the model path, not the result cache, unless asked
    # for; faces off unless asked for (bench.faces measures them), so figures stay comparable
    app["args"].update(model=model, **{"known_images": {"cache_size": 0}, "faces": {"enabled": False},
                                       **args_overrides})
    for deployment in app["deployments"]:
        if deployment["name"] == "ClipModel":
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
        if deployment["name"] == "Ingress" and ingress_env:
            deployment["ray_actor_options"]["runtime_env"] = {"env_vars": ingress_env}
    path.write_text(yaml.safe_dump(config))


def summary(run: TimedRun) -> dict:
    answers, wall = run.answers, run.wall_s
    ok = [a.seconds * 1000 for a in answers if a.status == 200]
    shed = [a for a in answers if a.status == 503]
    others: dict[str, int] = {}
    for a in answers:
        if a.status not in (200, 503):
            others[f"{a.status} {a.code}"] = others.get(f"{a.status} {a.code}", 0) + 1

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 1) if values else None

    return {
        "requests": len(answers), "wall_s": round(wall, 2), "goodput": round(len(ok) / wall, 2),
        "ok": len(ok), "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99),
        "shed": len(shed), "shed_p50_ms": pct([a.seconds * 1000 for a in shed], 50),
        "shed_p99_ms": pct([a.seconds * 1000 for a in shed], 99),
        "shed_codes": sorted({a.code for a in shed}),
        "shed_by": {m: sum(1 for a in shed if a.message == m) for m in sorted({a.message for a in shed})},
        "shed_over_100ms": sum(1 for a in shed if a.seconds > 0.1),
        "shed_without_retry_after": sum(1 for a in shed if not a.retry_after),
        "other_answers": others,
        "client_loop_lag_p99_ms": pct(run.loop_lag_ms, 99),
        "client_loop_lag_max_ms": round(max(run.loop_lag_ms), 1) if run.loop_lag_ms else None,
    }


def ingress_503_ms(since: datetime.datetime, log_dir: Path = Path("/tmp/ray/session_latest/logs/serve")) -> dict:
    """The 503s' times as the Ingress replica logged them since ``since`` (Serve's access log
    lines, from the request's start in the replica to its answer): the server's share of a
    503's time. Empty when the log is not found (Ray's temp dir elsewhere)."""
    pattern = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*POST /v1/classify 503 ([\d.]+)ms")
    times = [float(m.group(2)) for path in log_dir.glob("replica_*Ingress*.log")
             for m in pattern.finditer(path.read_text(errors="replace"))
             if datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S") >= since.replace(microsecond=0)]
    if not times:
        return {}
    return {"n": len(times), **{f"p{q}_ms": round(float(np.percentile(times, q)), 1) for q in (50, 99)},
            "max_ms": round(max(times), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--model", help="checkpoint directory (default: a random one of --size)")
    parser.add_argument("--peak-c", type=int, default=8)
    parser.add_argument("--over-c", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--peak-seconds", type=float, default=10)
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=YAML",
                        help="override one of the app's args (repeatable), e.g. queue_deadline_ms=500")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="clients send their next request at once after a 503 (default: they wait it out)")
    parser.add_argument("--ingress-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the Ingress replica only (repeatable)")
    parser.add_argument("--processes", type=int, default=2,
                        help="load generator processes the clients are shared out over (default 2)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "overload.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="overload-"))
    model = args.model
    if not model:
        from classifiers.random_checkpoint import build_random_clip

        model = str(build_random_clip(work / f"clip-{args.size}", size=args.size))
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.arg)}
    port = free_port()
    config = work / "serve_config.yaml"
    write_config(model, port, config, overrides, dict(item.split("=", 1) for item in args.ingress_env))
    images = [jpeg(640, 480, seed=i, quality=90) for i in range(6)]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    (work / "haproxy").mkdir()
    env.setdefault(HAPROXY_CONFIG, str(work / "haproxy" / "haproxy.cfg"))
    log = open(work / "service.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "deployments.launch", str(config)], cwd=ROOT, env=env,
                               start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/classify"
    report: dict = {"model": model, "size": args.size, "overrides": overrides, "service_log": str(work / "service.log")}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz")
        run_for(url, images, args.peak_c, 3)  # warm up
        peak = run_for(url, images, args.peak_c, args.peak_seconds, processes=min(args.processes, args.peak_c))
        report["peak"] = {"concurrency": args.peak_c, **summary(peak)}
        print(f"peak c={args.peak_c}: {report['peak']}", file=sys.stderr)
        overload_start = datetime.datetime.now()
        # The overload, and beside it a probe: one caller in a process of its own, a request
        # every 100 ms: what a newcomer gets, without the load generator's own lag.
        runs = run_together([
            *share(url, images, args.over_c, args.seconds, args.processes,
                   honour_retry_after=not args.ignore_retry_after, form={}, timeout_s=60),
            dict(url=url, images=images, concurrency=1, seconds=args.seconds, form={}, timeout_s=60,
                 honour_retry_after=False, pause_s=0.1),
        ])
        report["overload"] = {"concurrency": args.over_c, "processes": args.processes,
                              "honour_retry_after": not args.ignore_retry_after, **summary(merged(runs[:-1]))}
        report["probe"] = {"concurrency": 1, **summary(runs[-1])}
        print(f"overload c={args.over_c}: {report['overload']}\nprobe: {report['probe']}", file=sys.stderr)
        start = time.perf_counter()
        after = httpx.post(url, files={"file": ("a.jpg", images[0], "image/jpeg")}, timeout=30)
        report["after"] = {"status": after.status_code, "ms": round((time.perf_counter() - start) * 1000, 1)}
    finally:
        print(f"service {stop(service)}", file=sys.stderr)
        stop_leftover_haproxy(str(work / "haproxy"))
    report["ingress_503"] = ingress_503_ms(overload_start)
    peak, over = report["peak"], report["overload"]
    report["goodput_ratio"] = round(over["goodput"] / peak["goodput"], 3) if peak["goodput"] else None
    Path(args.output).write_text(json.dumps(report, indent=2))
    print("| load | goodput img/s | 200 p50 / p99 ms | 503s | 503 p50 / p99 ms | other | client loop lag p99 ms |\n"
          "|---|---|---|---|---|---|---|")
    for name in ("peak", "overload", "probe"):
        r = report[name]
        label = "probe, 1 every 100 ms" if name == "probe" else f"c={r['concurrency']}"
        print(f"| {label}, {r['wall_s']} s | {r['goodput']} | {r['ok_p50_ms']} / {r['ok_p99_ms']} | "
              f"{r['shed']} | {r['shed_p50_ms']} / {r['shed_p99_ms']} | {r['other_answers'] or '-'} | "
              f"{r['client_loop_lag_p99_ms']} |")
    print(f"503s as the ingress logged them: {report['ingress_503'] or 'no log found'}")
    print(f"goodput under overload / peak: {report['goodput_ratio']}; a request afterwards: "
          f"{report['after']['status']} in {report['after']['ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

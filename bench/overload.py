"""Overload: peak goodput at a modest concurrency, then far more traffic than the service can
take, and what the callers get.

    python -m bench.overload [--size tiny|base] [--model DIR] [--peak-c 8] [--over-c 128]
                             [--seconds 20] [--output FILE]

One model replica (as `moderation-serve` runs on a laptop), 640x480 JPEG uploads, all traffic to
127.0.0.1. Goodput is 200 answers per second. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.load import Answer, run_for
from bench.photos import jpeg
from bench.run import free_port, stop, wait_until_up
from deployments.serve_env import HAPROXY_CONFIG, stop_leftover_haproxy

ROOT = Path(__file__).resolve().parents[1]


def write_config(model: str, port: int, path: Path, args_overrides: dict) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(model=model, **args_overrides)
    for deployment in app["deployments"]:
        if deployment["name"] == "ClipModel":
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    path.write_text(yaml.safe_dump(config))


def summary(answers: list[Answer], wall: float) -> dict:
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
    }


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
    write_config(model, port, config, overrides)
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
        report["peak"] = {"concurrency": args.peak_c, **summary(*run_for(url, images, args.peak_c, args.peak_seconds))}
        print(f"peak c={args.peak_c}: {report['peak']}", file=sys.stderr)
        report["overload"] = {"concurrency": args.over_c, "honour_retry_after": not args.ignore_retry_after,
                              **summary(*run_for(url, images, args.over_c, args.seconds,
                                                 honour_retry_after=not args.ignore_retry_after))}
        print(f"overload c={args.over_c}: {report['overload']}", file=sys.stderr)
        start = time.perf_counter()
        after = httpx.post(url, files={"file": ("a.jpg", images[0], "image/jpeg")}, timeout=30)
        report["after"] = {"status": after.status_code, "ms": round((time.perf_counter() - start) * 1000, 1)}
    finally:
        print(f"service {stop(service)}", file=sys.stderr)
        stop_leftover_haproxy(str(work / "haproxy"))
    peak, over = report["peak"], report["overload"]
    report["goodput_ratio"] = round(over["goodput"] / peak["goodput"], 3) if peak["goodput"] else None
    Path(args.output).write_text(json.dumps(report, indent=2))
    print("| load | goodput img/s | 200 p50 / p99 ms | 503s | 503 p50 / p99 ms | other |\n|---|---|---|---|---|---|")
    for name in ("peak", "overload"):
        r = report[name]
        print(f"| c={r['concurrency']} {r['wall_s']} s | {r['goodput']} | {r['ok_p50_ms']} / {r['ok_p99_ms']} | "
              f"{r['shed']} | {r['shed_p50_ms']} / {r['shed_p99_ms']} | {r['other_answers'] or '-'} |")
    print(f"goodput under overload / peak: {report['goodput_ratio']}; a request afterwards: "
          f"{report['after']['status']} in {report['after']['ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

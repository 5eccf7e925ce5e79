"""A backfill on Ray Data: read every source in CPU tasks, score in an actor pool of the
service's model class, write parts from the driver as results arrive (resumable).

Stages: ``from_items(sources)`` -> ``map_batches(read_batch)`` (tasks: local files, object
stores through pyarrow, http(s) through the service's guarded fetcher; a bad source becomes an
error, never a failed task) -> ``map_batches(ImageScorer)`` (actors: decode, hashes, faces and
the forward passes, as a model replica does) -> the driver writes a part file every
``part_rows`` rows (atomic), so a job killed midway keeps what it wrote and a rerun skips it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BackfillOptions:
    """What ``moderation backfill`` was asked for."""

    source: str
    out: str
    fmt: str = "parquet"
    classifiers: list[str] | None = None
    labels: list[str] | None = None
    unsafe_labels: list[str] = field(default_factory=list)
    threshold: float | None = None
    embeddings: bool = False
    address: str | None = None  # a Ray cluster; None: start one here
    actors: int = 1
    cpus_per_actor: float | None = None  # default: this machine's CPUs less one for the readers
    gpus_per_actor: float = 0.0
    batch_size: int = 64  # images a scoring actor gets at once (its forward batches form inside)
    part_rows: int = 500
    progress: bool = True

    def request(self) -> dict:
        return {"classifiers": self.classifiers, "labels": self.labels,
                "unsafe_labels": tuple(self.unsafe_labels), "threshold": self.threshold}


def read_batch(batch: dict, fetch: dict, max_bytes: int) -> dict:
    """Ray Data task: each source's bytes, or its error as JSON (code, message)."""
    from backfill.sources import read_sources
    from classifiers.errors import ModerationError
    from deployments.settings import FetchSettings

    sources = [str(s) for s in batch["source"]]
    read = read_sources(sources, FetchSettings.model_validate(fetch), max_bytes)
    data = [b"" if isinstance(r, ModerationError) else r for r in read]
    errors = [json.dumps({"code": r.code, "message": r.message}) if isinstance(r, ModerationError) else ""
              for r in read]
    return {"source": np.asarray(sources, dtype=object), "data": np.asarray(data, dtype=object),
            "error": np.asarray(errors, dtype=object)}


def service_args(overrides: dict | None = None) -> dict:
    """The service's args (serve_config.yaml's defaults, env overrides as the app builder
    applies them), with the result cache off: a backfill sees each image once."""
    from deployments.settings import AppArgs

    args = AppArgs.model_validate(overrides or {}).with_env(os.environ).model_dump(mode="json")
    args["known_images"]["cache_size"] = 0
    return args


def run_backfill(options: BackfillOptions, args: dict, out=None) -> dict:
    """Run the job; returns the summary (``Summary.as_dict``) and prints it to ``out``."""
    import ray

    from backfill.sources import list_sources
    from backfill.table import PartWriter, Summary, done_sources

    sources = list_sources(options.source)
    # a rerun in the other format still skips what either wrote
    done = done_sources(options.out, "parquet") | done_sources(options.out, "jsonl")
    todo = [s for s in sources if s not in done]
    summary, start = Summary(), time.perf_counter()
    if out is not None:
        print(f"{len(sources)} sources, {len(sources) - len(todo)} already in {options.out}, "
              f"{len(todo)} to do", file=out, flush=True)
    if not todo:
        return summary.as_dict() | {"skipped": len(sources) - len(todo)}
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of its own here unless --address names a cluster (never whatever
        # cluster this machine happens to run)
        ray.init(address=options.address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if options.address else {"num_cpus": os.cpu_count()}))
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours (rows written, rate, ETA) is the one shown
        context.enable_auto_log_stats = False
        dataset = _pipeline(options, args, todo)
        writer = PartWriter(options.out, options.fmt)
        progress = _progress(len(todo), options.progress)
        pending: list[dict] = []
        first_at, first_rows = None, 0  # the steady rate leaves out start-up (Ray, model load)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = [json.loads(r) for r in batch["row"]]
            if first_at is None:
                first_at, first_rows = time.perf_counter(), len(rows)
            for row in rows:
                summary.add(row)
            pending.extend(rows)
            progress.update(len(rows))
            while len(pending) >= options.part_rows:
                writer.write(pending[:options.part_rows])
                pending = pending[options.part_rows:]
        if pending:
            writer.write(pending)
        progress.close()
    finally:
        if started_here:
            ray.shutdown()
    elapsed = time.perf_counter() - start
    result = summary.as_dict(elapsed) | {"skipped": len(sources) - len(todo), "elapsed_s": round(elapsed, 2)}
    later = summary.as_dict()["images"] - first_rows
    if first_at is not None and later > 0:
        result["steady_images_per_s"] = round(later / max(1e-9, time.perf_counter() - first_at), 2)
    if out is not None:
        print(summary.render(elapsed), file=out, flush=True)
    return result


def _pipeline(options: BackfillOptions, args: dict, todo: list[str]):
    import ray

    from backfill.scorer import ImageScorer

    cpus = options.cpus_per_actor
    if cpus is None:  # an actor fits on the largest node, with room for the read tasks
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        cpus = max(1.0, largest - 0.5)
    args = {**args, "torch_threads": args.get("torch_threads") or max(1, round(cpus))}
    if not options.gpus_per_actor and args.get("device", "auto") == "auto":
        args["device"] = "cpu"  # no GPU asked for: do not take one Ray does not account for
    readers = ray.data.from_items([{"source": s} for s in todo],
                                  override_num_blocks=max(1, min(len(todo) // 64, 1000)))
    read = readers.map_batches(read_batch, batch_size=32, num_cpus=0.25,
                               fn_kwargs={"fetch": args["fetch"], "max_bytes": args["max_upload_bytes"]})
    return read.map_batches(
        ImageScorer, batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=cpus, max_restarts=2, max_task_retries=2,  # an actor that dies on a batch: fail, not loop
        num_gpus=options.gpus_per_actor or None,
        fn_constructor_kwargs={"args": args, "options": options.request(), "embeddings": options.embeddings})


def _progress(total: int, shown: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not shown, smoothing=0.1, dynamic_ncols=True)


def rescore_table(table: str, out: str, fmt: str, args: dict, request: dict, printer=None) -> dict:
    """Re-score a backfill table's ``embedding`` column with today's classifiers, heads,
    calibration, thresholds, policies and banks (stored hashes), in this process (no pixels, no
    Ray Data): part by part, one part out for each part in, so a rerun resumes."""
    import asyncio

    from backfill.scorer import batch_outside_serve
    from backfill.table import PartWriter, Summary, done_sources, part_rows, row_of
    from banks.hashes import ImageHashes
    from classifiers.errors import ModerationError
    from deployments.clip_model import ClipModel
    from deployments.settings import AppArgs

    if Path(out).resolve() == Path(table).resolve():
        raise ValueError("--out must be another folder than the table it re-scores")
    done = done_sources(out, "parquet") | done_sources(out, "jsonl")
    batch_outside_serve()
    app = AppArgs.model_validate({**args, "torch_threads": args.get("torch_threads") or os.cpu_count()})
    model = ClipModel.func_or_class(app.model_settings(), app.runtime_config())
    version = model.trained.current.version
    writer, summary, start = PartWriter(out, fmt), Summary(), time.perf_counter()
    loop, seen_embeddings = asyncio.new_event_loop(), False
    for _, rows in part_rows(table):
        fresh = []
        for old in rows:
            if old["source"] in done:
                continue
            if not old.get("ok"):
                row = old  # an image that failed then has nothing to re-score
            elif old.get("embedding") is None:
                row = {**old, "ok": False, "error_code": "invalid_request", "status": 400,
                       "error_message": "no embedding stored: run the backfill with --embeddings"}
            else:
                seen_embeddings = True
                hashes = (ImageHashes(old["sha256"], old.get("pdq"), old.get("pdq_quality"), ())
                          if old.get("sha256") else None)
                try:
                    result = loop.run_until_complete(
                        model.rescore(np.asarray(old["embedding"], np.float32), hashes=hashes, **request))
                    row = row_of(old["source"], result, version, old["embedding"])
                    row["faces"] = old.get("faces")  # counted from the pixels, then
                except ModerationError as error:
                    row = row_of(old["source"], error, version)
            summary.add(row)
            fresh.append(row)
        if fresh:
            writer.write(fresh)
    if summary.ok == 0 and not seen_embeddings and summary.images:
        raise ValueError(f"{table} has no embeddings: run the backfill with --embeddings")
    if printer is not None:
        print(summary.render(time.perf_counter() - start), file=printer, flush=True)
    return summary.as_dict()

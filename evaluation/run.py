"""One evaluation run: samples → scores (per variant) → metrics, plots, report, calibration."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers.calibration import FORMAT, load_calibration, temperatures
from classifiers.labels import LabelSet
from classifiers.registry import BUILTIN_CLASSIFIERS
from evaluation import plots
from evaluation.analysis import analyse, binary_view, rank_key
from evaluation.backends import InProcessBackend, Scored, ServerBackend
from evaluation.cache import ResultCache
from evaluation.dataset import DatasetError, Sample
from evaluation.report import write_report
from evaluation.temperature import calibrate, holdout_split, probabilities
from evaluation.variants import BASELINE, Variant


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs besides the samples and the label set."""

    dataset: str
    out_dir: Path
    custom: bool = False
    variants: tuple[Variant, ...] = ()
    target_precision: float | None = None
    target_recall: float | None = None
    threshold: float | None = None
    calibration: str | None = None  # a calibration file to apply (as the service would)
    calibrate: str | None = None  # where to write a fitted temperature
    cache: str | None = None
    batch_size: int = 32
    max_frames: int = 1
    concurrency: int = 8
    progress: bool = True


def _progress_bar(total: int, enabled: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=what, file=sys.stderr, disable=None if enabled else True)


def run_in_process(samples: list[Sample], label_set: LabelSet, encoder, opts: RunOptions, head=None) -> dict:
    """Evaluate with the service's code in this process; writes the report, returns its data.
    ``head``: a trained head (``classifiers.trained.TrainedHead``) to score instead of prompts."""
    variants = list(opts.variants) or [Variant(BASELINE, label_set)]
    temperature = 1.0  # the service applies calibration files to built-in classifiers only
    if opts.calibration and not opts.custom:
        calibration = load_calibration(opts.calibration, set(BUILTIN_CLASSIFIERS))
        temperature = temperatures(calibration).get(label_set.name, 1.0)
    with ResultCache(opts.cache) as cache:
        backend = InProcessBackend(encoder, cache, batch_size=opts.batch_size, max_frames=opts.max_frames)
        with _progress_bar(len(samples), opts.progress, "images") as bar:
            embeddings, errors = backend.embed(samples, bar.update)
    kept = [i for i, e in enumerate(embeddings) if e is not None]
    if not kept:
        raise DatasetError(f"no image could be scored; first error: {next(iter(errors.values()))}")
    usable = [embeddings[i] for i in kept]
    if head is not None:
        scored = {BASELINE: backend.score(head, usable, 1.0, opts.threshold)}
    else:
        scored = {v.name: backend.score(v.label_set, usable, temperature, opts.threshold) for v in variants}
    header = {"mode": "in-process", "model": encoder.name, "temperature_applied": temperature,
              "max_frames": opts.max_frames,
              "cache": {"path": opts.cache, "images_encoded": backend.encoded_images,
                        "images_from_cache": len(kept) - backend.encoded_images}}
    return _finish(samples, label_set, scored, kept, errors, header, opts,
                   rescore=lambda t: backend.score(head or label_set, usable, t, opts.threshold))


def run_on_server(samples: list[Sample], label_set: LabelSet, client, server: str, opts: RunOptions) -> dict:
    """Evaluate through a running service's HTTP API (its model, prompts, calibration and thresholds)."""
    with ResultCache(opts.cache) as cache:
        backend = ServerBackend(client, server, cache, concurrency=opts.concurrency)
        with _progress_bar(len(samples), opts.progress, "images") as bar:
            scored, kept, errors = backend.score(samples, label_set, opts.custom, bar.update)
    if not kept:
        raise DatasetError(f"no image could be scored; first error: {next(iter(errors.values()))}")
    if opts.threshold is not None:
        scored = Scored(scored.label_set, scored.probs, scored.unsafe, opts.threshold)
    header = {"mode": "server", "server": server, "model": backend.model, "catalog_sha256": backend.catalog_sha256,
              "cache": {"path": opts.cache, "requests_sent": backend.requests,
                        "answers_from_cache": len(kept) - backend.requests}}
    return _finish(samples, label_set, {BASELINE: scored}, kept, errors, header, opts)


def _finish(samples, label_set, scored: dict[str, Scored], kept, errors, header, opts: RunOptions,
            rescore: Callable[[float], Scored] | None = None) -> dict:
    names = label_set.label_names
    y = np.array([names.index(samples[i].label) for i in kept])
    # fitted (and refused, when it must be) before anything is written
    fitted = _fit(scored[BASELINE], y, label_set, opts, header.get("model"), rescore) if opts.calibrate else None
    results = {name: analyse(s, y, opts.target_precision, opts.target_recall) for name, s in scored.items()}
    winner = max(results, key=lambda name: rank_key(results[name]))
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": opts.dataset, "classifier": label_set.name if not opts.custom else "custom",
        "kind": label_set.kind, "labels": list(names), "unsafe_labels": list(label_set.unsafe),
        **header, "samples": len(samples), "scored": len(kept),
        "label_counts": {n: int((y == i).sum()) for i, n in enumerate(names)},
        "failed": [{"source": samples[i].source, "error": e} for i, e in sorted(errors.items())],
        "variants": {
            name: {"templates": list(s.label_set.templates),
                   "prompts": {label.name: list(label.prompts) for label in s.label_set.labels},
                   "threshold": s.threshold, **results[name]}
            for name, s in scored.items()
        },
        "winner": winner if len(scored) > 1 else None,
    }
    if fitted is not None:
        report["calibration"] = _write_calibration(*fitted, scored[BASELINE], y, label_set, opts)
    report["plots"] = _plots(scored, y, report, opts.out_dir)
    write_report(report, opts.out_dir)
    return report


def _fit(base: Scored, y: np.ndarray, label_set: LabelSet, opts: RunOptions, model: str | None,
         rescore: Callable[[float], Scored] | None) -> tuple[dict, Path, dict | None]:
    """Fit a temperature and check the file can take it; returns the file's new content, its
    path, and the moderation view of the scores the service will give with it. Writes nothing."""
    entry = {**calibrate(base.logits, y), "dataset": opts.dataset}
    path = Path(opts.calibrate).expanduser()
    data = {"format": FORMAT, "model": model, "classifiers": {}}
    if path.exists():  # add to (or replace in) the file: one file serves every classifier
        data = load_calibration(path, set(BUILTIN_CLASSIFIERS))
        if data.get("model") != model:
            raise DatasetError(f"{path} was fitted for model {data.get('model')!r}, not {model!r}; "
                               "write the calibration for this model to another file")
    data["classifiers"][label_set.name] = entry
    # the thresholds must hold for calibrated scores: search them again at the fitted temperature
    calibrated = rescore(entry["temperature"]) if rescore else None
    view = analyse(calibrated, y, opts.target_precision, opts.target_recall) if calibrated else {}
    return data, path, view.get("binary")


def _write_calibration(data: dict, path: Path, binary: dict | None, base: Scored, y: np.ndarray,
                       label_set: LabelSet, opts: RunOptions) -> dict:
    entry = data["classifiers"][label_set.name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _, held = holdout_split(y)
    before, after = probabilities(base.logits[held]), probabilities(base.logits[held], entry["temperature"])
    plots.reliability_png(opts.out_dir / "reliability.png",
                          (before.max(axis=1), (before.argmax(axis=1) == y[held]).astype(float)),
                          (after.max(axis=1), (after.argmax(axis=1) == y[held]).astype(float)),
                          f"{label_set.name}: calibration (T={entry['temperature']:.3g})\n"
                          f"on {len(held)} held-out images")
    return {**entry, "file": str(path), "plot": "reliability.png", "binary": binary}


def _plots(scored: dict[str, Scored], y: np.ndarray, report: dict, out: Path) -> dict[str, str]:
    base = scored[BASELINE]
    title = report["classifier"]
    summary = report["variants"][BASELINE]
    files = {"confusion_matrix": plots.confusion_png(
        out / "confusion_matrix.png", np.array(summary["confusion_matrix"]), summary["labels"],
        f"{title}: confusion matrix ({BASELINE})").name}
    positives = binary_view(base, y)
    if positives is not None and 0 < positives.sum() < len(positives):
        marks = {}
        binary = summary["binary"]
        marks["threshold in force"] = binary["at_current_threshold"]
        for key in ("for_target_precision", "for_target_recall"):
            if binary.get(key) and binary[key]["result"]:
                marks[f"{key.removeprefix('for_').replace('_', ' ')} {binary[key]['target']:g}"] = binary[key]["result"]
        files["pr_curve"] = plots.pr_png(out / "pr_curve.png", {n: (positives, s.unsafe) for n, s in scored.items()},
                                         marks, f"{title}: unsafe vs safe").name
        files["score_histogram"] = plots.histogram_png(
            out / "score_histogram.png", {"safe images": base.unsafe[positives == 0],
                                          "unsafe images": base.unsafe[positives == 1]},
            base.threshold, "unsafe score", f"{title}: unsafe score by true class").name
    else:
        correct = base.probs.argmax(axis=1) == y
        files["score_histogram"] = plots.histogram_png(
            out / "score_histogram.png", {"correct": base.probs.max(axis=1)[correct],
                                          "wrong": base.probs.max(axis=1)[~correct]},
            None, "top label score", f"{title}: top score, right vs wrong").name
    return files

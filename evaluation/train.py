"""One training run: labelled images → embeddings (cached) → a fitted head → a head file + report.

The images are split once, stratified by label: 80 % to train on, 20 % held out. The penalty
and the flag threshold are chosen on the training images alone (out-of-fold scores); the
held-out images are scored once, by the saved head through the service's own scoring, and
those are the metrics the report and the head file carry. The same held-out images are also
scored zero-shot (the label names, or the ``--init`` classifier's prompts), for comparison.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from classifiers.labels import LabelSet
from classifiers.trained import TrainedHead, build_label_set, head_version, save_head
from evaluation import metrics, plots
from evaluation.backends import InProcessBackend, Scored
from evaluation.cache import ResultCache
from evaluation.dataset import DatasetError, Sample
from evaluation.fit import cross_validate, split_holdout, split_holdout_multilabel
from evaluation.run import RunOptions, _finish, _progress_bar
from evaluation.variants import BASELINE

ZERO_SHOT = "zero-shot"
MIN_PER_LABEL = 3  # images of each label (each attribute: with and without it), at least
MIN_IMAGES = 10


@dataclass(frozen=True)
class TrainOptions:
    dataset: str
    name: str
    head_file: Path
    out_dir: Path
    kind: str = "exclusive"
    unsafe: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # the label order; default: sorted dataset labels
    none_label: str = "none"  # attributes: images with this label have none of the attributes
    init: LabelSet | None = None  # a zero-shot classifier to start from
    description: str = ""
    holdout: float = 0.2
    target_precision: float | None = None
    target_recall: float | None = None
    cache: str | None = None
    batch_size: int = 32
    progress: bool = True


def targets(samples: list[Sample], opts: TrainOptions) -> tuple[list[str], LabelSet, np.ndarray, np.ndarray]:
    """Sources (one row each), the head's label set, targets and strata.

    Exclusive: ``y`` is a label index per image. Attributes: the rows of one source are merged
    (an image may carry several attributes); ``y`` is a 0/1 matrix, ``none_label`` rows none.
    """
    exclusive = opts.kind == "exclusive"
    if opts.init is not None:
        names = list(opts.init.label_names)
    else:
        found = sorted({s.label for s in samples} - ({opts.none_label} if not exclusive else set()))
        names = list(opts.labels) or found
    unknown = sorted({s.label for s in samples} - set(names) - ({opts.none_label} if not exclusive else set()))
    if unknown:
        raise DatasetError(f"dataset labels {unknown} are not labels of the head {names}; rename them with "
                           "--map DATASET_LABEL=LABEL (or =- to leave a class out)")
    unsafe = list(opts.init.unsafe) if opts.init is not None and not opts.unsafe else list(opts.unsafe)
    threshold = opts.init.threshold if opts.init is not None else 0.5
    try:
        label_set = build_label_set(opts.name, opts.kind, names, unsafe, threshold, opts.description)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    if opts.init is not None:  # keep its prompts: the zero-shot comparison then is that classifier
        label_set = replace(opts.init, name=opts.name, description=opts.description or opts.init.description,
                            unsafe=tuple(unsafe))
    sources = list(dict.fromkeys(s.source for s in samples))
    row = {source: i for i, source in enumerate(sources)}
    if exclusive:
        y = np.zeros(len(sources), int)
        seen: dict[str, str] = {}
        for s in samples:
            if seen.setdefault(s.source, s.label) != s.label:
                raise DatasetError(f"{s.source} is labelled both {seen[s.source]!r} and {s.label!r}; an "
                                   "exclusive head needs one label per image (or train --kind attributes)")
            y[row[s.source]] = names.index(s.label)
        strata = y.copy()
        counts = np.bincount(y, minlength=len(names))
        short = [n for n, c in zip(names, counts) if c < MIN_PER_LABEL]
    else:
        y = np.zeros((len(sources), len(names)), int)
        for s in samples:
            if s.label != opts.none_label:
                y[row[s.source], names.index(s.label)] = 1
        strata = np.unique(y, axis=0, return_inverse=True)[1].reshape(-1)
        positives = y.sum(axis=0)
        short = [n for n, c in zip(names, positives) if c < MIN_PER_LABEL or len(y) - c < MIN_PER_LABEL]
    if short or len(sources) < MIN_IMAGES:
        raise DatasetError(f"too few images to train and measure a head: {len(sources)} images; every label "
                           f"needs at least {MIN_PER_LABEL} images" + (" with and without it" if not exclusive else "")
                           + (f" (short: {short})" if short else "") + f", and the set at least {MIN_IMAGES}")
    return sources, label_set, y, strata


def zero_shot_prior(label_set: LabelSet, encoder) -> tuple[np.ndarray, np.ndarray]:
    """The zero-shot classifier's own logits as linear weights: ``(W, b)`` such that
    ``W @ embedding + b`` are the logits ``classifiers.scoring`` turns into its scores."""
    from classifiers.heads import build_head

    head = build_head(label_set, encoder.encode_text)
    rule = encoder.logits
    if label_set.kind == "exclusive":
        w = rule.scale * head.matrix
        return w, np.full(len(w), rule.bias)
    pos, neg = head.matrix[0::2], head.matrix[1::2]
    if rule.sigmoid:  # SigLIP: the label's own logit
        return rule.scale * pos, np.full(len(pos), rule.bias)
    return rule.scale * (pos - neg), np.zeros(len(pos))  # CLIP: label against its negation


def unsafe_view(label_set: LabelSet, y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(1 where the image is unsafe, the unsafe score as the service computes it) or None."""
    if not label_set.unsafe:
        return None
    idx = [label_set.label_names.index(u) for u in label_set.unsafe]
    if label_set.kind == "exclusive":
        return np.isin(y, idx).astype(int), probs[:, idx].sum(axis=1)
    return (y[:, idx].max(axis=1) > 0).astype(int), probs[:, idx].max(axis=1)


def choose_threshold(label_set: LabelSet, y: np.ndarray, oof: np.ndarray, opts: TrainOptions) -> dict:
    """The flag threshold from out-of-fold scores of the training images, for the target."""
    view = unsafe_view(label_set, y, oof)
    rule = {"threshold": label_set.threshold, "rule": "default", "target": None}
    if view is None or not (opts.target_precision or opts.target_recall):
        return rule
    positives, scores = view
    if opts.target_precision:
        found = metrics.threshold_for_precision(positives, scores, opts.target_precision)
        rule.update(rule="target_precision", target=opts.target_precision)
    else:
        found = metrics.threshold_for_recall(positives, scores, opts.target_recall)
        rule.update(rule="target_recall", target=opts.target_recall)
    if found is None:
        rule["unreachable"] = True  # kept at the default; the report says so
    else:
        rule["threshold"] = float(min(1.0, max(1e-6, round(found["threshold"], 6))))
        rule["out_of_fold"] = found
    return rule


def train(samples: list[Sample], encoder, opts: TrainOptions) -> dict:
    """Fit, save and report one head; returns the report (also written to ``opts.out_dir``)."""
    from classifiers.fingerprint import fingerprint

    sources, label_set, y_all, strata_all = targets(samples, opts)
    with ResultCache(opts.cache) as cache:
        backend = InProcessBackend(encoder, cache, batch_size=opts.batch_size)
        with _progress_bar(len(sources), opts.progress, "images") as bar:
            embedded, errors = backend.embed([Sample(s, "") for s in sources], bar.update)
    ok = np.array([e is not None for e in embedded])
    if not ok.all():
        kept = np.flatnonzero(ok)
        sources_ok = [sources[i] for i in kept]
        y, strata = y_all[kept], strata_all[kept]
        try:  # the same labels: one whose images all failed must be reported, not dropped
            _, label_set, y, strata = targets(_rows(sources_ok, label_set, y, opts),
                                              replace(opts, labels=tuple(label_set.label_names)))
        except DatasetError as exc:
            raise DatasetError(f"{len(errors)} images could not be read or decoded; {exc}") from None
    else:
        sources_ok, y, strata = sources, y_all, strata_all
    x = np.stack([np.atleast_2d(e)[0] for e in embedded if e is not None]).astype(np.float32)
    exclusive = label_set.kind == "exclusive"
    train_idx, held_idx = (split_holdout(strata, opts.holdout) if exclusive
                           else split_holdout_multilabel(y, opts.holdout))
    prior = zero_shot_prior(label_set, encoder) if opts.init is not None else None
    cv = cross_validate(x[train_idx], y[train_idx], strata[train_idx], exclusive, len(label_set.labels), prior)
    rule = choose_threshold(label_set, y[train_idx], cv.out_of_fold, opts)
    label_set = replace(label_set, threshold=rule["threshold"])
    meta = {
        "model": {**{k: encoder.info()[k] for k in ("checkpoint", "family", "architecture", "embedding_dim")},
                  "dtype": str(encoder.dtype).removeprefix("torch.")},
        "training": {
            "dataset": opts.dataset, "images": len(sources_ok), "train_images": int(len(train_idx)),
            "heldout_images": int(len(held_idx)), "label_counts": _counts(label_set, y),
            "init": opts.init.name if opts.init is not None else None, "l2": cv.fit.l2,
            "l2_out_of_fold_log_loss": {f"{k:g}": round(v, 5) for k, v in cv.losses.items()},
            "threshold_rule": rule, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    head = TrainedHead(label_set, cv.fit.weight, cv.fit.bias, fingerprint(encoder), meta)
    held_embeddings = [x[i] for i in held_idx]
    trained = backend.score(head, held_embeddings)
    zero_shot = backend.score(label_set, held_embeddings)
    head_metrics = _metrics(label_set, y[held_idx], trained, zero_shot)
    head = replace(head, meta={**meta, "metrics": head_metrics})
    head = replace(head, version=head_version(head))  # what save_head will write
    header = {"mode": "in-process", "model": encoder.name, "temperature_applied": 1.0, "max_frames": 1,
              "cache": {"path": opts.cache, "images_encoded": backend.encoded_images,
                        "images_from_cache": len(sources) - len(errors) - backend.encoded_images},
              "training": {**meta["training"], "head_file": str(opts.head_file), "version": head.version,
                           "metrics": head_metrics, "name": label_set.name, "kind": label_set.kind}}
    failed = [sources[i] for i in sorted(errors)]
    if exclusive:
        held = [Sample(sources_ok[i], label_set.label_names[y[i]]) for i in held_idx]
        all_rows = held + [Sample(s, "") for s in failed]
        run_opts = RunOptions(dataset=opts.dataset, out_dir=opts.out_dir, target_precision=opts.target_precision,
                              target_recall=opts.target_recall)
        report = _finish(all_rows, label_set, {BASELINE: trained, ZERO_SHOT: zero_shot},
                         list(range(len(held))), {len(held) + j: errors[i] for j, i in enumerate(sorted(errors))},
                         header, run_opts)
    else:
        report = _attributes_report(label_set, y[held_idx], trained, zero_shot, header,
                                    [{"source": sources[i], "error": errors[i]} for i in sorted(errors)], opts)
    save_head(head, opts.head_file)  # last: a replica may serve it the moment it lands
    return report


def _rows(sources: list[str], label_set: LabelSet, y: np.ndarray, opts: TrainOptions) -> list[Sample]:
    """Samples again for the images that could be read (to re-check the counts without the others)."""
    names = label_set.label_names
    if label_set.kind == "exclusive":
        return [Sample(s, names[int(v)]) for s, v in zip(sources, y)]
    rows = []
    for s, flags in zip(sources, y):
        rows += [Sample(s, names[j]) for j in np.flatnonzero(flags)] or [Sample(s, opts.none_label)]
    return rows


def _counts(label_set: LabelSet, y: np.ndarray) -> dict[str, int]:
    names = label_set.label_names
    if label_set.kind == "exclusive":
        return {n: int((y == i).sum()) for i, n in enumerate(names)}
    return {n: int(y[:, i].sum()) for i, n in enumerate(names)}


def _metrics(label_set: LabelSet, y: np.ndarray, trained: Scored, zero_shot: Scored) -> dict:
    """Held-out numbers the head file carries (and ``GET /v1/classifiers`` shows)."""
    out: dict = {"heldout_images": int(len(y))}
    names = label_set.label_names
    if label_set.kind == "exclusive":
        summary = metrics.classification_summary(y, trained.probs.argmax(axis=1), names)
        out.update(accuracy=round(summary["accuracy"], 4), macro_f1=round(summary["macro"]["f1"], 4),
                   zero_shot_accuracy=round(float((zero_shot.probs.argmax(axis=1) == y).mean()), 4))
    else:
        out["per_label"] = {
            n: {"roc_auc": _r(metrics.roc_auc(y[:, i], trained.probs[:, i])),
                "average_precision": _r(metrics.average_precision(y[:, i], trained.probs[:, i])),
                "zero_shot_roc_auc": _r(metrics.roc_auc(y[:, i], zero_shot.probs[:, i]))}
            for i, n in enumerate(names)}
        out["accuracy"] = round(float(((trained.probs >= 0.5) == (y > 0)).mean()), 4)  # per label decision
        out["zero_shot_accuracy"] = round(float(((zero_shot.probs >= 0.5) == (y > 0)).mean()), 4)
    view = unsafe_view(label_set, y, trained.probs)
    if view is not None:
        positives, _ = view
        out.update(roc_auc=_r(metrics.roc_auc(positives, trained.unsafe)),
                   average_precision=_r(metrics.average_precision(positives, trained.unsafe)),
                   at_threshold={k: (round(v, 4) if isinstance(v, float) and k != "threshold" else v) for k, v
                                 in metrics.at_threshold(positives, trained.unsafe, label_set.threshold).items()})
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _attributes_report(label_set: LabelSet, y: np.ndarray, trained: Scored, zero_shot: Scored, header: dict,
                       failed: list[dict], opts: TrainOptions) -> dict:
    """report.json, report.md and plots for an attribute head (several labels per image)."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"dataset": opts.dataset, "classifier": label_set.name, "kind": "attributes",
              "labels": list(label_set.label_names), "unsafe_labels": list(label_set.unsafe), **header,
              "failed": failed}
    files = {}
    view = unsafe_view(label_set, y, trained.probs)
    if view is not None and 0 < view[0].sum() < len(view[0]):
        positives = view[0]
        files["pr_curve"] = plots.pr_png(
            opts.out_dir / "pr_curve.png", {"trained": (positives, trained.unsafe), ZERO_SHOT: (positives, zero_shot.unsafe)},
            {"threshold in force": metrics.at_threshold(positives, trained.unsafe, label_set.threshold)},
            f"{label_set.name}: unsafe vs safe (held out)").name
        files["score_histogram"] = plots.histogram_png(
            opts.out_dir / "score_histogram.png", {"safe images": trained.unsafe[positives == 0],
                                                   "unsafe images": trained.unsafe[positives == 1]},
            label_set.threshold, "unsafe score", f"{label_set.name}: unsafe score by true class").name
    report["plots"] = files
    (opts.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    from evaluation.report import render_training

    (opts.out_dir / "report.md").write_text("\n".join(render_training(report)) + "\n", encoding="utf-8")
    return report


"""``moderation train``: a classifier from your own labelled images, as a head file to serve.

DATASET is laid out as for ``moderation evaluate``: a folder with one sub-folder per label, or
a .csv / .jsonl of ``path_or_url,label``. An exclusive head (default) learns one label per
image; an attribute head (``--kind attributes``) one yes/no per label, where an image listed
under several labels has them all and one labelled ``none`` has none. The head is written to
``--heads-dir`` (a service whose ``heads_dir`` is that folder picks it up without a restart)
with held-out metrics; the report (report.md, report.json, plots) goes to ``--out``.

Exit status: 0 done, 1 the model could not be loaded, 2 usage, dataset or write error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from evaluation.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, _fraction, _split


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moderation train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="folder per label, or a .csv / .jsonl of path_or_url,label")
    parser.add_argument("--name", "-n", required=True, help="the classifier's name in requests (a-z, 0-9, _ -)")
    parser.add_argument("--kind", choices=("exclusive", "attributes"), default="exclusive",
                        help="one label per image (softmax), or a yes/no per label (sigmoid)")
    parser.add_argument("--unsafe-labels", help="labels that flag an image, comma-separated")
    parser.add_argument("--init", metavar="BUILTIN",
                        help="start from this built-in zero-shot classifier (its labels, unsafe labels and "
                             "prompts): few examples then still help")
    parser.add_argument("--map", action="append", default=[], metavar="DATASET_LABEL=LABEL",
                        help="rename a dataset class; =- leaves it out (repeatable)")
    parser.add_argument("--none-label", default="none", help="attributes: the label of images with none")
    parser.add_argument("--description", default="", help="shown in GET /v1/classifiers")
    parser.add_argument("--target-precision", type=_fraction, help="flag threshold reaching this precision")
    parser.add_argument("--target-recall", type=_fraction, help="flag threshold reaching this recall")
    parser.add_argument("--heads-dir", default=os.environ.get("MODERATION_HEADS_DIR", "heads"),
                        help="where the head file goes (default: $MODERATION_HEADS_DIR or ./heads)")
    parser.add_argument("--out", "-o", help="report folder (default: train-report/NAME)")
    parser.add_argument("--cache", default=os.path.join(".cache", "moderation-eval.sqlite"),
                        help="embedding cache shared with `evaluate` ('none' for no cache)")
    parser.add_argument("--model", default=os.environ.get("MODERATION_MODEL"),
                        help="checkpoint id or local directory: the one the service serves")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.target_precision and args.target_recall:
        parser.error("give --target-precision or --target-recall, not both")
    if args.init and args.kind != "exclusive" and "--kind" in (argv or []):
        parser.error("--init takes the kind of the built-in it starts from; leave out --kind")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def _options(args: argparse.Namespace):
    from classifiers.registry import BUILTIN_CLASSIFIERS
    from classifiers.trained import HeadError, check_name, head_path
    from evaluation.dataset import DatasetError
    from evaluation.train import TrainOptions

    try:
        check_name(args.name, set(BUILTIN_CLASSIFIERS))
    except HeadError as exc:
        raise DatasetError(str(exc)) from None
    init = None
    if args.init:
        if args.init not in BUILTIN_CLASSIFIERS:
            raise DatasetError(f"--init {args.init!r}: not a built-in; known: {sorted(BUILTIN_CLASSIFIERS)}")
        init = BUILTIN_CLASSIFIERS[args.init]
    return TrainOptions(
        dataset=args.dataset, name=args.name, head_file=head_path(args.heads_dir, args.name),
        out_dir=Path(args.out or os.path.join("train-report", args.name)),
        kind=init.kind if init else args.kind, unsafe=tuple(_split(args.unsafe_labels)), init=init,
        none_label=args.none_label, description=args.description, target_precision=args.target_precision,
        target_recall=args.target_recall, cache=None if args.cache == "none" else args.cache,
        batch_size=args.batch_size, progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    from classifiers.errors import ModelLoadError, ModerationError
    from evaluation.dataset import DatasetError, load_samples, parse_label_map

    try:
        opts = _options(args)
        samples = _relabel(load_samples(args.dataset), parse_label_map(args.map))
        from classifiers.model import DEFAULT_MODEL, load_clip
        from evaluation.train import targets, train

        targets(samples, opts)  # labels and counts checked before the model is loaded
        _check_writable(opts.out_dir, opts.head_file.parent)

        logging.basicConfig(level=logging.WARNING)
        encoder = load_clip(args.model or DEFAULT_MODEL, args.device, args.dtype)
        report = train(samples, encoder, opts)
    except (DatasetError, ModerationError) as exc:
        print(f"moderation train: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as exc:
        print(f"moderation train: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as exc:  # the report or the head could not be written
        print(f"moderation train: cannot write {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(summary_line(report, opts.out_dir))
    return EXIT_OK


def _check_writable(*folders: Path) -> None:
    """Create the report and heads folders now, so a bad path fails before any work."""
    from evaluation.dataset import DatasetError

    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create {folder}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK):
            raise DatasetError(f"cannot write to {folder}")


def _relabel(samples, mapping: dict[str, str]):
    """``--map`` applied; ``=-`` drops a class (the labels are checked against the head later)."""
    from evaluation.dataset import Sample

    out = [Sample(s.source, mapping.get(s.label, s.label)) for s in samples]
    return [s for s in out if s.label != "-"]


def summary_line(report: dict, out: Path) -> str:
    t = report["training"]
    m = t["metrics"]
    parts = [f"{t['name']}: held-out accuracy {m['accuracy']:.3f} on {t['heldout_images']} images "
             f"(zero-shot {m['zero_shot_accuracy']:.3f})"]
    if m.get("roc_auc") is not None:
        parts.append(f"ROC-AUC {m['roc_auc']:.3f}")
    parts.append(f"threshold {t['threshold_rule']['threshold']:.4g}")
    return "; ".join(parts) + f"; head: {t['head_file']} (version {t['version']}); report: {out / 'report.md'}"


if __name__ == "__main__":
    sys.exit(main())

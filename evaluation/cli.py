"""``moderation evaluate``: accuracy of one classifier on a labelled image set.

DATASET is a folder with one sub-folder per class, or a .csv / .jsonl of ``path_or_url,label``.
The classifier is a built-in (``-c nudity``) or your own labels (``--labels "a cat,a dog"``).
By default it runs the service's own code in this process (``--model``); ``--server URL``
asks a running service instead. Writes report.md, report.json and PNG plots to ``--out``.

Exit status: 0 done, 1 the model or server could not be used, 2 usage or dataset error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE = 0, 1, 2


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moderation evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="folder per class, or a .csv / .jsonl of path_or_url,label")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--classifier", "-c", help="a built-in classifier (an exclusive one), or with --server "
                       "any classifier the server serves, trained heads included")
    which.add_argument("--head", metavar="FILE", help="a trained head file (`moderation train`), in-process")
    which.add_argument("--labels", help='custom labels, comma-separated: "a cat,a dog"')
    parser.add_argument("--unsafe-labels", help="which custom labels count as unsafe (binary view)")
    parser.add_argument("--map", action="append", default=[], metavar="DATASET_LABEL=LABEL",
                        help="rename a dataset class to a classifier label; =- leaves it out (repeatable)")
    parser.add_argument("--threshold", type=_fraction, help="evaluate at this flag threshold")
    parser.add_argument("--target-precision", type=_fraction, help="find the threshold reaching this precision")
    parser.add_argument("--target-recall", type=_fraction, help="find the threshold reaching this recall")
    parser.add_argument("--variants", help="YAML/JSON of prompt variants to compare (in-process only)")
    parser.add_argument("--calibrate", metavar="FILE",
                        help="fit a temperature and add it to this calibration file (in-process, built-ins)")
    parser.add_argument("--calibration", metavar="FILE", help="apply this calibration file, as the service would")
    parser.add_argument("--out", "-o", default="eval-report", help="report folder (default: eval-report)")
    parser.add_argument("--cache", default=os.path.join(".cache", "moderation-eval.sqlite"),
                        help="embedding/answer cache file (default: .cache/moderation-eval.sqlite); "
                             "'none' for no cache")
    parser.add_argument("--model", default=os.environ.get("MODERATION_MODEL"),
                        help="checkpoint id or local directory (default: $MODERATION_MODEL or "
                             "openai/clip-vit-base-patch32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=1)
    parser.add_argument("--server", help="evaluate a running service at this URL instead")
    parser.add_argument("--api-key", default=os.environ.get("MODERATION_API_KEY"))
    parser.add_argument("--concurrency", "-j", type=int, default=32,
                        help="--server: images in flight, sent up to 16 per request (default 32)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.unsafe_labels and not args.labels:
        parser.error("--unsafe-labels applies to --labels")
    if args.head and (args.server or args.variants or args.calibrate or args.calibration):
        parser.error("--head scores a head file in-process: leave out --server, --variants and calibration")
    if args.server and (args.variants or args.calibrate or args.calibration):
        parser.error("--variants, --calibrate and --calibration need embeddings: run in-process "
                     "(a server returns scores only)")
    if args.calibrate and args.labels:
        parser.error("--calibrate fits built-in classifiers (the service applies the file to them)")
    if args.batch_size < 1 or args.concurrency < 1 or not 1 <= args.max_frames <= 16:
        parser.error("--batch-size and --concurrency must be >= 1, --max-frames 1-16")
    return args


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def _label_set(args: argparse.Namespace, client=None):
    from classifiers.labels import custom_label_set
    from classifiers.registry import BUILTIN_CLASSIFIERS
    from evaluation.dataset import DatasetError

    if args.labels:
        return custom_label_set(_split(args.labels), _split(args.unsafe_labels),
                                0.5 if args.threshold is None else args.threshold)
    if args.head:
        return _head(args.head).label_set
    if args.classifier not in BUILTIN_CLASSIFIERS and client is not None:
        return _served_label_set(client, args.classifier)
    if args.classifier not in BUILTIN_CLASSIFIERS:
        raise DatasetError(f"unknown classifier {args.classifier!r}; known: {sorted(BUILTIN_CLASSIFIERS)} "
                           "(a trained head: --head FILE, or --server URL of a service that serves it)")
    label_set = BUILTIN_CLASSIFIERS[args.classifier]
    if label_set.kind != "exclusive":
        raise DatasetError(f"{label_set.name} scores each attribute on its own (several may hold per "
                           "image); evaluate exclusive classifiers, or its attributes as --labels")
    return label_set


def _head(path: str):
    from classifiers.trained import HeadError, load_head
    from evaluation.dataset import DatasetError

    try:
        head = load_head(path)
    except HeadError as exc:
        raise DatasetError(str(exc)) from None
    if head.label_set.kind != "exclusive":
        raise DatasetError(f"{head.name} is an attribute head: its report from `moderation train` measures "
                           "each label on held-out images; evaluate exclusive heads here")
    return head


def _served_label_set(client, name: str):
    """The label set of a trained head that the server serves (from its catalog)."""
    from classifiers.trained import build_label_set
    from evaluation.dataset import DatasetError

    served = {c.name: c for c in client.classifiers().classifiers}
    info = served.get(name)
    if info is None:
        raise DatasetError(f"unknown classifier {name!r}; the server serves {sorted(served)}")
    if info.kind != "trained" or info.label_kind != "exclusive":
        raise DatasetError(f"{name} is not an exclusive classifier; evaluate exclusive ones")
    return build_label_set(name, "exclusive", info.labels, info.unsafe_labels, info.threshold)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    from classifiers.errors import ModelLoadError, ModerationError
    from clients.errors import ModerationAPIError, ModerationConnectionError
    from evaluation.dataset import DatasetError, load_samples, parse_label_map, relabel
    from evaluation.run import RunOptions, run_in_process, run_on_server
    from evaluation.variants import load_variants

    try:
        client = None
        if args.server:
            from clients.http import ModerationClient

            client = ModerationClient(args.server, api_key=args.api_key)
            if not client.healthy():
                raise ModerationConnectionError(f"no healthy service at {args.server} (GET /healthz)")
        label_set = _label_set(args, client)
        samples = relabel(load_samples(args.dataset), label_set.label_names, parse_label_map(args.map))
        variants = tuple(load_variants(args.variants, label_set)) if args.variants else ()
        opts = RunOptions(
            dataset=args.dataset, out_dir=Path(args.out), custom=bool(args.labels), variants=variants,
            target_precision=args.target_precision, target_recall=args.target_recall,
            threshold=args.threshold, calibration=args.calibration, calibrate=args.calibrate,
            cache=None if args.cache == "none" else args.cache, batch_size=args.batch_size,
            max_frames=args.max_frames, concurrency=args.concurrency, progress=not args.quiet,
        )
        if client is not None:
            with client:
                report = run_on_server(samples, label_set, client, args.server, opts)
        else:
            from classifiers.model import DEFAULT_MODEL, load_clip

            logging.basicConfig(level=logging.WARNING)
            encoder = load_clip(args.model or DEFAULT_MODEL, args.device, args.dtype)
            head = None
            if args.head:
                from classifiers.fingerprint import fingerprint
                from classifiers.trained import HeadError

                head = _head(args.head)
                try:
                    head.check_model(fingerprint(encoder), encoder.name)
                except HeadError as exc:
                    raise DatasetError(str(exc)) from None
            report = run_in_process(samples, label_set, encoder, opts, head)
    except (DatasetError, ModerationError) as exc:
        print(f"moderation evaluate: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelLoadError, ModerationConnectionError, ModerationAPIError) as exc:
        print(f"moderation evaluate: {exc}", file=sys.stderr)  # no weights, or no server
        return EXIT_UNAVAILABLE
    if not args.quiet:
        print(summary_line(report, Path(args.out)))
    return EXIT_OK


def summary_line(report: dict, out: Path) -> str:
    base = report["variants"]["baseline"]
    parts = [f"{report['classifier']}: accuracy {base['accuracy']:.3f}, macro F1 {base['macro']['f1']:.3f}"]
    auc = (base.get("binary") or {}).get("roc_auc")
    if auc is not None:
        parts.append(f"ROC-AUC {auc:.3f}")
    if report.get("winner"):
        parts.append(f"best variant: {report['winner']}")
    if report.get("calibration"):
        c = report["calibration"]
        parts.append(f"temperature {c['temperature']:.4g} (held-out ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f})")
    return "; ".join(parts) + f"; report: {out / 'report.md'}"


if __name__ == "__main__":
    sys.exit(main())

"""``moderation backfill`` and ``moderation rescore``: moderate stored images in bulk on Ray Data,
and re-score a backfill's stored embeddings with today's classifiers.

Exit status: 0 done; 1 the job failed; 2 usage (bad arguments, unreadable source list).
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="serve_config.yaml whose first application's args to use "
                        "(model, thresholds, heads_dir, calibration, policies, faces, fetch limits); default: "
                        "the service's defaults and MODERATION_* environment variables")
    parser.add_argument("--model", help="checkpoint (hub id or directory), over the config's")
    parser.add_argument("--classifier", "-c", action="append", dest="classifiers",
                        help="classifier to run (repeatable; default: all, trained heads included)")
    parser.add_argument("--labels", help="custom labels, comma-separated (the `custom` classifier)")
    parser.add_argument("--unsafe-labels", default="", help="which custom labels flag, comma-separated")
    parser.add_argument("--threshold", type=float, help="flag threshold for the custom labels")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", dest="fmt")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moderation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    backfill = commands.add_parser("backfill", help="moderate stored images into a table")
    backfill.add_argument("source", help="a folder tree, a .txt/.csv/.parquet list of paths or URLs, "
                          "or s3://bucket/prefix, gs://bucket/prefix")
    backfill.add_argument("--out", required=True, help="the table: a folder of part files (a rerun skips "
                          "sources already in it)")
    backfill.add_argument("--embeddings", action="store_true", help="store each image's embedding (for rescore)")
    backfill.add_argument("--address", help="a Ray cluster to run on (default: start Ray here)")
    backfill.add_argument("--actors", type=int, default=1, help="scoring actors (model copies)")
    backfill.add_argument("--cpus-per-actor", type=float, help="default: the cluster's CPUs / actors, less 0.5")
    backfill.add_argument("--gpus-per-actor", type=float, default=0.0)
    backfill.add_argument("--batch-size", type=int, default=64, help="images an actor takes at once")
    backfill.add_argument("--part-rows", type=int, default=500, help="rows per part file written")
    backfill.add_argument("--no-progress", action="store_true")
    _model_options(backfill)
    rescore = commands.add_parser("rescore", help="re-score a backfill table's embeddings")
    rescore.add_argument("table", help="a backfill table made with --embeddings")
    rescore.add_argument("--out", required=True, help="the new table (a folder of part files)")
    _model_options(rescore)
    return parser.parse_args(argv)


def _args(namespace: argparse.Namespace) -> dict:
    from backfill.job import service_args

    overrides: dict = {}
    if namespace.config:
        import yaml

        with open(namespace.config) as fh:
            overrides = dict(yaml.safe_load(fh)["applications"][0].get("args") or {})
    if namespace.model:
        overrides["model"] = namespace.model
    return service_args(overrides)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _check_request(request: dict, settings: dict, args: argparse.Namespace) -> str | None:
    """What would make every row an error, found before a job starts (a typo in ``-c``)."""
    from classifiers.errors import ModerationError
    from classifiers.labels import custom_label_set
    from classifiers.registry import BUILTIN_CLASSIFIERS

    if getattr(args, "part_rows", 1) < 1 or getattr(args, "batch_size", 1) < 1 or getattr(args, "actors", 1) < 1:
        return "--part-rows, --batch-size and --actors must be at least 1"
    unknown = [c for c in request["classifiers"] or () if c not in BUILTIN_CLASSIFIERS]
    if unknown and not settings.get("heads_dir"):
        return f"unknown classifier(s) {unknown}; built-in: {sorted(BUILTIN_CLASSIFIERS)} (trained heads need heads_dir)"
    if request["labels"]:
        try:
            custom_label_set(request["labels"], request["unsafe_labels"],
                             0.5 if request["threshold"] is None else request["threshold"])
        except ModerationError as error:
            return error.message
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import logging

    # Ray Data logs each operator's progress at INFO; the command shows its own bar and summary.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    from pydantic import ValidationError

    try:
        settings = _args(args)
    except (OSError, ValueError, KeyError, ValidationError) as exc:
        print(f"moderation {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    request = {"classifiers": args.classifiers, "labels": _split(args.labels) or None,
               "unsafe_labels": tuple(_split(args.unsafe_labels)), "threshold": args.threshold}
    problem = _check_request(request, settings, args)
    if problem:
        print(f"moderation {args.command}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "backfill":
            from backfill.job import BackfillOptions, run_backfill

            options = BackfillOptions(
                source=args.source, out=args.out, fmt=args.fmt, classifiers=args.classifiers,
                labels=request["labels"], unsafe_labels=list(request["unsafe_labels"]), threshold=args.threshold,
                embeddings=args.embeddings, address=args.address, actors=args.actors,
                cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                batch_size=args.batch_size, part_rows=args.part_rows, progress=not args.no_progress)
            run_backfill(options, settings, out=sys.stdout)
        else:
            from backfill.job import rescore_table

            rescore_table(args.table, args.out, args.fmt, settings, request, printer=sys.stdout)
    except ValueError as exc:  # an unreadable source list, a table without embeddings
        print(f"moderation {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``moderation``: classify files, folders, URLs or a list on stdin against a running service.

Exit status: 0 nothing flagged, 1 something flagged, 2 usage error, 3 some images failed
(and nothing was flagged) - so a pre-upload hook can say ``moderation classify "$f" || reject``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from clients import heads_cli
from clients.core import is_url
from clients.http import ModerationClient
from clients.results import ManyResult

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
EXIT_CLEAN, EXIT_FLAGGED, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3
PROGRESS_MIN = 6  # a progress bar for more than a handful of images


def expand_inputs(items: Iterable[str], stdin=sys.stdin) -> Iterator[str]:
    """Files, directories (recursively, image suffixes only), URLs, and ``-`` for stdin lines."""
    for item in items:
        if item == "-":
            yield from expand_inputs([line.strip() for line in stdin if line.strip()], stdin)
        elif is_url(item):
            yield item
        elif os.path.isdir(item):
            for path in sorted(Path(item).rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(path)
        else:
            yield item  # a missing file is reported in its row, not fatal


def row_of(result: ManyResult) -> dict:
    """One flat record per image, for every output format."""
    if result.error is not None:
        code = getattr(result.error, "code", type(result.error).__name__)
        message = getattr(result.error, "message", str(result.error))
        return {"source": str(result.source), "ok": False, "flagged": None,
                "error": {"code": code, "message": message,
                          "request_id": getattr(result.error, "request_id", None)},
                "results": None}
    response = result.response
    return {"source": str(result.source), "ok": True, "flagged": response.flagged, "error": None,
            "request_id": response.request_id, "action": response.action,
            "results": {name: r.model_dump() for name, r in response.results.items()},
            "faces": None if response.faces is None else [f.model_dump() for f in response.faces],
            "policies": [p.name for p in response.policies]}


def write_jsonl(rows: list[dict], out) -> None:
    for row in rows:
        out.write(json.dumps(row) + "\n")


def write_csv(rows: list[dict], out) -> None:
    names = sorted({name for row in rows for name in (row["results"] or {})})
    columns = ["source", "ok", "flagged", "action", "faces", "policies", "error_code", "error_message"]
    for name in names:
        columns += [f"{name}.top_label", f"{name}.top_score", f"{name}.unsafe_score", f"{name}.flagged"]
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for row in rows:
        faces = row.get("faces")
        flat = {"source": row["source"], "ok": row["ok"], "flagged": row["flagged"], "action": row.get("action") or "",
                "faces": "" if faces is None else len(faces), "policies": " ".join(row.get("policies") or ()),
                "error_code": (row["error"] or {}).get("code", ""),
                "error_message": (row["error"] or {}).get("message", "")}
        for name, r in (row["results"] or {}).items():
            flat.update({f"{name}.top_label": r["top_label"], f"{name}.top_score": r["top_score"],
                         f"{name}.unsafe_score": r["unsafe_score"], f"{name}.flagged": r["flagged"]})
        writer.writerow(flat)


def write_table(rows: list[dict], out) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("image", "verdict", "top labels")
    for row in rows:
        if not row["ok"]:
            table.add_row(escape(row["source"]), "[yellow]error[/]",
                          escape(f"{row['error']['code']}: {row['error']['message']}"))
            continue
        verdict = "[red]FLAGGED[/]" if row["flagged"] else "[green]ok[/]"
        if row.get("action"):
            verdict += f" ({row['action']}" + "".join(f", {p}" for p in row.get("policies") or ()) + ")"
        tops = ", ".join(
            f"{name}: {r['top_label']} {r['top_score']:.2f}" + (" (flagged)" if r["flagged"] else "")
            for name, r in row["results"].items()
        )
        if row.get("faces") is not None:
            tops += f", faces: {len(row['faces'])}"
        table.add_row(escape(row["source"]), verdict, escape(tops))
    Console(file=out, soft_wrap=False).print(table)


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "table": write_table}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moderation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify images")
    classify.add_argument("inputs", nargs="+", metavar="PATH_OR_URL",
                          help="files, directories (recursive), http(s) URLs, or - for stdin")
    classify.add_argument("--classifier", "-c", action="append", dest="classifiers",
                          help="built-in classifier to run (repeatable; default: all)")
    classify.add_argument("--labels", help='custom labels, comma-separated: "a cat,a dog"')
    classify.add_argument("--unsafe-labels", help="which custom labels count as unsafe")
    classify.add_argument("--threshold", type=float, help="flag threshold for the custom labels")
    classify.add_argument("--server", default=os.environ.get("MODERATION_URL", "http://127.0.0.1:8000"))
    classify.add_argument("--api-key", default=os.environ.get("MODERATION_API_KEY"))
    classify.add_argument("--concurrency", "-j", type=int, default=2,
                          help="requests in flight (default 2)")
    classify.add_argument("--batch-size", "-b", type=int, default=16,
                          help="images per request (default 16; 1: one request per image)")
    classify.add_argument("--format", "-f", choices=sorted(WRITERS),
                          help="default: table on a terminal, else jsonl")
    classify.add_argument("--output", "-o", help="write here instead of stdout")
    classify.add_argument("--flagged-only", action="store_true", help="print flagged images only")
    heads_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command != "classify":
        return args
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if (args.unsafe_labels or args.threshold is not None) and not args.labels:
        parser.error("--unsafe-labels and --threshold apply to --labels")
    return args


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_CLEAN
    if args.command == "heads":
        return heads_cli.main(args)
    inputs = list(expand_inputs(args.inputs))
    if not inputs:
        print("moderation: no images found", file=sys.stderr)
        return EXIT_USAGE
    options = {"classifiers": args.classifiers, "labels": _split(args.labels),
               "unsafe_labels": _split(args.unsafe_labels), "threshold": args.threshold}
    try:
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    except OSError as exc:
        print(f"moderation: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = _classify(inputs, args, options)
    shown = [r for r in rows if r["flagged"]] if args.flagged_only else rows
    try:
        fmt = args.format or ("table" if out.isatty() else "jsonl")
        WRITERS[fmt](shown, out)
    finally:
        if args.output:
            out.close()
    if any(r["flagged"] for r in rows):
        return EXIT_FLAGGED
    return EXIT_ERRORS if any(not r["ok"] for r in rows) else EXIT_CLEAN


def _classify(inputs: list[str], args: argparse.Namespace, options: dict) -> list[dict]:
    from tqdm import tqdm

    rows: list[dict | None] = [None] * len(inputs)
    with ModerationClient(args.server, api_key=args.api_key) as client, tqdm(
        total=len(inputs), unit="img", file=sys.stderr, disable=len(inputs) < PROGRESS_MIN or None,
    ) as progress:
        for result in client.classify_many(inputs, concurrency=args.concurrency, batch_size=args.batch_size,
                                           **options):
            rows[result.index] = row_of(result)
            progress.update()
    return [row for row in rows if row is not None]


if __name__ == "__main__":
    sys.exit(main())

"""``moderation banks``: manage a running service's hash banks (an admin API key when keys are on).

    moderation banks create removed-before --action block
    moderation banks add removed-before --image photo.jpg --entry-id case-1234
    moderation banks import removed-before hashes.tsv
    moderation banks list

Exit status: 0 done, 2 usage error, 3 the service could not be reached or answered with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_USAGE, EXIT_FAILED = 0, 2, 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moderation banks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("MODERATION_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("MODERATION_API_KEY"))
    parser.add_argument("--json", action="store_true", help="print JSON")
    which = parser.add_subparsers(dest="banks_command", required=True)
    which.add_parser("list", help="every bank, its action and size")
    create = which.add_parser("create", help="a new bank")
    create.add_argument("name")
    create.add_argument("--action", required=True, choices=("block", "review", "allow"))
    create.add_argument("--description", default="")
    update = which.add_parser("update", help="change a bank's action or description")
    update.add_argument("name")
    update.add_argument("--action", choices=("block", "review", "allow"))
    update.add_argument("--description")
    which.add_parser("delete", help="delete a bank and its entries").add_argument("name")
    add = which.add_parser("add", help="add hashes, or the hashes of image files (made here, as the service makes them)")
    add.add_argument("name")
    add.add_argument("hashes", nargs="*", metavar="HASH", help="64 hex digits each")
    add.add_argument("--image", action="append", default=[], help="an image file: adds its PDQ hash (repeatable)")
    add.add_argument("--kind", default="pdq", choices=("pdq", "sha256"), help="kind of the HASH arguments")
    add.add_argument("--sha256", action="store_true", help="with --image: add its SHA-256 as well")
    add.add_argument("--entry-id", help="your id for these entries (e.g. a case number)")
    add.add_argument("--note")
    entries = which.add_parser("entries", help="list a bank's entries")
    entries.add_argument("name")
    entries.add_argument("--after", type=int, default=0)
    entries.add_argument("--limit", type=int, default=100)
    remove = which.add_parser("remove", help="remove entries by pk, entry id or hash")
    remove.add_argument("name")
    remove.add_argument("--pk", type=int, action="append", default=[])
    remove.add_argument("--entry-id", action="append", default=[])
    remove.add_argument("--hash", action="append", default=[], metavar="KIND:HEX", help="e.g. pdq:f8f8...")
    imp = which.add_parser("import", help="add every hash of a CSV/TSV file (ThreatExchange style)")
    imp.add_argument("name")
    imp.add_argument("file", help="a .csv or .tsv file, or - for stdin")
    imp.add_argument("--kind", default="pdq", choices=("pdq", "sha256"), help="kind of rows that name none")
    exp = which.add_parser("export", help="write a bank as TSV (or CSV) that import reads back")
    exp.add_argument("name")
    exp.add_argument("--format", default="tsv", choices=("tsv", "csv"))
    exp.add_argument("--output", "-o", help="write here instead of stdout")
    return parser.parse_args(argv)


def _image_entries(args: argparse.Namespace) -> list[dict]:
    from banks.hashes import PDQ_MIN_QUALITY, file_hashes

    entries = []
    for path in args.image:
        hashes = file_hashes(path)
        note = args.note or os.path.basename(path)
        if hashes.pdq_quality is not None and hashes.pdq_quality < PDQ_MIN_QUALITY:
            print(f"moderation banks: {path}: PDQ quality {hashes.pdq_quality} is below {PDQ_MIN_QUALITY}: "
                  "the service matches such images by SHA-256 only (add --sha256)", file=sys.stderr)
        entries.append({"kind": "pdq", "hash": hashes.pdq, "entry_id": args.entry_id, "note": note})
        if args.sha256:
            entries.append({"kind": "sha256", "hash": hashes.sha256, "entry_id": args.entry_id, "note": note})
    return entries


def _show(value, as_json: bool, out) -> None:
    if as_json:
        out.write(json.dumps(value, indent=2) + "\n")
        return
    for row in value if isinstance(value, list) else [value]:
        out.write("  ".join(f"{k}={v}" for k, v in row.items() if v not in (None, "")) + "\n")


def run(args: argparse.Namespace, out) -> int:
    from clients.http import ModerationClient

    with ModerationClient(args.server, api_key=args.api_key) as client:
        banks, name = client.banks, getattr(args, "name", None)
        command = args.banks_command
        if command == "list":
            _show([b.model_dump() for b in banks.list()], args.json, out)
        elif command == "create":
            _show(banks.create(name, args.action, args.description).model_dump(), args.json, out)
        elif command == "update":
            _show(banks.update(name, args.action, args.description).model_dump(), args.json, out)
        elif command == "delete":
            banks.delete(name)
            _show({"deleted": name}, args.json, out)
        elif command == "add":
            entries = [{"kind": args.kind, "hash": h, "entry_id": args.entry_id, "note": args.note}
                       for h in args.hashes] + _image_entries(args)
            if not entries:
                print("moderation banks add: give HASH arguments or --image files", file=sys.stderr)
                return EXIT_USAGE
            _show(banks.add(name, entries).model_dump(), args.json, out)
        elif command == "entries":
            _show([e.model_dump() for e in banks.entries(name, args.after, args.limit).entries], args.json, out)
        elif command == "remove":
            pairs = [tuple(h.split(":", 1)) if ":" in h else ("pdq", h) for h in args.hash]
            _show({"removed": banks.remove(name, args.pk, args.entry_id, pairs)}, args.json, out)
        elif command == "import":
            source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
            with source:
                data = source.read()
            tsv = args.file.endswith(".tsv") or None
            _show(banks.import_text(name, data, args.kind, tsv).model_dump(), args.json, out)
        elif command == "export":
            if not args.output:
                for line in banks.export(name, args.format):
                    out.write(line + "\n")
                return EXIT_OK
            partial = f"{args.output}.partial"  # renamed once the whole bank has arrived
            with open(partial, "w", encoding="utf-8") as target:
                for line in banks.export(name, args.format):
                    target.write(line + "\n")
            os.replace(partial, args.output)
    return EXIT_OK


def main(argv: list[str] | None = None, out=None) -> int:
    import httpx

    from classifiers.errors import ModerationError
    from clients.errors import ModerationAPIError, ModerationConnectionError

    try:
        args = parse_args(sys.argv[2:] if argv is None else argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        return run(args, out or sys.stdout)
    except (ModerationConnectionError, ModerationAPIError, httpx.HTTPError) as exc:
        print(f"moderation banks: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ModerationError) as exc:  # a file that cannot be read or is not an image
        print(f"moderation banks: {exc}", file=sys.stderr)
        return EXIT_USAGE

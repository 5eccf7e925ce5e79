"""``moderation heads``: list trained heads (in a folder, or served by a running service) and
ask a service to reload them.

Exit status: 0 done, 1 a head file or the service reports a refused file, 2 usage error,
3 the service could not be reached or answered with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_parser(commands) -> None:
    heads = commands.add_parser("heads", help="list or reload trained heads (moderation heads --help)")
    which = heads.add_subparsers(dest="heads_command", required=True)
    listing = which.add_parser("list", help="the heads in --heads-dir, or those a --server serves")
    listing.add_argument("--heads-dir", default=os.environ.get("MODERATION_HEADS_DIR", "heads"))
    listing.add_argument("--server", help="list what this running service serves instead")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    reload = which.add_parser("reload", help="make the model replica that answers read its heads directory now "
                              "(the others follow at their next poll; with heads_poll_s 0, set heads_version)")
    reload.add_argument("--json", action="store_true")
    for sub in (listing, reload):
        sub.add_argument("--api-key", default=os.environ.get("MODERATION_API_KEY"))
    reload.add_argument("--server", default=os.environ.get("MODERATION_URL", "http://127.0.0.1:8000"))


def _local(heads_dir: str) -> tuple[list[dict], dict[str, str]]:
    from pathlib import Path

    from classifiers.registry import BUILTIN_CLASSIFIERS
    from classifiers.trained import SUFFIX, HeadError, load_head

    folder = Path(heads_dir).expanduser()
    if not folder.is_dir():
        return [], {str(folder): "no such folder"}
    heads, refused = [], {}
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX)):
        try:
            heads.append(load_head(path, set(BUILTIN_CLASSIFIERS)).summary())
        except HeadError as exc:
            refused[path.name] = str(exc)
    return heads, refused


def _served(server: str, api_key: str | None) -> tuple[list[dict], dict[str, str]]:
    from clients.http import ModerationClient

    with ModerationClient(server, api_key=api_key) as client:
        catalog = client.classifiers()
    heads = [c.model_dump() for c in catalog.classifiers if c.kind == "trained"]
    return heads, dict(catalog.heads.refused) if catalog.heads else {}


def _print(heads: list[dict], refused: dict[str, str], as_json: bool, out) -> None:
    if as_json:
        out.write(json.dumps({"heads": heads, "refused": refused}, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("head", "kind", "labels", "unsafe", "threshold", "held-out acc", "version")
    for h in heads:
        m = h.get("metrics") or {}
        measured = f"{m['accuracy']:.3f} ({m.get('heldout_images')})" if m.get("accuracy") is not None else ""
        table.add_row(escape(h["name"]), h.get("label_kind") or "", escape(", ".join(h["labels"])),
                      escape(", ".join(h["unsafe_labels"])), f"{h['threshold']:.4g}", measured,
                      (h.get("version") or "")[:8])
    console = Console(file=out, soft_wrap=False)
    console.print(table)
    for name, why in refused.items():
        console.print(f"[yellow]refused[/] {escape(name)}: {escape(why)}")


def main(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    from clients.errors import ModerationAPIError, ModerationConnectionError

    try:
        if args.heads_command == "reload":
            from clients.http import ModerationClient

            with ModerationClient(args.server, api_key=args.api_key) as client:
                status = client.reload_heads()
            if args.json:
                out.write(status.model_dump_json(indent=2) + "\n")
            else:
                out.write(f"heads version {status.version}: "
                          f"{', '.join(f'{n} ({v})' for n, v in status.loaded.items()) or 'none'}\n")
                for name, why in status.refused.items():
                    out.write(f"refused {name}: {why}\n")
            return EXIT_REFUSED if status.refused else EXIT_OK
        heads, refused = _served(args.server, args.api_key) if args.server else _local(args.heads_dir)
    except (ModerationConnectionError, ModerationAPIError) as exc:
        print(f"moderation heads: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    _print(heads, refused, args.json, out)
    return EXIT_REFUSED if refused else EXIT_OK

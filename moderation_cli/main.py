"""``moderation``: one command whose subcommands live with the code they drive.

``classify`` and ``heads`` talk to a running service over HTTP (``clients/``); ``evaluate``
and ``train`` run the model in this process (``evaluation/``, which needs torch). Each is
imported only when it is asked for, so ``moderation classify`` never imports torch, and
``clients/`` never imports ``evaluation/``: this module sits above both.

Exit status: that of the subcommand; 2 for an unknown subcommand.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with a ``main(argv) -> int``, whether it takes its own name first, help)
SUBCOMMANDS: dict[str, tuple[str, bool, str]] = {
    "classify": ("clients.cli", True, "classify images with a running service"),
    "heads": ("clients.cli", True, "list trained heads (a folder or a service) or make a service reload them"),
    "banks": ("clients.banks_cli", False, "manage a service's hash banks (known images: block, review, allow)"),
    "evaluate": ("evaluation.cli", False, "measure a classifier's accuracy on a labelled image set"),
    "train": ("evaluation.train_cli", False, "train a classifier (a head file) from labelled images"),
    "backfill": ("backfill.cli", True, "moderate stored images (folders, lists, buckets) into a table, on Ray Data"),
    "rescore": ("backfill.cli", True, "re-score a backfill table's stored embeddings with today's classifiers"),
}


def usage() -> str:
    lines = ["usage: moderation {" + ",".join(SUBCOMMANDS) + "} ...", "", "subcommands:"]
    lines += [f"  {name:<9} {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    lines += ["", "moderation SUBCOMMAND --help for each one's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"{usage()}\n\nmoderation: unknown subcommand {name!r}", file=sys.stderr)
        return 2
    module_name, keeps_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return module.main(argv if keeps_name else argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""The console command's home: subcommands are found, and the HTTP side (clients/) works with
only the HTTP client's dependencies: no torch, transformers, Ray or evaluation/."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from moderation_cli.main import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "ray", "evaluation", "safetensors", "matplotlib")


def test_clients_import_and_run_without_the_model_side():
    script = textwrap.dedent(f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(f"{{name}} must not be imported by clients/")

        sys.meta_path.insert(0, Refuse())
        import clients.aio, clients.http, clients.cli, clients.heads_cli
        from moderation_cli.main import main
        assert main(["classify", "--help"]) == 0
        assert main(["heads", "list", "--server", "http://127.0.0.1:9", "--json"]) == 3  # nobody there
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ok []"


def test_the_command_lists_its_subcommands_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    assert main(["evaulate"]) == 2 and "unknown subcommand 'evaulate'" in capsys.readouterr().err
    assert main([]) == 2

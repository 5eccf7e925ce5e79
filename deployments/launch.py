"""``moderation-serve``: check the model can be had, then hand over to ``serve run``.

``serve run`` with a config file keeps running when a deployment fails and prints Ray's
tracebacks; this launcher fails first, with one message, when the weights cannot be had.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from classifiers.calibration import load_calibration
from classifiers.errors import ModelLoadError
from classifiers.checkpoint import check_model_available
from classifiers.registry import BUILTIN_CLASSIFIERS
from deployments.serve_env import own_haproxy_files, serve_env_defaults
from deployments.settings import AppArgs


def args_of(config_path: str) -> AppArgs:
    """The config's (first) application's args, env overrides applied."""
    with open(config_path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    return AppArgs.model_validate(config["applications"][0].get("args") or {}).with_env(os.environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moderation-serve", description=__doc__)
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument("--check-only", action="store_true", help="check the model and exit")
    parser.add_argument(
        "--new-api-key", metavar="NAME", help="print a new API key (give it to the client) and "
        "the line for args.auth.api_keys (only its hash goes in the config), then exit",
    )
    parser.add_argument("--admin", action="store_true", help="with --new-api-key: a key that may manage the hash banks")
    args, serve_args = parser.parse_known_args(argv)
    if args.new_api_key:
        return _print_new_key(args.new_api_key, args.admin)
    _quiet_hub_libraries()  # the check's answer is one line; their warnings would bury it
    try:
        app_args = args_of(args.config)
        model = app_args.model
        check_model_available(model)
        if app_args.calibration:
            load_calibration(app_args.calibration, set(BUILTIN_CLASSIFIERS))
        if app_args.engine == "openvino":  # before every replica fails on it after its load
            from classifiers.engines import choose
            from classifiers.model import resolve_device

            choose("openvino", resolve_device(app_args.device), fixed_shape=True)
    except ModelLoadError as exc:
        print(f"moderation-serve: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"moderation-serve: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    print(f"moderation-serve: model {model} is available", file=sys.stderr)
    if app_args.heads_dir:
        _report_heads(app_args.heads_dir)
    if args.check_only:
        return 0
    # Before Ray starts: the local cluster `serve run` starts takes its processes' environment
    # from this one (a cluster reached through RAY_ADDRESS keeps its own).
    for name, value in serve_env_defaults().items():
        print(f"moderation-serve: {name}={value}", file=sys.stderr)
    from ray.serve.scripts import cli

    with stop_on_signals(), own_haproxy_files():
        return cli.main(["run", args.config, *serve_args], prog_name="serve")


def _interrupt(signum, frame) -> None:
    """The first SIGINT or SIGTERM stops the service; later ones are ignored, so that they
    cannot cut short Serve's shutdown or the clean-up after it (SIGKILL still can)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    print(f"moderation-serve: {signal.Signals(signum).name}: stopping (further signals are ignored)",
          file=sys.stderr)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM stop the service as Ctrl-C does: ``serve run`` shuts Serve down, then
    ``own_haproxy_files`` stops Ray and any HAProxy left (inside this block, so a signal in
    that clean-up is ignored too).

    Without this, a launcher started in the background of a script ignores SIGINT (the shell
    starts it so, and Python then installs no handler), and SIGTERM ends it at once: ``ray.init``
    in ``serve run`` installs Ray's crash handler for SIGTERM, which exits without cleaning up,
    so the HAProxy it started kept port 8000 and the next start failed. Our handler goes back in
    each time ``ray.init`` returns.
    """
    import ray

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    init = ray.init

    @functools.wraps(init)
    def init_keeping_our_handler(*args, **kwargs):
        try:
            return init(*args, **kwargs)
        finally:  # unless a signal came already, and where signals can be set
            if threading.current_thread() is threading.main_thread() and \
                    signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                signal.signal(signal.SIGTERM, _interrupt)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    ray.init = init_keeping_our_handler
    try:
        yield
    finally:
        ray.init = init
        for number, handler in saved.items():
            signal.signal(number, handler)


def _report_heads(heads_dir: str) -> None:
    """Say which head files the replicas will find (each is checked against the model there).
    A relative MODERATION_HEADS_DIR is made absolute: replicas do not share this directory."""
    from classifiers.trained import SUFFIX

    folder = Path(heads_dir).expanduser().resolve()
    if os.environ.get("MODERATION_HEADS_DIR"):
        os.environ["MODERATION_HEADS_DIR"] = str(folder)
    names = sorted(p.name.removesuffix(SUFFIX) for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    where = "" if folder.is_dir() else " (not there yet: heads added later are picked up)"
    print(f"moderation-serve: heads_dir {folder}{where}: {', '.join(names) or 'no heads'}", file=sys.stderr)


def _quiet_hub_libraries() -> None:
    """Errors only from huggingface_hub and transformers in this process (e.g. transformers
    5.25 warns about its own default SigLIP text config on every SigLIP load)."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hub_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()


def _print_new_key(name: str, admin: bool = False) -> int:
    from deployments.auth import new_key
    from deployments.settings import ApiKey

    key, digest = new_key()
    ApiKey(name=name, sha256=digest)  # validates the name
    print(f"API key for {name} (shown once; give it to the client):\n  {key}")
    extra = ", admin: true" if admin else ""
    print(f"Add to args.auth.api_keys in the serve config:\n  - {{name: {name}, sha256: {digest}{extra}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

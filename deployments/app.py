"""The application graph: the only place that binds deployments (``import_path`` target)."""

import os

from ray.serve import Application

from deployments.clip_model import ClipModel
from deployments.fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.settings import AppArgs


def build_app(args: AppArgs) -> Application:
    """Bind Ingress → (ImageFetcher, ClipModel), each with its slice of the settings.

    Serve validates ``args`` from serve_config.yaml against ``AppArgs``. MODERATION_MODEL,
    MODERATION_DEVICE and MODERATION_HEADS_DIR override ``model``, ``device`` and ``heads_dir``.
    """
    args = args.with_env(os.environ)
    runtime = args.runtime_config()
    model = ClipModel.options(user_config={}).bind(args.model_settings(), runtime)
    fetcher = ImageFetcher.bind(args.fetch)
    return Ingress.bind(fetcher, model, args.ingress_settings())

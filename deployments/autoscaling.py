"""The model deployment's autoscaling policy: Serve's own rule, with every image counted.

Serve's default policy scales on ongoing requests per replica against
``target_ongoing_requests``. A multi-image request reaches a model replica as one call carrying
up to ``images_per_model_call`` images, which Serve counts as one request; each replica reports
the images its calls carry beyond the first (``record_autoscaling_stats``) and this policy adds
them, so 16 images in one call weigh what 16 single-image calls do. With single-image traffic it
is the default policy exactly. Serve applies ``min_replicas``, ``max_replicas``, the scaling
factors and the up/down delays around it as it does around its own.

serve_config.yaml names it: ``autoscaling_config: {policy: {policy_function:
deployments.autoscaling:images_policy}}``.
"""

from __future__ import annotations

from typing import Any

EXTRA_IMAGES = "extra_images"  # the metric ClipModel.record_autoscaling_stats reports


def images_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired replicas: (ongoing requests + the extra images they carry) / target per replica."""
    replicas = ctx.current_num_replicas
    if replicas == 0:
        return ctx.target_num_replicas, {}
    extra = sum(((ctx.aggregated_metrics or {}).get(EXTRA_IMAGES) or {}).values())
    target = ctx.config.get_target_ongoing_requests()
    return (ctx.total_num_requests + extra) / target, {}

"""The model's autoscaling policy on Serve's own context and wrapper (no cluster)."""

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config, _core_replica_queue_length_policy
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import EXTRA_IMAGES, images_policy

DEPLOYMENT = DeploymentID(name="ClipModel", app_name="moderation")


def context(replicas: int, requests: float, extra: list[float] | None, **config) -> AutoscalingContext:
    ids = [ReplicaID(unique_id=f"r{n}", deployment_id=DEPLOYMENT) for n in range(replicas)]
    metrics = {EXTRA_IMAGES: dict(zip(ids, extra))} if extra is not None else {}
    settings = dict(min_replicas=1, max_replicas=8, target_ongoing_requests=16, upscale_delay_s=0,
                    downscale_delay_s=0, policy={"policy_function": "deployments.autoscaling:images_policy"})
    settings.update(config)
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name="ClipModel", app_name="moderation",
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=ids,
        total_num_requests=requests, total_queued_requests=0, aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=settings["min_replicas"],
        capacity_adjusted_max_replicas=settings["max_replicas"], policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(**settings),
    )


def test_single_image_traffic_scales_as_serves_own_policy():
    for replicas, requests in ((1, 0), (1, 16), (1, 40), (2, 10), (3, 100)):
        for extra in (None, [0.0] * replicas):
            ctx = context(replicas, requests, extra)
            assert images_policy(ctx)[0] == _core_replica_queue_length_policy(ctx)[0]


def test_multi_image_calls_count_every_image():
    # 4 calls of 16 images on one replica: Serve sees 4 requests, the replica 60 more images.
    ctx = context(1, 4, [60.0])
    assert _core_replica_queue_length_policy(ctx)[0] == 0.25  # would scale down to the minimum
    assert images_policy(ctx)[0] == 4.0  # 64 images / 16 per replica
    assert images_policy(context(2, 8, [30.0, 90.0]))[0] == (8 + 120) / 16


def test_serves_wrapper_takes_it_and_rounds_it():
    # (Serve clips to min/max_replicas after the policy, in its autoscaling state.)
    wrapped = _apply_autoscaling_config(images_policy)
    assert wrapped(context(1, 4, [60.0]))[0] == 4
    assert wrapped(context(1, 4, [50.0]))[0] == 4  # 54 images: 3.4 replicas, up
    assert wrapped(context(2, 0, [0.0, 0.0]))[0] == 1
    assert AutoscalingConfig(policy={"policy_function": "deployments.autoscaling:images_policy"}).policy \
        .policy_function == "deployments.autoscaling:images_policy"

"""serve_config.yaml against Ray's own schema and our code; the launcher's failure message."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deployments.app import build_app
from deployments.autoscaling import images_policy
from deployments.clip_model import ClipModel
from deployments.fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.settings import AppArgs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
CLUSTER = yaml.safe_load((ROOT / "deploy" / "serve_config.cluster.yaml").read_text())
RAYSERVICE = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
BOTH = pytest.mark.parametrize("config", [CONFIG, CLUSTER], ids=["local", "cluster"])


@BOTH
def test_config_is_valid_for_ray_serve(config):
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.port == 8000
    assert schema.applications[0].import_path == "deployments.app:build_app"


@BOTH
def test_config_deployments_are_the_ones_the_code_defines(config):
    app = config["applications"][0]
    names = {d["name"] for d in app["deployments"]}
    assert names == {ClipModel.name, ImageFetcher.name, Ingress.name}
    model = next(d for d in app["deployments"] if d["name"] == "ClipModel")
    auto = model["autoscaling_config"]
    assert auto["min_replicas"] >= 1 and auto["max_replicas"] >= auto["min_replicas"]
    # Multi-image calls count every image (deployments/autoscaling.py); Serve resolves the path.
    assert auto["policy"]["policy_function"] == "deployments.autoscaling:images_policy"
    assert AutoscalingConfig(**auto).policy.get_policy().__qualname__ == images_policy.__qualname__
    assert model["max_ongoing_requests"] >= app["args"]["max_batch_size"]
    assert model["max_queued_requests"] > 0  # bounded: overload answers 503 instead of queueing


@BOTH
def test_config_args_are_valid_app_args_and_bind(config):
    args = AppArgs.model_validate(config["applications"][0]["args"])
    assert args.model == "openai/clip-vit-base-patch32"
    assert args.fetch.allowed_networks == () and args.fetch.allowed_ports == (80, 443)
    assert args.auth.api_keys == ()  # off until the operator adds keys
    build_app(args)  # binding needs no running cluster


def test_cluster_config_puts_the_model_on_gpus_and_the_rest_on_cpu_nodes():
    deployments = {d["name"]: d for d in CLUSTER["applications"][0]["deployments"]}
    assert deployments["ClipModel"]["ray_actor_options"]["num_gpus"] == 1
    for name in ("ImageFetcher", "Ingress"):
        assert "cpu_node" in deployments[name]["ray_actor_options"]["resources"]
        assert "autoscaling_config" in deployments[name]
    assert CLUSTER["proxy_location"] == "EveryNode"
    assert CLUSTER["logging_config"]["encoding"] == "JSON"


def test_rayservice_runs_the_cluster_config_with_a_gpu_worker_group():
    assert (RAYSERVICE["apiVersion"], RAYSERVICE["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["applications"] == CLUSTER["applications"]  # the two never drift apart
    groups = {g["groupName"]: g for g in RAYSERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "cpu_node" in groups["cpu"]["rayStartParams"]["resources"]


def test_env_overrides_model_and_device(monkeypatch):
    monkeypatch.setenv("MODERATION_MODEL", "/models/clip")
    monkeypatch.setenv("MODERATION_DEVICE", "cpu")
    app = build_app(AppArgs())
    model_settings = next(
        arg for arg in app._bound_deployment.init_args[1]._bound_deployment.init_args
        if hasattr(arg, "device")
    )
    assert (model_settings.model, model_settings.device) == ("/models/clip", "cpu")


def test_app_args_reject_unknown_keys_and_thresholds():
    with pytest.raises(ValueError):
        AppArgs.model_validate({"modle": "typo"})
    with pytest.raises(ValueError, match="unknown classifiers"):
        AppArgs.model_validate({"thresholds": {"Violence!": 0.5}})
    # a trained head's name: heads come and go at run time, so any name a head may have passes
    assert AppArgs.model_validate({"thresholds": {"my_policy": 0.3}}).thresholds == {"my_policy": 0.3}
    for lanes in (0, 3):  # serve.batch in ClipModel runs at most 2 batches at once
        with pytest.raises(ValueError, match="forward_lanes"):
            AppArgs.model_validate({"forward_lanes": lanes})
    assert AppArgs.model_validate({"forward_lanes": 2}).model_settings().forward_lanes == 2


def test_each_deployment_gets_only_its_slice():
    args = AppArgs(model="/m", max_batch_size=8, thresholds={"gore": 0.7}, max_upload_bytes=5)
    assert args.model_settings().model == "/m"
    assert args.runtime_config().model_dump() == {
        "max_batch_size": 8, "batch_wait_timeout_s": 0.0, "thresholds": {"gore": 0.7},
        "heads_version": None, "policies": ()}
    assert args.ingress_settings().max_upload_bytes == 5


def _launch(env_model: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODERATION_MODEL": env_model}
    return subprocess.run(
        [sys.executable, "-m", "deployments.launch", str(ROOT / "serve_config.yaml"), "--check-only"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def test_launcher_fails_with_one_clear_message_when_weights_are_missing(tmp_path):
    result = _launch(str(tmp_path / "no-such-model"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MODERATION_MODEL" in lines[0]


def test_launcher_accepts_a_local_checkpoint(tiny_clip_dir):
    result = _launch(tiny_clip_dir)
    assert result.returncode == 0, result.stderr

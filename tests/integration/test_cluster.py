"""deploy/serve_config.cluster.yaml on a multi-node Ray cluster simulated on this machine.

Three nodes (``ray.cluster_utils.Cluster``): a head with no CPUs, a "gpu" node that declares
logical GPUs (torch sees no CUDA, so the model runs on CPU there) and a "cpu" node with the
``cpu_node`` resource. The cluster config is deployed as written, with only the model, the
test's URL policy, loopback HTTP and short autoscaling delays changed.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster

from images import jpeg
from integration.cluster import deploy_apps, private_haproxy
from integration.servers import free_port, serve_routes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PHOTO = jpeg(320, 240, seed=4)


def cluster_config(model: str, image_port: int) -> dict:
    config = yaml.safe_load((ROOT / "deploy" / "serve_config.cluster.yaml").read_text())
    app = copy.deepcopy(config["applications"][0])
    app["args"]["model"] = model
    app["args"]["fetch"].update(allowed_networks=["127.0.0.0/8"], allowed_ports=[image_port])
    model_deployment = next(d for d in app["deployments"] if d["name"] == "ClipModel")
    model_deployment["autoscaling_config"].update(
        min_replicas=1, max_replicas=2, target_ongoing_requests=2,
        upscale_delay_s=1, downscale_delay_s=4, look_back_period_s=2, metrics_interval_s=0.5,
    )
    return app


@pytest.fixture(scope="module")
def image_port():
    with serve_routes({"/photo.jpg": (200, {"Content-Type": "image/jpeg"}, PHOTO)}) as port:
        yield port


@pytest.fixture(scope="module")
def cluster(tiny_clip_dir, image_port):
    with private_haproxy():
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        gpu = nodes.add_node(num_cpus=4, num_gpus=2)  # room for two model replicas (2 CPUs + 1 GPU each)
        cpu = nodes.add_node(num_cpus=2, resources={"cpu_node": 100})
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, log_to_driver=False)
        port = free_port()
        try:
            # One proxy on the head: every simulated node shares 127.0.0.1, so EveryNode would
            # have them all bind the same port.
            serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
            deploy_apps(port, cluster_config(tiny_clip_dir, image_port), proxy_location="HeadOnly")
            yield {"url": f"http://127.0.0.1:{port}", "gpu": gpu.node_id, "cpu": cpu.node_id,
                   "head": nodes.head_node.node_id}
        finally:
            serve.shutdown()
            ray.shutdown()
            nodes.shutdown()


def replica_nodes(deployment: str) -> list[str]:
    """The node of every running replica of ``deployment``, asked of the replica itself."""
    nodes = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"SERVE_REPLICA::moderation#{deployment}#"):
            actor = ray.get_actor(entry["name"], namespace="serve")
            nodes.append(ray.get(actor.__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id()), timeout=30))
    return nodes


def running(deployment: str) -> int:
    status = serve.status().applications["moderation"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_requests_are_served_with_replicas_where_the_config_puts_them(cluster, image_port):
    with httpx.Client(base_url=cluster["url"], timeout=60) as http:
        uploaded = http.post("/v1/classify", files={"file": ("a.jpg", PHOTO, "image/jpeg")})
        fetched = http.post("/v1/classify", json={"url": f"http://127.0.0.1:{image_port}/photo.jpg"})
        assert http.get("/healthz").status_code == 200
    for response in (uploaded, fetched):
        assert response.status_code == 200, response.text
    assert replica_nodes("ClipModel") == [cluster["gpu"]]
    assert replica_nodes("ImageFetcher") == [cluster["cpu"]]
    assert set(replica_nodes("Ingress")) == {cluster["cpu"]}
    assert len(replica_nodes("Ingress")) == 2  # min_replicas of the cluster config


def replicas_under_load(url: str, send, callers: int) -> tuple[int, list[int]]:
    """``callers`` threads each calling ``send(http)`` (an answer's status, -1 for a wrong one)
    until the model runs two replicas or 60 s pass: the replicas then, and every status."""
    stop, codes = threading.Event(), []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                codes.append(send(http))

    threads = [threading.Thread(target=client) for _ in range(callers)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while running("ClipModel") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        return running("ClipModel"), codes
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def back_to_one_replica() -> None:
    deadline = time.monotonic() + 60
    while running("ClipModel") > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running("ClipModel") == 1


def test_model_scales_from_one_to_two_replicas_and_back(cluster):
    assert running("ClipModel") == 1
    scaled_up, codes = replicas_under_load(cluster["url"], lambda http: http.post(
        "/v1/classify", files={"file": ("a.jpg", PHOTO, "image/jpeg")}).status_code, callers=8)
    assert scaled_up == 2, serve.status().applications["moderation"].deployments["ClipModel"]
    assert set(replica_nodes("ClipModel")) == {cluster["gpu"]}  # both on the GPU node
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    back_to_one_replica()
    print(f"scaled 1 -> 2 -> 1 replicas; {len(codes)} requests under load, all 200")


def test_multi_image_requests_scale_the_model_by_their_images(cluster):
    """Two callers, each with one 16-image request at a time: Serve's own policy sees at most 2
    ongoing calls against a target of 2 per replica and would keep one replica; counting the
    images (deployments/autoscaling.py) asks for more."""
    assert running("ClipModel") == 1
    files = [("file", (f"{i}.jpg", jpeg(320, 240, seed=i), "image/jpeg")) for i in range(16)]

    def send(http) -> int:
        response = http.post("/v1/classify/batch", files=files, data={"classifiers": "nudity"})
        return response.status_code if response.status_code == 200 and response.json()["errors"] == 0 else -1

    scaled_up, codes = replicas_under_load(cluster["url"], send, callers=2)
    assert scaled_up == 2, serve.status().applications["moderation"].deployments["ClipModel"]
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    back_to_one_replica()

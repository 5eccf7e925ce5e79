"""Trained heads served by the real application on Ray Serve (two model replicas), over HTTP:
a head dropped into ``heads_dir`` reaches every replica while clients keep sending requests,
with no restart and no failed request; bad files never replace what is served."""

from __future__ import annotations

import io
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from classifiers.fingerprint import fingerprint
from classifiers.model import load_clip
from classifiers.random_checkpoint import build_random_checkpoint
from classifiers.trained import head_path, load_head, save_head
from moderation_cli.main import main as cli
from deployments.settings import AppArgs
from evaluation.dataset import load_samples
from evaluation.synthetic import COLOURS, write_dataset
from evaluation.train import TrainOptions, train
from integration.cluster import app_config, deploy_apps, serve_on_loopback

pytestmark = pytest.mark.integration

REACH_S = 10.0  # every replica serves a new head within this (poll every 0.5 s)


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), COLOURS[colour]).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def staged(tiny_clip_dir, tmp_path_factory):
    """Heads trained in-process on the tiny checkpoint (not yet in the served folder), and one
    for another checkpoint."""
    root = tmp_path_factory.mktemp("heads")
    encoder = load_clip(tiny_clip_dir, device="cpu", dtype="float32")
    data = write_dataset(root / "colours", "colours", per_class=20)
    for name in ("colour_policy", "colour_policy_v2"):
        train(load_samples(data), encoder, TrainOptions(
            dataset=str(data), name=name, head_file=head_path(root / "staged", name), out_dir=root / name,
            unsafe=("red",), progress=False))
    other = load_clip(str(build_random_checkpoint(root / "other-clip", seed=1)), device="cpu", dtype="float32")
    head = load_head(head_path(root / "staged", "colour_policy_v2"))
    alien = replace(head, label_set=replace(head.label_set, name="alien"), fingerprint=fingerprint(other))
    save_head(alien, head_path(root / "staged", "alien"))
    return root / "staged"


def ship(staged: Path, heads_dir: Path, name: str, as_name: str | None = None) -> None:
    """Copy a head in the way a deploy script should: a temporary name, then a rename."""
    target = head_path(heads_dir, as_name or name)
    tmp = heads_dir / f".{target.name}.tmp"
    shutil.copyfile(head_path(staged, name), tmp)
    tmp.rename(target)


@pytest.fixture(scope="module")
def service(tiny_clip_dir, tmp_path_factory):
    heads_dir = tmp_path_factory.mktemp("served-heads")
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, max_batch_size=8,
                   heads_dir=str(heads_dir), heads_poll_s=0.5)
    two_replicas = {"name": "ClipModel", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    with serve_on_loopback() as port:
        deploy_apps(port, app_config(args, deployments=[two_replicas]))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield http, heads_dir, port


def replica_heads(timeout_s: float = REACH_S, want: str | None = None) -> dict[str, str]:
    """Each model replica's heads version, asked until both have answered (and, with ``want``,
    until both report it)."""
    handle = serve.get_deployment_handle("ClipModel", "moderation")
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = handle.health.remote().result()
        seen[health["replica"]] = health["heads_version"]
        if len(seen) == 2 and (want is None or set(seen.values()) == {want}):
            break
        time.sleep(0.05)
    return seen


class Traffic:
    """A client that keeps classifying (every classifier, trained ones included) until stopped."""

    def __init__(self, http: httpx.Client) -> None:
        self.http, self.codes, self._stop = http, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            response = self.http.post("/v1/classify", files={"file": ("x.png", png("red"), "image/png")})
            self.codes.append(response.status_code)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def classify(http, colour: str, *names: str) -> httpx.Response:
    return http.post("/v1/classify", files={"file": ("x.png", png(colour), "image/png")},
                     data={"classifiers": ",".join(names)})


def test_a_new_head_reaches_every_replica_without_a_restart_or_a_failed_request(service, staged):
    http, heads_dir, _ = service
    before = replica_heads(want="none")
    assert set(before.values()) == {"none"} and len(before) == 2
    assert classify(http, "red", "colour_policy").json()["error"]["code"] == "unknown_classifier"
    with Traffic(http) as traffic:
        time.sleep(0.5)
        shipped = time.monotonic()
        ship(staged, heads_dir, "colour_policy")
        after: dict[str, str] = {}
        while not (len(after) == 2 and len(set(after.values())) == 1 and "none" not in after.values()):
            assert time.monotonic() < shipped + REACH_S, f"not on every replica after {REACH_S} s: {after}"
            after = replica_heads(timeout_s=1.0)
        reached_s = time.monotonic() - shipped
        time.sleep(0.5)
    assert set(after) == set(before)  # the same replicas: nothing restarted
    assert traffic.codes and set(traffic.codes) == {200}, f"{len(traffic.codes)} requests: {set(traffic.codes)}"
    print(f"head on both replicas {reached_s:.2f} s after it was shipped; {len(traffic.codes)} requests, all 200")
    red, blue = classify(http, "red", "colour_policy").json(), classify(http, "blue", "colour_policy").json()
    assert "results" in red, red
    assert red["results"]["colour_policy"]["top_label"] == "red" and red["flagged"]
    assert blue["results"]["colour_policy"]["top_label"] == "blue" and not blue["flagged"]
    assert red["results"]["colour_policy"]["kind"] == "exclusive"
    catalog = http.get("/v1/classifiers").json()
    trained = [c for c in catalog["classifiers"] if c["kind"] == "trained"]
    assert [c["name"] for c in trained] == ["colour_policy"]
    assert trained[0]["metrics"]["accuracy"] >= 0.95 and trained[0]["label_kind"] == "exclusive"
    assert catalog["heads"]["loaded"] == {"colour_policy": trained[0]["version"]}
    default = http.post("/v1/classify", files={"file": ("x.png", png("red"), "image/png")}).json()
    assert "colour_policy" in default["results"] and "nudity" in default["results"]


def test_bad_files_are_refused_and_the_served_head_stays(service, staged):
    http, heads_dir, _ = service
    served = http.get("/v1/classifiers").json()["heads"]["loaded"]["colour_policy"]
    ship(staged, heads_dir, "alien")
    (heads_dir / ".colour_policy.tmp").write_bytes(head_path(heads_dir, "colour_policy").read_bytes()[:100])
    (heads_dir / ".colour_policy.tmp").rename(head_path(heads_dir, "colour_policy"))  # damaged in place
    status = http.post("/v1/classifiers/reload")
    assert status.status_code == 200, status.text
    body = status.json()
    assert "embeddings differ" in body["refused"]["alien.head.safetensors"]
    assert "still serving version " + served in body["refused"]["colour_policy.head.safetensors"]
    assert body["loaded"] == {"colour_policy": served}
    replica_heads(want=body["version"])  # the other replica polls its way to the same state
    assert classify(http, "red", "alien").json()["error"]["code"] == "unknown_classifier"
    assert classify(http, "red", "colour_policy").json()["results"]["colour_policy"]["top_label"] == "red"


def test_a_changed_head_replaces_the_old_one_and_the_cli_lists_it(service, staged, capsys):
    http, heads_dir, port = service
    (heads_dir / "alien.head.safetensors").unlink()
    ship(staged, heads_dir, "colour_policy_v2")
    body = http.post("/v1/classifiers/reload").json()
    assert set(body["refused"]) == {"colour_policy.head.safetensors"}  # still damaged
    ship(staged, heads_dir, "colour_policy")  # whole again
    body = http.post("/v1/classifiers/reload").json()
    assert body["refused"] == {} and set(body["loaded"]) == {"colour_policy", "colour_policy_v2"}
    # the other replica still lists the damaged file until its next poll (its served version
    # did not change: it kept the good one), so wait for its refusal to clear too
    deadline, clean = time.monotonic() + REACH_S, 0
    while clean < 10:
        assert time.monotonic() < deadline, "a replica still lists a refused file"
        clean = clean + 1 if http.get("/v1/classifiers").json()["heads"]["refused"] == {} else 0
    # The CLI's one request may still reach a replica whose poll is due (a refused file, or the new
    # head not loaded yet): ask until it lists the new head and nothing refused.
    while True:
        status = cli(["heads", "list", "--server", f"http://127.0.0.1:{port}", "--json"])
        listed = capsys.readouterr().out
        if status == 0 and '"colour_policy_v2"' in listed and '"refused": {}' in listed:
            break
        assert time.monotonic() < deadline, f"no replica lists the new head with nothing refused: {listed[-400:]}"
        time.sleep(0.2)
    assert np.isclose(classify(http, "green", "colour_policy_v2").json()["results"]["colour_policy_v2"]
                      ["scores"]["green"], 1.0, atol=0.5)


def test_a_new_heads_version_in_user_config_reloads_every_replica_at_once(service, staged, tmp_path,
                                                                           tiny_clip_dir):
    """With polling off, a head copied in is not served until the deployment's user_config
    carries a new ``heads_version``: then both replicas read the folder, without a restart."""
    http, _, port = service
    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, max_batch_size=8,
                   heads_dir=str(heads_dir), heads_poll_s=0)
    model = {"name": "ClipModel", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    deploy_apps(port, app_config(args, deployments=[model]))
    before = replica_heads(want="none")
    ship(staged, heads_dir, "colour_policy_v2")
    time.sleep(1.5)
    assert replica_heads() == before  # nobody polls
    deploy_apps(port, app_config(args, deployments=[{**model, "user_config": {"heads_version": 1}}]))
    after = replica_heads(want=http.get("/v1/classifiers").json()["heads"]["version"])
    assert set(after) == set(before) and "none" not in after.values()
    result = classify(http, "red", "colour_policy_v2").json()["results"]["colour_policy_v2"]
    assert result["top_label"] == "red"

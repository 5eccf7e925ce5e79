"""``moderation evaluate`` end to end on the tiny random-weight checkpoint (no Ray, no network).

The images are two groups of solid colours; the label texts are chosen, among words the tiny
tokenizer knows, so that this random model separates the groups. The pipeline never sees how
they were chosen, so a perfect score proves its bookkeeping (labels, rows, scores) is right.
"""

import copy
import dataclasses
import itertools
import json
import random

import numpy as np
import pytest
from images import encode
from PIL import Image

from classifiers.calibration import load_calibration, temperatures
from classifiers.fingerprint import PROBE_COUNT
from classifiers.labels import DEFAULT_TEMPLATES, custom_label_set
from classifiers.model import ClipEncoder, load_clip
from classifiers.preprocess import decode_image
from classifiers.random_checkpoint import CORPUS
from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.schemas import ClassifiersResponse
from moderation_cli import main as cli
from evaluation.backends import ServerBackend
from evaluation.cache import ResultCache
from evaluation.dataset import load_samples, relabel
from evaluation.run import RunOptions, run_in_process
from evaluation.variants import BASELINE, Variant, apply_variant

COLOURS = {"warm": [(220, 40, 30), (200, 80, 20), (240, 60, 90)],
           "cool": [(20, 60, 210), (30, 160, 200), (60, 40, 180)]}


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    for group, colours in COLOURS.items():
        (root / group).mkdir()
        for i, colour in enumerate(colours):
            for size in ((40, 32), (64, 64)):
                Image.new("RGB", size, colour).save(root / group / f"{i}-{size[0]}.png")
    (root / "cool" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """60 reds and blues, varied (docs/eval-sample/make_colours.py, smaller): enough to calibrate."""
    root = tmp_path_factory.mktemp("reds-and-blues")
    rng = random.Random(0)
    for label, base in {"red": (200, 40, 40), "blue": (40, 60, 200)}.items():
        (root / label).mkdir()
        for i in range(30):
            colour = tuple(min(255, max(0, c + rng.randint(-50, 50))) for c in base)
            Image.new("RGB", (rng.randint(24, 64), rng.randint(24, 64)), colour).save(root / label / f"{i}.png")
    return root


def _row(encoder: ClipEncoder, word: str) -> np.ndarray:
    v = encoder.encode_text([t.format(word) for t in DEFAULT_TEMPLATES]).mean(axis=0)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def words(encoder, dataset):
    """The pair of words (for warm, cool) this random model separates the groups with best."""
    embed = {g: encoder.encode_images(np.stack([decode_image(encode(Image.new("RGB", (32, 32), c), "PNG"),
                                                             encoder.image_spec) for c in cs]))
             for g, cs in COLOURS.items()}
    rows = {w: _row(encoder, w) for w in sorted(set(CORPUS.split()))}
    def margin(pair):
        d = rows[pair[0]] - rows[pair[1]]
        return min((embed["warm"] @ d).min(), -(embed["cool"] @ d).max())
    best = max(itertools.permutations(rows, 2), key=margin)
    assert margin(best) > 0, "no word pair separates the colours for this checkpoint"
    return best


def _opts(tmp_path, **kw):
    return RunOptions(dataset="colours", out_dir=tmp_path / "report", custom=True,
                      cache=str(tmp_path / "cache.sqlite"), progress=False, **kw)


def test_pipeline_scores_a_separable_set_perfectly_and_writes_plots(encoder, dataset, words, tmp_path):
    warm, cool = words
    label_set = custom_label_set([warm, cool], unsafe=[cool])
    samples = [type(s)(s.source, warm if s.label == "warm" else cool) for s in load_samples(dataset)]
    report = run_in_process(samples, label_set, encoder, _opts(tmp_path, target_precision=0.95))
    base = report["variants"][BASELINE]
    assert (report["samples"], report["scored"]) == (13, 12)
    assert report["failed"][0]["source"].endswith("broken.png")
    assert report["failed"][0]["error"].startswith(("image_decode_error", "unsupported_media_type"))
    assert base["accuracy"] == 1.0 and base["macro"]["f1"] == 1.0
    assert base["confusion_matrix"] == [[6, 0], [0, 6]]
    assert base["binary"]["roc_auc"] == 1.0
    hit = base["binary"]["for_target_precision"]["result"]
    assert hit["precision"] == 1.0 and hit["recall"] == 1.0
    out = tmp_path / "report"
    for name in ("confusion_matrix.png", "pr_curve.png", "score_histogram.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000
    markdown = (out / "report.md").read_text()
    assert "| **macro** | 1.000 | 1.000 | 1.000 | 12 |" in markdown and "broken.png" in markdown
    assert json.loads((out / "report.json").read_text())["variants"][BASELINE]["accuracy"] == 1.0


def test_new_wordings_reuse_cached_embeddings_and_the_best_variant_wins(
        encoder, dataset, words, tmp_path, monkeypatch):
    warm, cool = words
    label_set = custom_label_set([warm, cool], unsafe=[cool])
    samples = [type(s)(s.source, warm if s.label == "warm" else cool) for s in load_samples(dataset)]
    calls = []
    original = ClipEncoder.encode_images
    monkeypatch.setattr(ClipEncoder, "encode_images", lambda self, px: calls.append(len(px)) or original(self, px))
    first = run_in_process(samples, label_set, encoder, _opts(tmp_path))
    # 12 images, and (once per encoder) the probe images that identify its weights in the cache key
    assert first["cache"]["images_encoded"] == 12 and sum(calls) in (12, 12 + PROBE_COUNT)
    encoded = sum(calls)
    swapped = apply_variant(label_set, prompts={warm: [cool], cool: [warm]})  # wrong on purpose
    variants = (Variant(BASELINE, label_set), Variant("swapped", swapped),
                Variant("bare", apply_variant(label_set, templates=["{}"])))
    second = run_in_process(samples, label_set, encoder, _opts(tmp_path, variants=variants))
    assert sum(calls) == encoded, "a second run re-encoded images"
    assert second["cache"] == {"path": str(tmp_path / "cache.sqlite"), "images_encoded": 0, "images_from_cache": 12}
    assert second["variants"]["swapped"]["accuracy"] == 0.0
    assert second["winner"] in (BASELINE, "bare")
    assert "## Prompt variants" in (tmp_path / "report" / "report.md").read_text()


def test_cli_calibrates_a_builtin_and_the_service_can_load_the_file(tiny_clip_dir, colour_set, tmp_path):
    calibration = tmp_path / "calibration.json"
    argv = ["evaluate", str(colour_set), "-c", "nudity", "--map", "red=explicit", "--map", "blue=none",
            "--model", tiny_clip_dir, "--dtype", "float32", "--cache", "none", "--quiet",
            "--out", str(tmp_path / "out"), "--calibrate", str(calibration), "--target-recall", "0.5"]
    assert cli.main(argv) == 0
    entry = json.loads(calibration.read_text())["classifiers"]["nudity"]
    assert (entry["samples"], entry["fit_samples"] + entry["holdout_samples"]) == (60, 60)
    assert entry["holdout_samples"] == 18 and entry["measured_on"] == "held-out"
    assert temperatures(load_calibration(calibration, {"nudity"})) == {"nudity": entry["temperature"]}
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 5000
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["calibration"]["temperature"] == entry["temperature"]
    assert report["calibration"]["binary"]["for_target_recall"]["result"]["recall"] >= 0.5


def test_calibration_refuses_too_few_images_and_writes_nothing(tiny_clip_dir, dataset, tmp_path, capsys):
    calibration = tmp_path / "calibration.json"
    argv = ["evaluate", str(dataset), "-c", "nudity", "--map", "warm=explicit", "--map", "cool=none",
            "--model", tiny_clip_dir, "--dtype", "float32", "--cache", "none", "--quiet",
            "--out", str(tmp_path / "out"), "--calibrate", str(calibration)]
    assert cli.main(argv) == 2
    assert "at least 50 scored images" in capsys.readouterr().err
    assert not calibration.exists() and not (tmp_path / "out").exists()


def test_calibration_undoes_a_known_distortion_and_gives_thresholds_for_calibrated_scores(
        encoder, colour_set, tmp_path):
    """Logits made 4x over-confident (logit scale x4): the fit must find 4x the temperature,
    cut the held-out ECE and NLL, and give the same calibrated thresholds as without it."""
    nudity = BUILTIN_CLASSIFIERS["nudity"]
    samples = relabel(load_samples(colour_set), nudity.label_names, {"red": "explicit", "blue": "none"})

    def run(factor: float, name: str) -> dict:
        distorted = copy.copy(encoder)
        distorted.logits = dataclasses.replace(encoder.logits, scale=encoder.logits.scale * factor)
        opts = RunOptions(dataset="colours", out_dir=tmp_path / name, calibrate=str(tmp_path / f"{name}.json"),
                          cache=str(tmp_path / "cache.sqlite"), progress=False, target_recall=0.9)
        return run_in_process(samples, nudity, distorted, opts)

    plain, hot = run(1.0, "plain"), run(4.0, "hot")
    c1, c4 = plain["calibration"], hot["calibration"]
    assert c4["temperature"] == pytest.approx(4 * c1["temperature"], rel=1e-4)
    assert c4["ece_before"] > c4["ece_after"] and c4["nll_before"] > c4["nll_after"]  # held-out images
    assert c4["ece_after"] == pytest.approx(c1["ece_after"], abs=1e-6)
    uncalibrated = hot["variants"][BASELINE]["binary"]["for_target_recall"]["result"]["threshold"]
    calibrated = [c["binary"]["for_target_recall"]["result"]["threshold"] for c in (c1, c4)]
    assert calibrated[0] == pytest.approx(calibrated[1], abs=1e-5)  # what the deployed service will score
    assert abs(uncalibrated - calibrated[1]) > 0.01  # the T=1 threshold would be the wrong one
    markdown = (tmp_path / "hot" / "report.md").read_text()
    assert "### Thresholds for calibrated scores" in markdown and "the fit did not see" in markdown


def test_cli_usage_errors_exit_2_with_a_message(dataset, tmp_path, capsys):
    assert cli.main(["evaluate", str(dataset), "-c", "nudity", "--cache", "none"]) == 2
    assert "--map" in capsys.readouterr().err
    assert cli.main(["evaluate", str(dataset), "-c", "face_attributes"]) == 2
    assert cli.main(["evaluate", str(dataset), "--labels", "a,b", "--calibrate", "x.json"]) == 2
    assert cli.main(["evaluate", str(dataset), "-c", "gore", "--server", "http://127.0.0.1:9",
                     "--variants", "v.yaml"]) == 2


class _FakeClient:
    """Answers like ModerationClient.classify_many and .classifiers; counts what it is asked."""

    def __init__(self):
        self.sent = 0
        self.catalog = ClassifiersResponse(model="stand-in", classifiers=[])

    def classifiers(self):
        return self.catalog

    def classify_many(self, images, concurrency, ordered, **options):
        from types import SimpleNamespace

        for index, data in enumerate(images):
            self.sent += 1
            cool = 0.9 if data.startswith(b"\x89PNG") and b"cool" in data else 0.2
            result = SimpleNamespace(scores={"a": 1 - cool, "b": cool}, unsafe_score=cool, threshold=0.5)
            yield SimpleNamespace(index=index, error=None, response=SimpleNamespace(
                model=self.catalog.model, results={"custom": result}))


def test_server_answers_are_cached_per_image(tmp_path):
    from evaluation.dataset import Sample

    for i, kind in enumerate(["warm", "cool", "cool"]):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG" + kind.encode() + bytes([i]))
    samples = [Sample(str(tmp_path / f"{i}.png"), "ab"[i > 0]) for i in range(3)]
    samples.append(Sample(str(tmp_path / "missing.png"), "a"))
    label_set = custom_label_set(["a", "b"], unsafe=["b"])
    client = _FakeClient()
    with ResultCache(tmp_path / "c.sqlite") as cache:
        scored, kept, errors = ServerBackend(client, "http://x", cache).score(samples, label_set, True)
        assert kept == [0, 1, 2] and list(errors) == [3] and "FileNotFoundError" in errors[3]
        assert scored.unsafe.tolist() == [0.2, 0.9, 0.9] and client.sent == 3
        again = ServerBackend(client, "http://x", cache)
        again.score(samples, label_set, True)
        assert client.sent == 3 and again.requests == 0
        client.catalog = ClassifiersResponse(model="another-model", classifiers=[])  # redeployed
        redeployed = ServerBackend(client, "http://x", cache)
        redeployed.score(samples, label_set, True)
        assert client.sent == 6 and redeployed.requests == 3
        client.classifiers = lambda: ClassifiersResponse(model="old-model", classifiers=[])  # mid-deploy
        _, kept, errors = ServerBackend(client, "http://x", cache).score(samples, label_set, True)
        assert kept == [] and "the service changed during the run" in errors[0]


def test_server_mode_through_the_real_client_on_loopback(dataset, tmp_path):
    """`--server`: the real ModerationClient against a stand-in service on 127.0.0.1."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    catalog = {"model": "stand-in", "classifiers": [
        {"name": "nudity", "kind": "exclusive", "description": "d", "labels": ["explicit", "suggestive", "none"],
         "unsafe_labels": ["explicit"], "threshold": 0.4, "prompts": {"explicit": ["x"]}}]}

    class Service(BaseHTTPRequestHandler):
        def do_GET(self):  # /healthz and /v1/classifiers
            body = json.dumps(catalog).encode() if self.path == "/v1/classifiers" else b""
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.path != "/v1/classify":  # one image per request only, like an older server
                missing = json.dumps({"error": {"code": "not_found", "message": "Not Found", "request_id": "r"}})
                self.send_response(404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(missing)))
                self.end_headers()
                self.wfile.write(missing.encode())
                return
            red = len(body) % 2 == 0  # any answer that stays the same for the same file
            scores = {"explicit": 0.7 if red else 0.1, "suggestive": 0.1, "none": 0.2 if red else 0.8}
            result = {"name": "nudity", "kind": "exclusive", "scores": scores,
                      "top_label": max(scores, key=scores.get), "top_score": max(scores.values()),
                      "unsafe_labels": ["explicit"], "unsafe_score": scores["explicit"],
                      "threshold": 0.4, "flagged": scores["explicit"] >= 0.4}
            answer = json.dumps({"request_id": "r", "model": "stand-in", "flagged": result["flagged"],
                                 "results": {"nudity": result},
                                 "timing": {"total_ms": 1, "decode_ms": 1, "inference_ms": 1}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert cli.main(["evaluate", str(dataset), "-c", "nudity", "--server", "http://127.0.0.1:9",
                         "--map", "warm=explicit", "--map", "cool=none", "--quiet"]) == 1  # nobody there
        argv = ["evaluate", str(dataset), "-c", "nudity", "--map", "warm=explicit", "--map", "cool=none",
                "--server", url, "--cache", str(tmp_path / "c.sqlite"), "--quiet", "--out", str(tmp_path / "o")]
        assert cli.main(argv) == 0
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        assert report["mode"] == "server" and report["scored"] == 13  # the stand-in decodes nothing
        assert report["variants"][BASELINE]["threshold"] == 0.4  # the server's threshold in force
        assert report["cache"]["requests_sent"] == 13
        assert cli.main(argv) == 0
        again = json.loads((tmp_path / "o" / "report.json").read_text())
        assert again["cache"] == {"path": str(tmp_path / "c.sqlite"), "requests_sent": 0, "answers_from_cache": 13}
        assert again["variants"] == report["variants"]
        assert again["model"] == "stand-in" and again["catalog_sha256"] == report["catalog_sha256"]
        catalog["classifiers"][0]["threshold"] = 0.3  # the service's config changed: no stale answers
        assert cli.main(argv) == 0
        changed = json.loads((tmp_path / "o" / "report.json").read_text())
        assert changed["cache"]["requests_sent"] == 13 and changed["catalog_sha256"] != report["catalog_sha256"]
    finally:
        server.shutdown()
        server.server_close()

"""Hash banks and the result cache on the real application (Ray Serve, two model replicas,
loopback HTTP): every answer carries the image's hashes; a bank entry added through the API
reaches every replica within seconds and blocks near copies of a real photograph; `allow`
clears; a repeated image is answered from the cache, scored with today's heads."""

from __future__ import annotations

import hashlib
import io
import secrets
import time

import numpy as np
import pytest
from PIL import Image

from banks.hashes import file_hashes, hamming, pdq_hash
from clients.http import ModerationClient
from deployments.settings import AppArgs, KnownImagesSettings
from integration.cluster import app_config, deploy_apps, serve_on_loopback
from moderation_cli.main import main as cli

pytestmark = pytest.mark.integration
REACH_S = 10.0  # replicas poll the banks every 0.5 s here


def jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def near_copy(array: np.ndarray) -> bytes:
    """Half the size, re-encoded at JPEG quality 60."""
    image = Image.fromarray(array)
    return jpeg(np.asarray(image.resize((image.width // 2, image.height // 2), Image.BICUBIC)), 60)


@pytest.fixture(scope="module")
def service(tiny_clip_dir):
    # float32 on torch: both replicas compute the same embedding whatever batch it rides in (with
    # bfloat16 or OpenVINO on one of them, scores across replicas differed by up to 4e-4), so a
    # cached answer can be compared with an uncached one from either replica.
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, max_batch_size=8, dtype="float32",
                   engine="torch", known_images=KnownImagesSettings(poll_s=0.5))
    two_replicas = {"name": "ClipModel", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    with serve_on_loopback() as port:
        deploy_apps(port, app_config(args, deployments=[two_replicas]))
        with ModerationClient(f"http://127.0.0.1:{port}") as client:
            yield client


def fresh_bank(client: ModerationClient, action: str) -> str:
    name = f"{action}-{secrets.token_hex(4)}"
    client.banks.create(name, action)
    return name


def until(check, timeout_s: float = REACH_S, settle: int = 8):
    """Wait until ``check()`` holds ``settle`` times in a row (requests spread over both
    replicas: 8 in a row all reach one replica once in 128 runs), and return its last value."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while True:
        value = check()
        streak = streak + 1 if value else 0
        if streak >= settle:
            return value
        assert time.monotonic() < deadline, "not every replica saw the bank change in time"
        time.sleep(0.1)


def test_every_answer_carries_the_image_hashes(service, tmp_path):
    data = jpeg(photo("chelsea"))
    answer = service.classify(data, classifiers=["nudity"])
    assert answer.hashes.sha256 == hashlib.sha256(data).hexdigest()
    (tmp_path / "chelsea.jpg").write_bytes(data)
    local = file_hashes(tmp_path / "chelsea.jpg")  # as `moderation banks add --image` makes it
    assert answer.hashes.pdq_quality >= 50 and hamming(answer.hashes.pdq, local.pdq) <= 8
    assert answer.matches == [] and answer.action is None


def test_a_bank_entry_reaches_every_replica_and_blocks_near_copies(service, tmp_path):
    original = photo("astronaut")
    (tmp_path / "astronaut.jpg").write_bytes(jpeg(original))
    bank = fresh_bank(service, "block")
    service.banks.add(bank, [{"hash": file_hashes(tmp_path / "astronaut.jpg").pdq, "entry_id": "case-1"}])
    copy = near_copy(original)

    def matched():
        answer = service.classify(copy, classifiers=["gore"])
        return answer if any(m.bank == bank for m in answer.matches) else None

    answer = until(matched)
    match = next(m for m in answer.matches if m.bank == bank)
    assert (match.action, match.kind, match.entry_id) == ("block", "pdq", "case-1")
    assert 0 < match.distance <= 31 and answer.action == "block" and answer.flagged
    other = service.classify(jpeg(photo("coffee")), classifiers=["gore"])
    assert all(m.bank != bank for m in other.matches)

    batch = service.classify_batch([copy, jpeg(photo("coffee"))], classifiers=["gore"])  # the batch route
    assert batch[0].action == "block" and batch[0].matches[0].entry_id == "case-1" and batch[0].hashes.pdq
    assert batch[1].action is None and batch[1].matches == []

    service.banks.remove(bank, entry_ids=["case-1"])
    until(lambda: not any(m.bank == bank for m in service.classify(copy, classifiers=["gore"]).matches))


def test_a_hash_made_without_the_exif_turn_matches_a_phone_photo(service):
    """ThreatExchange's PDQ hashes are made from the pixels as stored, ignoring EXIF orientation;
    the service hashes the image upright and matches its turned hashes too."""
    upright = Image.fromarray(photo("coffee"))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # a phone's sideways pixels...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and the tag that turns them upright
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    bank = fresh_bank(service, "review")
    service.banks.add(bank, [{"hash": pdq_hash(stored)[0], "entry_id": "te-42"}])
    answer = until(lambda: (a := service.classify(buf.getvalue(), classifiers=["gore"])).action == "review" and a)
    assert answer.hashes.pdq == pdq_hash(upright)[0] or hamming(answer.hashes.pdq, pdq_hash(upright)[0]) <= 8
    assert [(m.bank, m.entry_id) for m in answer.matches] == [(bank, "te-42")]
    service.banks.delete(bank)


def test_allow_clears_what_the_classifiers_flag_and_block_outweighs_it(service):
    data = jpeg(photo("rocket"))
    flags_everything = {"labels": ["a photo", "a drawing", "a cat"], "unsafe_labels": ["a photo", "a drawing"],
                        "threshold": 0.01, "classifiers": []}
    assert service.classify(data, **flags_everything).flagged
    allow = fresh_bank(service, "allow")
    service.banks.add(allow, [{"kind": "sha256", "hash": hashlib.sha256(data).hexdigest(), "note": "cleared"}])
    cleared = until(lambda: (a := service.classify(data, **flags_everything)).action == "allow" and a)
    assert not cleared.flagged and cleared.results["custom"].flagged  # the scores still say so
    assert [(m.kind, m.distance) for m in cleared.matches] == [("sha256", 0)]
    block = fresh_bank(service, "block")
    service.banks.add(block, [{"kind": "sha256", "hash": hashlib.sha256(data).hexdigest()}])
    blocked = until(lambda: (a := service.classify(data, **flags_everything)).action == "block" and a)
    assert blocked.flagged and {m.action for m in blocked.matches} == {"block", "allow"}
    service.banks.delete(block)
    service.banks.delete(allow)


def test_a_repeated_image_is_scored_from_the_cache(service):
    pixels = photo("camera")
    pixels = np.stack([pixels] * 3, axis=-1)
    pixels[0, 0] = secrets.randbelow(256)  # bytes no other test sent
    data = jpeg(pixels)
    first = service.classify(data)
    assert not first.cached and first.timing.batch_size >= 1
    hit = until(lambda: (a := service.classify(data)).cached and a, settle=4)  # each replica caches its own
    assert hit.timing.batch_size == 0 and hit.hashes == first.hashes
    for name, result in first.results.items():
        assert hit.results[name].scores == pytest.approx(result.scores, abs=1e-4)
    # Another classifier set and custom labels, from the same cached embedding (on whichever
    # replica has it: each caches its own).
    custom = until(lambda: (a := service.classify(data, labels=["a cat", "a dog"], classifiers=["nudity"])).cached
                   and a, settle=1)
    assert set(custom.results) == {"nudity", "custom"}


def test_the_cli_manages_banks(service, tmp_path, capsys):
    server = ["--server", str(service._http.base_url)]
    image = tmp_path / "coffee.jpg"
    image.write_bytes(jpeg(photo("coffee")))
    assert cli(["banks", *server, "create", "cli-bank", "--action", "review"]) == 0
    assert cli(["banks", *server, "add", "cli-bank", "--image", str(image), "--sha256", "--entry-id", "c-9"]) == 0
    assert "added=2" in capsys.readouterr().out
    assert cli(["banks", *server, "--json", "list"]) == 0
    assert '"name": "cli-bank"' in capsys.readouterr().out
    exported = tmp_path / "cli-bank.tsv"
    assert cli(["banks", *server, "export", "cli-bank", "-o", str(exported)]) == 0
    assert exported.read_text().splitlines()[0].split("\t")[:2] == ["kind", "hash"]
    assert cli(["banks", *server, "create", "cli-copy", "--action", "block"]) == 0
    assert cli(["banks", *server, "import", "cli-copy", str(exported)]) == 0
    assert "added=2" in capsys.readouterr().out
    assert cli(["banks", *server, "create", "cli-bank", "--action", "block"]) == 3  # exists
    assert "bank_exists" in capsys.readouterr().err
    for name in ("cli-bank", "cli-copy"):  # the test session's database is shared by every module
        assert cli(["banks", *server, "delete", name]) == 0

"""What a model replica knows about images (``deployments.known_images.KnownImages``), on a
real database (SQLite and PostgreSQL): it reads the banks at start, follows later changes
through its poller, matches by SHA-256 and PDQ (PDQ only at enough quality), and caches
embeddings by SHA-256."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from banks.hashes import ImageHashes, pdq_hash
from banks.store import BankStore, NewEntry
from deployments.known_images import KnownImages, PdqOfFirstFrame, Seen, content_sha256
from deployments.settings import KnownImagesSettings

PDQ = "f" * 32 + "0" * 32
NEAR = "f" * 31 + "e" + "0" * 32  # 1 bit away
SHA = "a" * 64


def eventually(check, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "the replica did not see the change"
        time.sleep(0.05)
    return value


@pytest.fixture
def known(db_url):
    store = BankStore(db_url)
    store.create_bank("takedowns", "block")
    store.add_entries("takedowns", [NewEntry("pdq", PDQ, "case-1")])
    replica = KnownImages(KnownImagesSettings(banks_url=db_url, poll_s=0.1, cache_size=2))
    yield replica, store
    replica.close()
    store.close()


def test_banks_are_read_at_start_and_followed_after(known):
    replica, store = known
    image = ImageHashes(SHA, NEAR, 90)
    assert [(m.bank, m.action, m.distance, m.entry_id) for m in replica.match(image)] == [
        ("takedowns", "block", 1, "case-1")]
    store.create_bank("cleared", "allow")
    store.add_entries("cleared", [NewEntry("sha256", SHA)])
    eventually(lambda: len(replica.match(image)) == 2)
    store.update_bank("takedowns", action="review")
    eventually(lambda: {m.action for m in replica.match(image)} == {"review", "allow"})
    store.remove_entries("takedowns", entry_ids=["case-1"])
    store.delete_bank("cleared")
    eventually(lambda: replica.match(image) == ())
    assert replica.status()["entries"] == 0


def test_pdq_of_low_quality_images_is_not_matched(known):
    replica, _ = known
    assert replica.match(ImageHashes(SHA, PDQ, 49)) == ()
    assert len(replica.match(ImageHashes(SHA, PDQ, 50))) == 1
    assert replica.match(ImageHashes(SHA, None, None)) == ()


def test_the_cache_keeps_recent_embeddings_by_content(known):
    replica, _ = known
    pixels = np.zeros((4, 4, 3), np.uint8)
    keys = [content_sha256(b"one"), content_sha256(pixels), content_sha256(pixels.reshape(2, 8, 3))]
    assert len(set(keys)) == 3  # the same pixels in another shape are another image
    for key in keys:
        replica.remember(key, Seen(np.ones((1, 2), np.float32), ImageHashes(key, None, None)))
    assert replica.recall(keys[0]) is None  # size 2: the oldest went
    assert replica.recall(keys[2]).hashes.sha256 == keys[2]
    off = KnownImages(KnownImagesSettings(banks_url=replica.settings.banks_url, cache_size=0))
    off.remember(keys[0], Seen(np.ones((1, 2), np.float32), ImageHashes(keys[0], None, None)))
    assert off.recall(keys[0]) is None
    off.close()


def test_a_database_down_at_start_does_not_stop_the_replica(tmp_path):
    url = f"sqlite:///{tmp_path}/not-yet/banks.db"
    (tmp_path / "not-yet").write_text("a file where the folder should be")  # the database cannot open
    replica = KnownImages(KnownImagesSettings(banks_url=url, poll_s=0.1))
    try:
        assert replica.status()["loaded"] is False and replica.match(ImageHashes(SHA, PDQ, 90)) == ()
        (tmp_path / "not-yet").unlink()  # the database comes back
        store = BankStore(url)
        store.create_bank("takedowns", "block")
        store.add_entries("takedowns", [NewEntry("sha256", SHA)])
        eventually(lambda: replica.match(ImageHashes(SHA, None, None)))
        assert replica.status()["loaded"] is True
        store.close()
    finally:
        replica.close()


@pytest.mark.parametrize("turn", [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                  Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.TRANSPOSE])
def test_turned_and_mirrored_copies_match_through_the_dihedral_hashes(tmp_path, turn):
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    url = f"sqlite:///{tmp_path}/banks.db"
    store = BankStore(url)
    store.create_bank("takedowns", "block")
    store.add_entries("takedowns", [NewEntry("pdq", pdq_hash(photo)[0], "case-7")])
    replica = KnownImages(KnownImagesSettings(banks_url=url, poll_s=0.1))
    try:
        copy = photo.transpose(turn)
        plain, turned = PdqOfFirstFrame(turned=False), PdqOfFirstFrame(turned=True)
        plain(copy)
        turned(copy)
        assert turned.pdq[0] == plain.pdq[0]  # the image as it is: the same hash either way
        assert replica.match(replica.hashes(SHA, plain.pdq)) == ()  # PDQ alone does not see turns
        match, = replica.match(replica.hashes(SHA, turned.pdq))
        assert match.entry_id == "case-7" and match.distance <= 31  # measured: 0-20
    finally:
        replica.close()
        store.close()

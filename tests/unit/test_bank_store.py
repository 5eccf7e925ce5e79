"""The bank store on SQLite and on a real PostgreSQL server: banks, entries, the change feed a replica follows,
concurrent writers (threads; processes on SQLite) and durability when a writer is killed."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from banks.store import ACTIONS, AddResult, BankStore, Changes, Entry, NewEntry, normalise_hash
from classifiers.errors import ModerationError

REPO = Path(__file__).resolve().parents[2]


def h(*parts: object) -> str:
    """A distinct 64-hex-character hash for each tuple of parts."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


@pytest.fixture
def store(db_url: str):
    opened = BankStore(db_url)
    yield opened
    opened.close()


def error_of(call, *args, **kwargs) -> ModerationError:
    with pytest.raises(ModerationError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- banks and entries --------------------------------------------------------------------------------------------

def test_banks_are_created_listed_updated_and_deleted(store: BankStore):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    made = store.create_bank("csam.ncmec-1", "block", "from NCMEC")
    assert (made.name, made.action, made.description, made.entries) == ("csam.ncmec-1", "block", "from NCMEC", 0)
    stamp = datetime.fromisoformat(made.created_at)
    assert stamp.utcoffset() == timedelta(0) and before <= stamp <= datetime.now(timezone.utc)
    store.create_bank("0-review", "review")
    assert [bank.name for bank in store.list_banks()] == ["0-review", "csam.ncmec-1"]
    assert store.get_bank("csam.ncmec-1") == made
    assert store.update_bank("0-review", action="allow").action == "allow"
    assert store.update_bank("0-review", description="fine").description == "fine"
    assert store.get_bank("0-review").action == "allow"
    store.delete_bank("0-review")
    assert [bank.name for bank in store.list_banks()] == ["csam.ncmec-1"]


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "_lead", "a b", "a/b", "x" * 65, "bank\n", "é"])
def test_bad_bank_names_are_refused(store: BankStore, name: str):
    assert error_of(store.create_bank, name, "block").code == "invalid_request"


def test_bank_errors(store: BankStore):
    store.create_bank("b", "block")
    assert error_of(store.create_bank, "b", "review").code == "bank_exists"
    assert error_of(store.create_bank, "c", "delete").code == "invalid_request"
    assert error_of(store.update_bank, "b", action="nope").code == "invalid_request"
    entry = [NewEntry("pdq", h(1))]
    for call, args in ((store.get_bank, ()), (store.update_bank, ()), (store.delete_bank, ()),
                       (store.add_entries, (entry,)), (store.list_entries, ()),
                       (store.remove_entries, ())):
        assert error_of(call, "missing", *args).code == "unknown_bank", call.__name__
    assert [bank.name for bank in store.list_banks()] == ["b"]


def test_normalise_hash():
    assert normalise_hash("pdq", f"  {h(1).upper()}\n") == h(1)
    assert normalise_hash("sha256", h(2)) == h(2)
    for kind, value in (("pdq", h(1)[:-1]), ("pdq", h(1) + "0"), ("pdq", "g" * 64), ("md5", h(1)), ("pdq", None)):
        assert error_of(normalise_hash, kind, value).code == "invalid_request"


def test_add_entries_counts_duplicates_as_existing(store: BankStore):
    store.create_bank("b", "block")
    store.create_bank("other", "review")
    result = store.add_entries("b", [NewEntry("pdq", h(1).upper(), "id-1", "first"), NewEntry("PDQ", h(1)),
                                     NewEntry("sha256", h(1)), NewEntry("sha256", h(2), "id-2")])
    assert (result.added, result.existing) == (3, 1)
    result = store.add_entries("b", [NewEntry("pdq", h(1)), NewEntry("pdq", h(3))])
    assert (result.added, result.existing) == (1, 1)
    assert store.add_entries("other", [NewEntry("pdq", h(1))]).added == 1  # unique per bank only
    assert store.get_bank("b").entries == 4 and store.get_bank("other").entries == 1
    entries = store.list_entries("b")
    assert [(e.kind, e.hash, e.entry_id, e.note) for e in entries] == [
        ("pdq", h(1), "id-1", "first"), ("sha256", h(1), None, None), ("sha256", h(2), "id-2", None),
        ("pdq", h(3), None, None)]
    assert all(e.bank == "b" and datetime.fromisoformat(e.created_at).utcoffset() == timedelta(0)
               for e in entries)
    version = store.version()
    assert store.add_entries("b", []) == AddResult(0, 0)
    assert store.add_entries("b", [NewEntry("pdq", h(3)), NewEntry("pdq", h(3).upper())]) == AddResult(0, 2)
    assert store.version() == version  # nothing written, no version used


def test_one_bad_entry_writes_nothing(store: BankStore):
    store.create_bank("b", "block")
    version = store.version()
    good = [NewEntry("pdq", h(i)) for i in range(5)]
    for bad, words in ((NewEntry("pdq", "xyz"), "invalid pdq hash"), (NewEntry("md5", h(9)), "unknown hash kind"),
                       (NewEntry("pdq", h(9), entry_id="x" * 300), "entry_id"),
                       (NewEntry("pdq", h(9), note="a\x00b"), "note")):
        error = error_of(store.add_entries, "b", [*good[:3], bad, *good[3:]])
        assert error.code == "invalid_request" and error.message.startswith("entries[3]: ") and words in error.message
    assert store.list_entries("b") == [] and store.version() == version


def test_remove_entries_by_pk_id_and_hash(store: BankStore):
    store.create_bank("b", "block")
    store.create_bank("o", "block")
    store.add_entries("b", [NewEntry("pdq", h(i), f"id-{i}") for i in range(10)])
    store.add_entries("o", [NewEntry("pdq", h(i), f"id-{i}") for i in range(10)])
    pks = [e.pk for e in store.list_entries("b")]
    other_pk = store.list_entries("o")[0].pk
    assert store.remove_entries("b", pks=[pks[0], pks[0], other_pk, 10**9]) == 1
    assert store.remove_entries("b", entry_ids=["id-1", "id-2", "nope"]) == 2
    assert store.remove_entries("b", hashes=[("PDQ", h(3).upper()), ("sha256", h(4)), ("pdq", h(99))]) == 1
    assert store.remove_entries("b", pks=[pks[5]], entry_ids=["id-5", "id-6"], hashes=[("pdq", h(7))]) == 3
    version = store.version()
    assert store.remove_entries("b", pks=[pks[0]]) == 0 and store.remove_entries("b") == 0
    assert store.version() == version
    assert error_of(store.remove_entries, "b", hashes=[("pdq", "short")]).message.startswith("hashes[0]: ")
    assert [e.hash for e in store.list_entries("b")] == [h(4), h(8), h(9)]
    assert store.get_bank("o").entries == 10


def test_list_and_iter_entries_page_by_pk(store: BankStore):
    store.create_bank("b", "block")
    store.create_bank("o", "allow")
    store.add_entries("b", [NewEntry("pdq", h(i)) for i in range(25)])
    store.add_entries("o", [NewEntry("pdq", h(i)) for i in range(5)])
    everything = store.list_entries("b", limit=100)
    assert len(everything) == 25 and [e.pk for e in everything] == sorted(e.pk for e in everything)
    page = store.list_entries("b", after=everything[9].pk, limit=5)
    assert page == everything[10:15]
    assert list(store.iter_entries("b", page=7)) == everything
    assert list(store.iter_entries("b", page=25)) == everything
    assert store.list_entries("b", after=everything[-1].pk) == []
    assert error_of(store.list_entries, "b", limit=0).code == "invalid_request"


def test_pks_are_never_reused(store: BankStore):
    store.create_bank("b", "block")
    store.add_entries("b", [NewEntry("pdq", h(1)), NewEntry("pdq", h(2))])
    highest = store.list_entries("b")[-1].pk
    store.remove_entries("b", pks=[highest])
    store.delete_bank("b")
    store.create_bank("b", "block")
    store.add_entries("b", [NewEntry("pdq", h(2))])
    assert store.list_entries("b")[0].pk > highest


def test_store_reopens_with_its_data(db_url: str):
    first = BankStore(db_url)
    first.create_bank("b", "review")
    first.add_entries("b", [NewEntry("sha256", h(1))])
    second = BankStore(db_url)  # the tables exist: opening again changes nothing
    assert second.get_bank("b").entries == 1 and second.version() == first.version()
    first.close()
    second.close()


def test_many_open_a_new_database_at_once(db_url: str):
    opened: list[BankStore] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_store() -> None:
        try:
            start.wait()
            opened.append(BankStore(db_url))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert [store.version() for store in opened] == [0] * 6
    for store in opened:
        store.close()


def test_unsupported_urls():
    for url in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db"):
        with pytest.raises(ValueError):
            BankStore(url)


def test_an_in_memory_store_is_shared_by_threads():
    store = BankStore("sqlite://")
    store.create_bank("b", "block")
    threads = [threading.Thread(target=store.add_entries, args=("b", [NewEntry("pdq", h(t, i)) for i in range(20)]))
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_bank("b").entries == 80
    store.close()


# -- the change feed ----------------------------------------------------------------------------------------------

class Replica:
    """What an in-memory index does with the change feed: entries by pk, the banks' actions."""

    def __init__(self) -> None:
        self.version = 0
        self.entries: dict[int, Entry] = {}
        self.actions: dict[str, str] = {}

    def apply(self, changes: Changes) -> None:
        assert changes.version >= self.version
        for pk in changes.removed:
            self.entries.pop(pk, None)
        for entry in changes.added:
            self.entries[entry.pk] = entry
        self.actions = dict(changes.actions)
        self.version = changes.version

    def sync(self, store: BankStore) -> None:
        self.apply(store.changes_since(self.version))

    def live(self) -> set[tuple]:
        return {(e.pk, e.bank, e.kind, e.hash, e.entry_id, self.actions[e.bank]) for e in self.entries.values()}


def truth(store: BankStore) -> set[tuple]:
    return {(e.pk, e.bank, e.kind, e.hash, e.entry_id, bank.action)
            for bank in store.list_banks() for e in store.iter_entries(bank.name)}


def random_operation(store: BankStore, rng: random.Random, step: int) -> None:
    banks = [bank.name for bank in store.list_banks()]
    roll = rng.random()
    if not banks or roll < 0.08:
        name = f"bank-{rng.randrange(6)}"
        if name not in banks:
            store.create_bank(name, rng.choice(ACTIONS))
        return
    bank = rng.choice(banks)
    if roll < 0.55:  # some hashes repeat, so some adds find them already there
        store.add_entries(bank, [NewEntry(rng.choice(("pdq", "sha256")), h(rng.randrange(400)), f"e{step}-{i}")
                                 for i in range(rng.randrange(1, 12))])
    elif roll < 0.85:
        entries = store.list_entries(bank, limit=50)
        if entries:
            picked = rng.sample(entries, min(len(entries), rng.randrange(1, 4)))
            how = rng.randrange(3)
            if how == 0:
                store.remove_entries(bank, pks=[e.pk for e in picked])
            elif how == 1:
                store.remove_entries(bank, entry_ids=[e.entry_id for e in picked])
            else:
                store.remove_entries(bank, hashes=[(e.kind, e.hash) for e in picked])
    elif roll < 0.95:
        store.update_bank(bank, action=rng.choice(ACTIONS))
    else:
        store.delete_bank(bank)


def test_replicas_following_the_feed_end_with_the_live_set(store: BankStore):
    rng = random.Random(17)
    eager, lazy, fresh_each_time = Replica(), Replica(), None
    versions = [store.version()]
    for step in range(160):
        random_operation(store, rng, step)
        versions.append(store.version())
        eager.sync(store)
        if rng.random() < 0.2:
            lazy.sync(store)
        if step % 40 == 39:
            assert eager.live() == truth(store)
            fresh_each_time = Replica()
            fresh_each_time.sync(store)
            assert fresh_each_time.live() == truth(store)
    lazy.sync(store)
    final = truth(store)
    assert final and eager.live() == final and lazy.live() == final
    assert eager.version == lazy.version == store.version()
    assert versions == sorted(versions) and versions[-1] > versions[0]
    assert store.changes_since(store.version()).added == []


def test_feed_sees_actions_bank_deletion_and_removals(store: BankStore):
    replica = Replica()
    store.create_bank("a", "block")
    store.create_bank("b", "review")
    store.add_entries("a", [NewEntry("pdq", h(i)) for i in range(3)])
    store.add_entries("b", [NewEntry("pdq", h(i)) for i in range(3)])
    replica.sync(store)
    assert len(replica.entries) == 6 and replica.actions == {"a": "block", "b": "review"}
    version = replica.version
    store.update_bank("b", action="allow")
    changes = store.changes_since(version)
    assert changes.version == version + 1 and changes.added == [] and changes.removed == []
    assert changes.actions == {"a": "block", "b": "allow"}
    a_pks = {e.pk for e in store.list_entries("a")}
    store.delete_bank("a")
    changes = store.changes_since(changes.version)
    assert set(changes.removed) == a_pks and changes.actions == {"b": "allow"}
    replica.apply(changes)
    assert replica.live() == truth(store) and len(replica.entries) == 3


def test_feed_stays_exact_while_a_writer_runs(store: BankStore):
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        rng = random.Random(5)
        try:
            for step in range(150):
                random_operation(store, rng, step)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
        finally:
            stop.set()

    writer = threading.Thread(target=write)
    replica, seen = Replica(), []
    writer.start()
    while not stop.is_set():
        replica.sync(store)
        seen.append(replica.version)
    writer.join()
    assert not failures, failures
    replica.sync(store)
    assert replica.live() == truth(store) and seen == sorted(seen)


# -- concurrent writers, durability ---------------------------------------------------------------------------------

def test_concurrent_adds_from_threads_all_land(store: BankStore):
    store.create_bank("shared", "block")
    threads_n, batches, size, common = 8, 10, 20, [NewEntry("pdq", h("common", i)) for i in range(30)]
    results: list = []
    failures: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(worker: int) -> None:
        try:
            start.wait()
            for batch in range(batches):
                mine = [NewEntry("pdq", h(worker, batch, i), f"{worker}-{batch}-{i}") for i in range(size)]
                results.append(store.add_entries("shared", mine + common[batch * 3:batch * 3 + 3]))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    unique = threads_n * batches * size + len(common)
    assert sum(r.added for r in results) == unique
    assert sum(r.added + r.existing for r in results) == threads_n * batches * (size + 3)
    assert store.get_bank("shared").entries == unique
    replica = Replica()
    replica.sync(store)
    assert len(replica.entries) == unique


CHILD = """
import sys
from banks.store import BankStore, NewEntry
url, worker, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = BankStore(url)
print("ready", flush=True)
sys.stdin.readline()
for batch in range(batches):
    entries = [NewEntry("pdq", f"{worker:08x}{batch:08x}{i:048x}") for i in range(size)]
    entries += [NewEntry("pdq", f"{'c' * 56}{batch:08x}")]  # every worker adds these too
    store.add_entries("shared", entries)
    print(batch, flush=True)
if size:
    print("done", flush=True)
store.close()
"""


def start_child(url: str, worker: int, batches: int, size: int) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(worker), str(batches), str(size)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child


def test_concurrent_adds_from_processes_all_land(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'banks.db'}"
    store = BankStore(url)
    store.create_bank("shared", "block")
    workers, batches, size = 8, 8, 25
    children = [start_child(url, worker, batches, size) for worker in range(workers)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:  # all at once
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0 and out.split()[-1] == "done"
    assert store.get_bank("shared").entries == workers * batches * size + batches
    assert len(store.changes_since(0).added) == workers * batches * size + batches
    store.close()


def test_a_writer_killed_after_add_entries_returns_loses_nothing(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'banks.db'}"
    BankStore(url).create_bank("shared", "block")
    child = start_child(url, worker=1, batches=10_000, size=200)  # writes until killed
    assert child.stdout.readline().strip() == "ready"
    child.stdin.write("go\n")
    child.stdin.flush()
    for expected in range(4):
        assert child.stdout.readline().strip() == str(expected)
    os.kill(child.pid, signal.SIGKILL)  # batch 3 has returned; batch 4 may be half written
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    store = BankStore(url)
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    entries = list(store.iter_entries("shared"))
    batches = {}
    for entry in entries:
        batches.setdefault(int(entry.hash[8:16], 16) if not entry.hash.startswith("c" * 56) else -1, []).append(entry)
    assert len(batches.pop(-1)) == len(batches)
    assert len(batches) >= 4 and set(batches) == set(range(len(batches)))  # everything returned is there
    assert all(len(found) == 200 for found in batches.values())  # a transaction lands whole or not at all
    store.close()


def test_sqlite_runs_in_wal_with_full_sync_and_writes_begin_immediate(tmp_path: Path):
    from sqlalchemy import event

    store = BankStore(f"sqlite:///{tmp_path / 'banks.db'}")
    with store._engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                  for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 30_000, "foreign_keys": 1}
    statements: list[str] = []
    event.listen(store._engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: statements.append(sql))
    store.create_bank("b", "block")
    store.add_entries("b", [NewEntry("pdq", h(1))])
    store.changes_since(0)
    begins = [sql for sql in statements if sql.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE", "BEGIN"]
    store.close()

"""Hash banks in a database: banks of known image hashes, their entries, and the change feed replicas follow.

One SQLAlchemy Core code path serves SQLite (a file; WAL, ``synchronous=FULL``, writes in ``BEGIN IMMEDIATE``)
and PostgreSQL (psycopg 3). A ``BankStore`` is safe to share between threads, and any number of processes may
open the same database.

The change feed: the one-row table ``meta`` holds a global ``version``. Every write transaction first does
``UPDATE meta SET version = version + 1`` (on PostgreSQL that row lock serialises writers, so versions commit in
order; on SQLite ``BEGIN IMMEDIATE`` serialises them) and stamps the rows it writes with the new version. A
removal inserts a tombstone ``(pk, version)`` into ``removed`` and deletes the entry; deleting a bank tombstones
all its entries. ``changes_since`` reads one snapshot, so a replica applying its answers ends with the live set.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from classifiers.errors import ModerationError

ACTIONS = ("block", "review", "allow")
KINDS = ("pdq", "sha256")

BANK_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_DESCRIPTION = 4096
MAX_ENTRY_ID = 256
MAX_NOTE = 4096
SQLITE_BUSY_TIMEOUT_S = 30

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KIND_ALIASES = {"pdq": "pdq", "sha256": "sha256", "sha-256": "sha256"}
_CHUNK = 500  # values per IN (...) list: well under SQLite's bound-parameter limit
_SCHEMA_LOCK = 0x62616E6B73  # pg_advisory_xact_lock key while creating tables ("banks")


@dataclass(frozen=True)
class NewEntry:
    kind: str
    hash: str
    entry_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Entry:
    pk: int
    bank: str
    kind: str
    hash: str
    entry_id: str | None
    note: str | None
    created_at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class Bank:
    name: str
    action: str
    description: str
    entries: int
    created_at: str


@dataclass(frozen=True)
class AddResult:
    added: int
    existing: int


@dataclass(frozen=True)
class Changes:
    version: int
    actions: dict[str, str]
    added: list[Entry]
    removed: list[int]


_metadata = MetaData()
_pk_type = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY AUTOINCREMENT (no reuse)

meta_table = Table(
    "meta", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)
banks_table = Table(
    "banks", _metadata,
    Column("name", String(64), primary_key=True),
    Column("action", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
)
entries_table = Table(
    "entries", _metadata,
    Column("pk", _pk_type, primary_key=True, autoincrement=True),
    Column("bank", String(64), ForeignKey("banks.name"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("entry_id", Text, nullable=True),
    Column("note", Text, nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("version", BigInteger, nullable=False),
    UniqueConstraint("bank", "kind", "hash", name="entries_bank_kind_hash"),
    Index("entries_version", "version"),
    Index("entries_bank_pk", "bank", "pk"),
    Index("entries_bank_entry_id", "bank", "entry_id"),
    sqlite_autoincrement=True,
)
removed_table = Table(
    "removed", _metadata,
    Column("pk", BigInteger, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    Index("removed_version", "version"),
)


class _Rollback(Exception):
    """Raised inside a write to end it without committing (nothing to write)."""


def normalise_hash(kind: str, text: str) -> str:
    """The hash as 64 lowercase hex characters; ``invalid_request`` for anything else or an unknown kind."""
    kind = _normalise_kind(kind)
    if not isinstance(text, str):
        raise ModerationError("invalid_request", f"{kind} hash must be a string")
    value = text.strip().lower()
    if not _HEX64.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ModerationError("invalid_request", f"invalid {kind} hash {shown!r}: expected 64 hex characters")
    return value


def _normalise_kind(kind: str) -> str:
    name = _KIND_ALIASES.get(kind.strip().lower()) if isinstance(kind, str) else None
    if name is None:
        raise ModerationError("invalid_request", f"unknown hash kind {kind!r} (expected one of {', '.join(KINDS)})")
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


MAX_PK = 2**63 - 1  # BIGINT


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _check_text(value: Any, what: str, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ModerationError("invalid_request", f"{what} must be a string")
    if len(value) > limit:
        raise ModerationError("invalid_request", f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise ModerationError("invalid_request", f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" gives
        raise ModerationError("invalid_request", f"{what} is not valid Unicode text") from None


def _check_action(action: Any) -> None:
    if action not in ACTIONS:
        raise ModerationError("invalid_request", f"action must be one of {', '.join(ACTIONS)}, not {action!r}")


def _unknown_bank(name: str) -> ModerationError:
    return ModerationError("unknown_bank", f"no bank named {name!r}")


def _entry(row: Any) -> Entry:
    return Entry(pk=int(row.pk), bank=row.bank, kind=row.kind, hash=row.hash, entry_id=row.entry_id,
                 note=row.note, created_at=row.created_at)


def _engine_url(url: str) -> URL:
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        database = parsed.database
        if database and database != ":memory:":
            database = os.path.expanduser(database)  # sqlite:///~/banks.db: the home directory, not ./~
        return parsed.set(drivername="sqlite+pysqlite", database=database)
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported bank database URL scheme {parsed.drivername!r}: use sqlite:/// or postgresql://")


class BankStore:
    """Banks and their entries in SQLite or PostgreSQL; every method is one transaction."""

    def __init__(self, url: str) -> None:
        engine_url = _engine_url(url)
        self._sqlite = engine_url.get_backend_name() == "sqlite"
        memory = self._sqlite and engine_url.database in (None, "", ":memory:")
        # An in-memory SQLite database lives in one connection: share it, one caller at a time.
        self._lock: Any = threading.RLock() if memory else nullcontext()
        kwargs: dict[str, Any] = {}
        if self._sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
            if memory:
                kwargs["poolclass"] = StaticPool
            else:
                os.makedirs(os.path.dirname(os.path.abspath(engine_url.database)), exist_ok=True)
                kwargs.update(pool_size=5, max_overflow=27, pool_timeout=60)
        else:
            kwargs.update(pool_size=5, max_overflow=27, pool_timeout=60, pool_pre_ping=True)
        self._engine: Engine = create_engine(engine_url, **kwargs)
        if self._sqlite:
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        self._create_schema()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction on one snapshot (REPEATABLE READ on PostgreSQL; a deferred BEGIN in WAL mode)."""
        with self._lock, self._engine.connect() as conn:
            if not self._sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (BEGIN IMMEDIATE on SQLite); raise ``_Rollback`` to leave without writing."""
        with self._lock, self._engine.connect() as conn:
            conn.execution_options(banks_write=True)
            try:
                with conn.begin():
                    yield conn
            except _Rollback:
                pass

    def _bump(self, conn: Connection) -> int:
        """The next version; on PostgreSQL the row lock holds every other writer until this one commits."""
        statement = (meta_table.update().where(meta_table.c.id == 1)
                     .values(version=meta_table.c.version + 1).returning(meta_table.c.version))
        return int(conn.execute(statement).scalar_one())

    def _create_schema(self) -> None:
        with self._write() as conn:
            if not self._sqlite:  # two processes creating the tables at once: one waits for the other
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            _metadata.create_all(conn, checkfirst=True)
            if conn.execute(select(meta_table.c.id).where(meta_table.c.id == 1)).first() is None:
                conn.execute(meta_table.insert().values(id=1, version=0))

    @staticmethod
    def _bank_row(conn: Connection, name: str) -> Any:
        count = (select(func.count()).select_from(entries_table)
                 .where(entries_table.c.bank == banks_table.c.name).scalar_subquery())
        row = conn.execute(select(banks_table, count.label("entries"))
                           .where(banks_table.c.name == name)).first()
        if row is None:
            raise _unknown_bank(name)
        return row

    @staticmethod
    def _bank(row: Any) -> Bank:
        return Bank(name=row.name, action=row.action, description=row.description, entries=int(row.entries),
                    created_at=row.created_at)

    @staticmethod
    def _require_bank(conn: Connection, name: str) -> None:
        if conn.execute(select(banks_table.c.name).where(banks_table.c.name == name)).first() is None:
            raise _unknown_bank(name)

    # -- banks ------------------------------------------------------------------------------------------------

    def version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(meta_table.c.version).where(meta_table.c.id == 1)).scalar_one())

    def create_bank(self, name: str, action: str, description: str = "") -> Bank:
        if not isinstance(name, str) or not BANK_NAME.fullmatch(name):
            raise ModerationError("invalid_request", f"invalid bank name {name!r}: 1 to 64 characters of a-z, "
                                  "0-9, '_', '.', '-', starting with a letter or digit")
        _check_action(action)
        _check_text(description, "description", MAX_DESCRIPTION)
        created = _now()
        try:
            with self._write() as conn:
                self._bump(conn)
                if conn.execute(select(banks_table.c.name).where(banks_table.c.name == name)).first() is not None:
                    raise ModerationError("bank_exists", f"a bank named {name!r} exists")
                conn.execute(banks_table.insert().values(name=name, action=action, description=description or "",
                                                         created_at=created))
        except IntegrityError:
            raise ModerationError("bank_exists", f"a bank named {name!r} exists") from None
        return Bank(name=name, action=action, description=description or "", entries=0, created_at=created)

    def update_bank(self, name: str, *, action: str | None = None, description: str | None = None) -> Bank:
        if action is not None:
            _check_action(action)
        _check_text(description, "description", MAX_DESCRIPTION)
        values = {key: value for key, value in (("action", action), ("description", description))
                  if value is not None}
        with self._write() as conn:
            if values:
                self._bump(conn)
                updated = conn.execute(banks_table.update().where(banks_table.c.name == name).values(**values))
                if updated.rowcount != 1:
                    raise _unknown_bank(name)
            return self._bank(self._bank_row(conn, name))

    def delete_bank(self, name: str) -> None:
        with self._write() as conn:
            version = self._bump(conn)
            self._require_bank(conn, name)
            conn.execute(removed_table.insert().from_select(
                ["pk", "version"],
                select(entries_table.c.pk, literal_column(str(version))).where(entries_table.c.bank == name)))
            conn.execute(entries_table.delete().where(entries_table.c.bank == name))
            conn.execute(banks_table.delete().where(banks_table.c.name == name))

    def get_bank(self, name: str) -> Bank:
        with self._read() as conn:
            return self._bank(self._bank_row(conn, name))

    def list_banks(self) -> list[Bank]:
        count = (select(func.count()).select_from(entries_table)
                 .where(entries_table.c.bank == banks_table.c.name).scalar_subquery())
        with self._read() as conn:
            rows = conn.execute(select(banks_table, count.label("entries")).order_by(banks_table.c.name)).all()
        return [self._bank(row) for row in rows]

    # -- entries ----------------------------------------------------------------------------------------------

    def add_entries(self, bank: str, entries: Sequence[NewEntry]) -> AddResult:
        """Add entries in one transaction; a (kind, hash) the bank holds already, or met earlier in the same call,
        counts as existing. Every entry is checked before anything is written."""
        unique: dict[tuple[str, str], NewEntry] = {}
        for index, entry in enumerate(entries):
            try:
                kind = _normalise_kind(entry.kind)
                value = normalise_hash(kind, entry.hash)
                _check_text(entry.entry_id, "entry_id", MAX_ENTRY_ID)
                _check_text(entry.note, "note", MAX_NOTE)
            except ModerationError as error:
                raise ModerationError("invalid_request", f"entries[{index}]: {error.message}") from None
            except AttributeError:
                raise ModerationError("invalid_request", f"entries[{index}]: not an entry") from None
            unique.setdefault((kind, value), entry)
        total = len(entries)
        if not unique:
            self.get_bank(bank)  # unknown_bank still applies
            return AddResult(added=0, existing=total)
        added = 0
        with self._write() as conn:
            version = self._bump(conn)
            self._require_bank(conn, bank)
            keys = list(unique)
            held: set[tuple[str, str]] = set()
            for kind in sorted({kind for kind, _ in keys}):  # (bank, kind, hash): the unique index, in full
                for chunk in _chunks(sorted({value for k, value in keys if k == kind})):
                    held.update((kind, value) for value in conn.execute(
                        select(entries_table.c.hash).where(entries_table.c.bank == bank, entries_table.c.kind == kind,
                                                           entries_table.c.hash.in_(chunk))).scalars())
            created = _now()
            rows = [{"bank": bank, "kind": kind, "hash": value, "entry_id": unique[kind, value].entry_id,
                     "note": unique[kind, value].note, "created_at": created, "version": version}
                    for kind, value in keys if (kind, value) not in held]
            if not rows:
                raise _Rollback
            conn.execute(entries_table.insert(), rows)
            added = len(rows)
        return AddResult(added=added, existing=total - added)

    def remove_entries(self, bank: str, *, pks: Sequence[int] = (), entry_ids: Sequence[str] = (),
                       hashes: Sequence[tuple[str, str]] = ()) -> int:
        """Remove the bank's entries with any of these pks, entry ids or (kind, hash) pairs; the number removed."""
        try:
            wanted_pks = sorted({int(pk) for pk in pks})
        except (TypeError, ValueError):
            raise ModerationError("invalid_request", "pks must be integers") from None
        if wanted_pks and not (0 <= wanted_pks[0] and wanted_pks[-1] <= MAX_PK):
            raise ModerationError("invalid_request", f"pks must be between 0 and {MAX_PK}")
        wanted_ids = sorted({str(entry_id) for entry_id in entry_ids})
        for index, entry_id in enumerate(wanted_ids):
            _check_text(entry_id, f"entry_ids[{index}]", MAX_ENTRY_ID)
        wanted_hashes: set[tuple[str, str]] = set()
        for index, pair in enumerate(hashes):
            try:
                kind, value = pair
                kind = _normalise_kind(kind)
                wanted_hashes.add((kind, normalise_hash(kind, value)))
            except ModerationError as error:
                raise ModerationError("invalid_request", f"hashes[{index}]: {error.message}") from None
            except (TypeError, ValueError):
                raise ModerationError("invalid_request", f"hashes[{index}]: expected (kind, hash)") from None
        removed = 0
        with self._write() as conn:
            version = self._bump(conn)
            self._require_bank(conn, bank)
            found: set[int] = set()
            where_bank = entries_table.c.bank == bank
            for chunk in _chunks(wanted_pks):
                found.update(conn.execute(select(entries_table.c.pk).where(
                    where_bank, entries_table.c.pk.in_(chunk))).scalars())
            for chunk in _chunks(wanted_ids):
                found.update(conn.execute(select(entries_table.c.pk).where(
                    where_bank, entries_table.c.entry_id.in_(chunk))).scalars())
            for kind in sorted({kind for kind, _ in wanted_hashes}):
                for chunk in _chunks(sorted({value for k, value in wanted_hashes if k == kind})):
                    found.update(conn.execute(select(entries_table.c.pk).where(
                        where_bank, entries_table.c.kind == kind, entries_table.c.hash.in_(chunk))).scalars())
            if not found:
                raise _Rollback
            targets = sorted(found)
            conn.execute(removed_table.insert(), [{"pk": pk, "version": version} for pk in targets])
            for chunk in _chunks(targets):
                conn.execute(entries_table.delete().where(entries_table.c.pk.in_(chunk)))
            removed = len(targets)
        return removed

    def list_entries(self, bank: str, after: int = 0, limit: int = 1000) -> list[Entry]:
        """Up to ``limit`` of the bank's entries with ``pk > after``, ordered by pk."""
        if not isinstance(limit, int) or limit < 1:
            raise ModerationError("invalid_request", "limit must be a positive integer")
        with self._read() as conn:
            rows = conn.execute(select(entries_table).where(entries_table.c.bank == bank,
                                                            entries_table.c.pk > int(after))
                                .order_by(entries_table.c.pk).limit(limit)).all()
            if not rows:
                self._require_bank(conn, bank)
        return [_entry(row) for row in rows]

    def iter_entries(self, bank: str, page: int = 10_000) -> Iterator[Entry]:
        """Every entry of the bank, by pk, read a page (one transaction) at a time."""
        after = 0
        while True:
            batch = self.list_entries(bank, after=after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].pk

    # -- change feed ------------------------------------------------------------------------------------------

    def changes_since(self, version: int) -> Changes:
        """What an index at ``version`` needs to catch up (0: everything live), read from one snapshot: every
        bank's action, the live entries added after ``version``, and the pks removed after it."""
        version = int(version)
        if version < 0:
            raise ValueError("version must be >= 0")
        with self._read() as conn:
            current = int(conn.execute(select(meta_table.c.version).where(meta_table.c.id == 1)).scalar_one())
            actions = {name: action for name, action in conn.execute(select(banks_table.c.name, banks_table.c.action))}
            added = [_entry(row) for row in conn.execute(
                select(entries_table).where(entries_table.c.version > version).order_by(entries_table.c.pk))]
            # From nothing, only the live entries matter: the tombstones of every removal ever made do not.
            removed = [] if version == 0 else list(conn.execute(
                select(removed_table.c.pk).where(removed_table.c.version > version).order_by(removed_table.c.pk)).scalars())
        return Changes(version=current, actions=actions, added=added, removed=[int(pk) for pk in removed])


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Take BEGIN away from the sqlite3 module (``_sqlite_begin`` emits it) and set the durable pragmas."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _wal(cursor: Any) -> None:
    """Turn on WAL, waiting for other connections: on a new file that another one is creating
    the tables in, the switch fails at once with "database is locked" (SQLite does not call the
    busy handler for it), so it is retried here (seen with 6 processes opening one new file)."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    """Writes take the write lock up front (no SQLITE_BUSY on upgrade); reads begin deferred (a snapshot)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("banks_write") else "BEGIN")


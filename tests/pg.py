"""A throwaway PostgreSQL server for tests: the ``postgres_url`` fixture (import it into a test module).

It runs Debian's server binaries (``/usr/lib/postgresql/*/bin``) on a free 127.0.0.1 port with a data
directory in a temporary folder, trust authentication on 127.0.0.1 only and no Unix socket, and stops it
(``pg_ctl stop -m immediate``) when the session ends. PostgreSQL refuses to run as root: as root the server
runs as the ``postgres`` user. Without the binaries the tests that ask for it are skipped.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DATABASE = "banks_test"
MISSING = "PostgreSQL server binaries not found: apt-get install postgresql"
NO_USER = "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as"


def server_bin_dir() -> str | None:
    """The newest Debian PostgreSQL server's bin folder, or the folder of an ``initdb`` on PATH; None if neither."""
    def major(path: str) -> float:
        try:
            return float(path.split("/")[-3])
        except ValueError:
            return 0.0
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_postgres(database: str = DATABASE) -> Iterator[str]:
    """Start a private server, create ``database`` and yield ``postgresql://postgres@127.0.0.1:PORT/database``.

    Raises ``LookupError`` (with ``MISSING``) where there are no server binaries.
    """
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise LookupError(MISSING)
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise LookupError(NO_USER) from None
        prefix = ["runuser", "-u", "postgres", "--"]
    base = tempfile.mkdtemp(prefix="pg-test-")
    data, log = os.path.join(base, "data"), os.path.join(base, "server.log")
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    os.chmod(base, 0o700)

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], cwd=base, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = ""
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as handle:
                    tail = handle.read()[-2000:]
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{tail}")

    started = False
    try:
        run(os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
            "--encoding=UTF8", "--no-locale")
        with open(os.path.join(data, "pg_hba.conf"), "w", encoding="utf-8") as handle:
            handle.write("# tests/pg.py: trust, TCP from 127.0.0.1 only\nhost all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # the free port may be taken between the probe and the start
            port = _free_port()
            options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                       "-c max_connections=100")
            try:
                run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-l", log, "-o", options, "-w", "-t", "60",
                    "start")
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        import psycopg  # the server exists from here: only then does the client library matter

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([*prefix, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                           cwd=base, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def unavailable() -> str | None:
    """Why no test server can run here, or None."""
    if server_bin_dir() is None:
        return MISSING
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return NO_USER
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/banks_test`` on a server private to this test session."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with running_postgres() as url:
        yield url


_schemas = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty bank database: a SQLite file, or a new schema on the session's PostgreSQL
    server (import ``postgres_url`` beside it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'banks.db'}"
    import psycopg

    base = request.getfixturevalue("postgres_url")
    schema = f"test_{next(_schemas)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{base}?options=-csearch_path%3D{schema}"

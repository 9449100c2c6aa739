"""A throwaway PostgreSQL cluster for the tests: ``pg_url`` gives each test an empty database.

The cluster is made with the server's own ``initdb`` and ``pg_ctl`` (on PATH, or
Debian's ``/usr/lib/postgresql/<version>/bin``), lives in a temporary folder,
listens only on a unix socket there, and is stopped and deleted after the test
session.  Durability is off (``fsync=off``): nothing here outlives the session.
PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (or ``nobody``) and owns the folder.  Without the binaries or
the ``psycopg`` driver, tests that use ``pg_url`` are skipped with the fix.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL

USER = "musichash"  # the cluster's superuser, trusted on the socket
# The socket's name only has to be unique within its private folder.
PORT = 5432
INITDB_ARGS = ("-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
SERVER_ARGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@dataclass(frozen=True)
class PgServer:
    socket_dir: Path

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` over the unix socket."""
        url = URL.create(
            "postgresql+psycopg",
            username=USER,
            database=database,
            query={"host": str(self.socket_dir), "port": str(PORT)},
        )
        return url.render_as_string(hide_password=False)


def _bindir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: PATH first, else Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).resolve().parent)):
        return Path(found).resolve().parent
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    versions.sort(key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    return Path(versions[-1]).parent if versions else None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, or under root an unprivileged account."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    return None


def _run(cmd: list, user: pwd.struct_passwd, cwd: Path) -> None:
    as_user = {}
    if os.geteuid() != user.pw_uid:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    # LC_ALL=C: initdb picks up the locale, and a missing one would make it fail.
    env = {**os.environ, "LC_ALL": "C", "HOME": str(cwd)}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, **as_user
    )
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on a unix socket, for the whole session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (pip install 'psycopg[binary]')")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    user = _server_user()
    if user is None:
        pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
    # Not under pytest's tmp_path: under root that is closed to the server's user, and
    # a unix socket's path must stay short (about 100 bytes).
    root = Path(tempfile.mkdtemp(prefix="musichash-pg-"))
    data, log = root / "data", root / "server.log"
    try:
        os.chown(root, user.pw_uid, user.pw_gid)
        _run([bindir / "initdb", "-D", data, "-U", USER, *INITDB_ARGS], user, root)
        # pg_ctl hands -o to a shell; listen_addresses='': the socket only, no TCP port.
        options = f"-k {shlex.quote(str(root))} -p {PORT} -c listen_addresses='' {SERVER_ARGS}"
        try:
            start = ["-D", data, "-l", log, "-o", options, "-w", "start"]
            _run([bindir / "pg_ctl", *start], user, root)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{log.read_text() if log.exists() else ''}") from None
        try:
            yield PgServer(root)
        finally:
            _run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], user, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    import psycopg

    name = f"test_{next(_numbers)}"
    admin = dict(user=USER, host=str(pg_server.socket_dir), port=PORT, dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(**admin, autocommit=True) as conn:
        # FORCE: a test that failed may have left a connection open.
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")

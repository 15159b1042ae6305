"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary folder, the server on
127.0.0.1 (and a unix socket in that folder) on a free port, stopped by its PID at the end.

PostgreSQL refuses to run as root, so under root the server runs as an unprivileged user
(`postgres` where the package created it, else `nobody`) through `runuser`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SERVER_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/bin")
"""Where distributions put `initdb` and `postgres` (Debian/Ubuntu, RHEL, source builds, Homebrew)."""
STARTUP_S = 60.0


def server_bin() -> Path | None:
    """The folder holding `initdb` and `postgres` (the newest version), or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    for pattern in SERVER_DIRS:
        candidates += sorted((Path(p) for p in glob.glob(pattern)), key=_version, reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "postgres").exists()), None)


def unavailable() -> str | None:
    """Why no throwaway cluster can start here, or None when one can."""
    if server_bin() is None:
        return f"no PostgreSQL server binaries (initdb, postgres) on PATH or in {', '.join(SERVER_DIRS)}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'coe[postgres]'"
    if os.geteuid() == 0 and (_unprivileged_user() is None or shutil.which("runuser") is None):
        return "running as root, and no unprivileged user (postgres, nobody) with runuser to run the server as"
    return None


@dataclass
class Cluster:
    """A running server; `new_database()` gives each test a database of its own."""

    host: str
    port: int
    user: str
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"coe_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """initdb, start, yield, stop by PID, delete; fsync off (the data is thrown away anyway)."""
    binaries = server_bin()
    assert binaries is not None, unavailable()
    user = _unprivileged_user() if os.geteuid() == 0 else None
    runner = ["runuser", "-u", user, "--"] if user else []
    folder = Path(tempfile.mkdtemp(prefix="coe-postgres-"))
    try:
        if user:
            account = pwd.getpwnam(user)
            os.chown(folder, account.pw_uid, account.pw_gid)
        data = folder / "data"
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "coe", "--auth=trust", "-E", "UTF8", "--no-sync"]
        subprocess.run([*runner, *initdb], cwd=folder, check=True, capture_output=True, timeout=120)
        server, port = _start(binaries, runner, folder, data)
        try:
            yield Cluster(host="127.0.0.1", port=port, user="coe")
        finally:
            _stop(server, data)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(binaries: Path, runner: list[str], folder: Path, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The server on a free port; a port taken between choosing and binding it is tried again."""
    for _ in range(3):
        port = _free_port()
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        command = [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)]
        command += [arg for setting in settings for arg in ("-c", setting)]
        log = (folder / "server.log").open("ab")
        server = subprocess.Popen([*runner, *command], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if _ready(server, port):
            return server, port
        _stop(server, data)
    raise RuntimeError(f"the throwaway PostgreSQL server did not start; see {folder / 'server.log'}")


def _ready(server: subprocess.Popen[bytes], port: int) -> bool:
    import psycopg

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="coe", dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


def _stop(server: subprocess.Popen[bytes], data: Path) -> None:
    """Immediate shutdown (no checkpoint: the data is thrown away) of the postmaster named in
    postmaster.pid; runuser, our child, then exits too."""
    pid_file = data / "postmaster.pid"
    if server.poll() is None and pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _unprivileged_user() -> str | None:
    """Who runs the server when we are root: initdb and postgres refuse root."""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

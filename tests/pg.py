"""A throwaway PostgreSQL server from Debian's packages, for the test suite and the benchmarks.

``PostgresServer.start()`` runs ``initdb`` in a fresh temporary folder and ``pg_ctl start`` on a free
127.0.0.1 port (its unix socket in the same folder); ``.url`` is ``postgresql://oblix@127.0.0.1:PORT/postgres``
(trust auth, loopback only); ``.stop()`` stops it (``-m fast``) and removes the folder. As root, initdb and the
server run as the ``postgres`` user (initdb refuses root). ``find_bin()`` locates the binaries; tests skip with
its reason when there are none (``./dev test`` installs the ``postgresql`` package).

``.new_schema_url()`` gives a URL whose ``search_path`` is a new, empty schema: each test gets its own
database namespace (and the store's migrations run in it) in ~5 ms instead of a CREATE DATABASE.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from urllib.parse import quote

USER = "oblix"


def find_bin() -> tuple[str | None, str]:
    """``(bin folder, "")`` of the newest installed PostgreSQL, or ``(None, why not)``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1]), ""
    for name in ("pg_ctl", "initdb"):
        path = shutil.which(name)
        if path:
            return os.path.dirname(path), ""
    return None, ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
                  "apt-get install postgresql (./dev test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: str, root: str, port: int):
        self.bindir, self.root, self.port = bindir, root, port
        self.data = os.path.join(root, "data")
        self.url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        self.options = ""

    @classmethod
    def start(cls, fsync: bool = False, max_connections: int = 200) -> PostgresServer:
        bindir, why = find_bin()
        if bindir is None:
            raise FileNotFoundError(why)
        root = tempfile.mkdtemp(prefix="oblix-pg-")
        server = cls(bindir, root, free_port())
        try:
            if os.geteuid() == 0:
                import pwd

                entry = pwd.getpwnam("postgres")
                os.chown(root, entry.pw_uid, entry.pw_gid)
            server._run("initdb", "-D", server.data, "-A", "trust", "-U", USER, "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-sync")
            options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 "
                       f"-c max_connections={max_connections} -c fsync={'on' if fsync else 'off'} "
                       f"-c shared_buffers=64MB")
            server.options = options
            server._run("pg_ctl", "-D", server.data, "-o", options, "-l", os.path.join(root, "log"),
                        "-w", "-t", "60", "start")
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self.bindir, tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.root, "log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def new_schema_url(self, prefix: str = "t") -> str:
        """A URL whose search_path is a new empty schema (created now)."""
        import psycopg

        schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return f"{self.url}?options={quote(f'-csearch_path={schema}')}"

    # -- faults (for a server of the test's own: the session-wide one is shared)
    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``pg_ctl stop -m MODE``)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again on the same port."""
        self._run("pg_ctl", "-D", self.data, "-o", self.options, "-l", os.path.join(self.root, "log"),
                  "-w", "-t", "60", "start")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-o", self.options, "-l", os.path.join(self.root, "log"),
                  "-m", "fast", "-w", "-t", "60", "restart")

    def require_password(self, role: str, password: str) -> None:
        """Create login ``role`` with ``password`` and make TCP logins of that role check it (scram)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE \"{role}\" LOGIN SUPERUSER PASSWORD '{password}'")
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba, encoding="utf-8") as f:
            text = f.read()
        with open(hba, "w", encoding="utf-8") as f:
            f.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + text)
        self._run("pg_ctl", "-D", self.data, "reload")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            except Exception:  # noqa: BLE001 - best effort; the folder goes anyway
                pass
        shutil.rmtree(self.root, ignore_errors=True)


class PgBouncer:
    """Debian's pgbouncer (``/usr/sbin/pgbouncer``) on a free 127.0.0.1 port in front of a
    :class:`PostgresServer`, in ``pool_mode`` ``transaction`` or ``session``; any database name is routed to the
    server (``* =``), auth ``trust`` for the server's user (a userlist file). As root it runs as the ``postgres``
    user (pgbouncer refuses root). ``.url_for(dbname)`` is the URL of a database through the pooler;
    ``.new_database_url()`` creates a fresh database on the server (``CREATE DATABASE``) and returns its URL
    through the pooler (``options=`` cannot pass through pgbouncer, so a schema per test does not work here).
    """

    BIN = "/usr/sbin/pgbouncer"

    def __init__(self, server: PostgresServer, mode: str, root: str, port: int):
        self.server, self.mode, self.root, self.port = server, mode, root, port
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def find() -> tuple[str | None, str]:
        path = PgBouncer.BIN if os.path.exists(PgBouncer.BIN) else shutil.which("pgbouncer")
        if path:
            return path, ""
        return None, "pgbouncer not found: apt-get install pgbouncer (./dev test does)"

    @classmethod
    def start(cls, server: PostgresServer, mode: str = "transaction", pool_size: int = 8) -> PgBouncer:
        import time

        binary, why = cls.find()
        if binary is None:
            raise FileNotFoundError(why)
        root = tempfile.mkdtemp(prefix=f"oblix-pgbouncer-{mode}-")
        bouncer = cls(server, mode, root, free_port())
        with open(os.path.join(root, "userlist.txt"), "w") as f:
            f.write(f'"{USER}" ""\n')
        with open(os.path.join(root, "pgbouncer.ini"), "w") as f:
            f.write(f"[databases]\n* = host=127.0.0.1 port={server.port}\n\n[pgbouncer]\n"
                    f"listen_addr = 127.0.0.1\nlisten_port = {bouncer.port}\nunix_socket_dir =\n"
                    f"auth_type = trust\nauth_file = {root}/userlist.txt\npool_mode = {mode}\n"
                    f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
                    f"logfile = {root}/log\npidfile = {root}/pgbouncer.pid\nserver_check_delay = 0\n")
        cmd = [binary, os.path.join(root, "pgbouncer.ini")]
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            for name in os.listdir(root):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        bouncer.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root)
        deadline = time.monotonic() + 30
        while True:
            if bouncer.proc.poll() is not None:
                err = bouncer.proc.stderr.read().decode(errors="replace")
                bouncer.stop()
                raise RuntimeError(f"pgbouncer exited ({bouncer.proc.returncode}): {err[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", bouncer.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    bouncer.stop()
                    raise RuntimeError("pgbouncer did not listen within 30 s")
                time.sleep(0.05)
        return bouncer

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def new_database_url(self, prefix: str = "b") -> str:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

"""Real PostgreSQL 15 clusters for tests: initdb'd and run as the postgres OS user.

    with PgCluster(Path("/tmp/kg-pg/a"), port=27801) as pg:
        pg.sql("CREATE TABLE t(x int)")

Directories are created world-traversable so the postgres user reaches them even when the
test's temp root is not; everything is removed on stop(remove=True).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("KNOWNGOOD_PG_BIN", "/usr/lib/postgresql/15/bin"))


def postgres_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def make_dirs_for_postgres(path: Path, mode: int = 0o755) -> Path:
    """mkdir -p path owned by postgres; parents we create are world-traversable."""
    uid, gid = postgres_ids()
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir()
        os.chmod(p, 0o755)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def as_postgres(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    uid, gid = postgres_ids()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LC_ALL": "C.UTF-8", **kw.pop("env", {})}
    return subprocess.run(
        [str(a) for a in argv],
        user=uid,
        group=gid,
        extra_groups=[],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=kw.pop("check", True),
        **kw,
    )


class PgCluster:
    def __init__(self, root: Path, port: int, name: str = "kgtest") -> None:
        self.root = Path(root)
        self.port = port
        self.name = name
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"

    # -- lifecycle -----------------------------------------------------------------------
    def init(self, **settings: str | int) -> PgCluster:
        if self.root.exists():
            self.stop(remove=True)
        make_dirs_for_postgres(self.root)
        make_dirs_for_postgres(self.socket_dir)
        make_dirs_for_postgres(self.data_dir, 0o700)
        as_postgres(
            [PG_BIN / "initdb", "-D", self.data_dir, "--data-checksums", "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C"]
        )  # fmt: skip
        self.configure(
            listen_addresses="127.0.0.1",
            port=self.port,
            unix_socket_directories=str(self.socket_dir),
            cluster_name=self.name,
            wal_level="replica",
            max_wal_senders=4,
            logging_collector="off",
            **settings,
        )
        return self

    def configure(self, **settings: str | int) -> None:
        """Append settings to postgresql.conf (last one wins)."""
        lines = []
        for key, value in settings.items():
            text = (
                str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
            )
            lines.append(f"{key} = {text}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    def start(self, timeout: float = 60) -> PgCluster:
        as_postgres(
            [PG_BIN / "pg_ctl", "start", "-D", self.data_dir, "-w", "-t", str(int(timeout)),
             "-l", self.root / "server.log"]
        )  # fmt: skip
        return self

    def stop(self, remove: bool = False, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            as_postgres(
                [PG_BIN / "pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60"],
                check=False,
            )
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(remove=True)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- queries ---------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True,
            connect_timeout=5,
        )  # fmt: skip

    def sql(self, query: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: tuple = (), dbname: str = "postgres"):
        rows = self.sql(query, params, dbname)
        return rows[0][0] if rows else None

    def switch_wal(self) -> str:
        """Force a segment switch and wait until it is archived; returns its name."""
        name = self.scalar("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
            if row[0] and row[0] >= name:
                return name
            time.sleep(0.2)
        raise AssertionError(f"segment {name} not archived in 60s: {row}\n{self.log()[-3000:]}")

    def backend_config(self) -> dict:
        """The `pg` section of a knowngood backup configuration for this cluster."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "data_dir": str(self.data_dir),
            "bin_dir": str(PG_BIN),
            "os_user": "postgres",
        }

# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one way this collection reaches PostgreSQL.

Every module and module_util that talks to a cluster goes through here: where the cluster is
(`Target`), a connection (`connect`), a psql command line (`psql_argv`, `psql`), a command run
as the cluster's OS user (`run`), and the facts the runbooks decide on: the cluster's identity,
its settings, its recovery state and what pg_amcheck finds.
"""

import dataclasses
import os
import pwd
import re
import subprocess

DEFAULT_BIN_DIR = "/usr/lib/postgresql/15/bin"
COMMAND_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


class PgError(Exception):
    """PostgreSQL could not be reached or a command against it failed."""


def _quote(value):
    """A libpq keyword value, quoted when it needs to be."""
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a cluster is and how to reach it (the password is never part of a conninfo)."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    dbname: str = "postgres"
    password: str = dataclasses.field(default="", repr=False)
    bin_dir: str = DEFAULT_BIN_DIR
    os_user: str = "postgres"

    @classmethod
    def from_params(cls, params, **overrides):
        """A Target from a dict with any of the field names (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(params or {}).items() if k in names and v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "port" in values:
            values["port"] = int(values["port"])
        return cls(**values)

    @property
    def where(self):
        return "%s:%s" % (self.host, self.port)

    def conninfo(self, dbname=None, connect_timeout=5):
        parts = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "connect_timeout": connect_timeout,
        }
        return " ".join("%s=%s" % (k, _quote(v)) for k, v in parts.items())

    def binary(self, name):
        return os.path.join(self.bin_dir, name)

    def env(self, connect_timeout=5, base=None):
        """The environment for a libpq client: the password travels here, never in argv."""
        env = dict(os.environ if base is None else base)
        env["PGCONNECT_TIMEOUT"] = str(connect_timeout)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def has_psycopg():
    """Whether this host can talk to PostgreSQL in-process (psycopg is importable)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def connect(target, dbname=None, connect_timeout=5, autocommit=True, error=PgError):
    """A psycopg connection; `error` (PgError by default) with the first line of the reason."""
    try:
        import psycopg
    except ImportError:
        raise error("talking to PostgreSQL needs the psycopg package on this host") from None
    if isinstance(target, str):
        conninfo, kwargs, where = target, {}, "the cluster"
    else:
        conninfo = target.conninfo(dbname, connect_timeout)
        kwargs = {"password": target.password} if target.password else {}
        where = "%s as %s" % (target.where, target.user)
    try:
        return psycopg.connect(
            conninfo, autocommit=autocommit, connect_timeout=connect_timeout, **kwargs
        )
    except psycopg.Error as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise error("cluster not reachable at %s: %s" % (where, first)) from None


def os_user_ids(name, error=PgError):
    """(uid, gid, home) of the cluster's OS user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise error("OS user %r does not exist on this host" % name) from None
    return entry.pw_uid, entry.pw_gid, entry.pw_dir or "/tmp"


def as_os_user_kwargs(name, error=PgError):
    """subprocess keyword arguments that run a command as `name` when we are root (PostgreSQL's
    tools refuse root, and files they write must belong to the cluster's user)."""
    if os.geteuid() != 0:
        return {}
    uid, gid, _home = os_user_ids(name, error)
    if uid == 0:
        return {}
    return {"user": uid, "group": gid, "extra_groups": []}


def alter_system(conn, settings):
    """ALTER SYSTEM SET every setting, then one reload; the statements run, as text."""
    from psycopg import sql

    queries = []
    for name, value in settings.items():
        # ALTER SYSTEM takes no bind parameters: identifier and literal quoted by psycopg.
        query = sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        queries.append(query.as_string(conn))
        conn.execute(query)
    if queries:
        conn.execute("SELECT pg_reload_conf()")
        queries.append("SELECT pg_reload_conf()")
    return queries


def settings_diff(before, after, names):
    """The module diff of these server settings, one `name = value` line each."""
    return {
        "before": "".join("%s = %s\n" % (k, before.get(k)) for k in names),
        "after": "".join("%s = %s\n" % (k, after[k]) for k in names),
        "before_header": "postgresql settings",
        "after_header": "postgresql settings",
    }


def conf_value(value):
    """A value as postgresql.conf writes it: on/off, a bare integer, else a quoted string."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def run(argv, *, os_user=None, env=None, timeout=60, cwd="/", error=PgError, what=None):
    """Run a PostgreSQL tool (as `os_user` when given and we are root); the CompletedProcess.
    A missing binary or a timeout is `error`; a non-zero exit is the caller's to judge."""
    kwargs = as_os_user_kwargs(os_user, error) if os_user else {}
    name = what or os.path.basename(str(argv[0]))
    try:
        return subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            check=False,
            **kwargs,
        )
    except FileNotFoundError:
        raise error("%s: command not found (%s)" % (name, argv[0])) from None
    except subprocess.TimeoutExpired:
        raise error("%s did not finish in %ss" % (name, timeout)) from None
    except OSError as exc:
        raise error("could not run %s: %s" % (name, exc)) from None


def _connection_args(target):
    """Where a libpq client tool connects: host, port and user (the password goes in env)."""
    return ["-h", target.host, "-p", str(target.port), "-U", target.user]


def psql_argv(target, sql=None, dbname=None, files=(), single_transaction=False):
    """psql's command line against `target`: no psqlrc, unaligned tuples only, stop on error."""
    argv = [target.binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    if single_transaction:
        argv.append("--single-transaction")
    argv += _connection_args(target) + ["-d", dbname or target.dbname]
    if sql is not None:
        argv += ["-c", sql]
    for path in files:
        argv += ["-f", str(path)]
    return argv


def psql(target, sql, dbname=None, timeout=20, connect_timeout=3, os_user=None, error=PgError):
    """(returncode, stdout, stderr) of one psql -c, stripped."""
    proc = run(
        psql_argv(target, sql, dbname),
        os_user=os_user,
        env=target.env(connect_timeout),
        timeout=timeout,
        error=error,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def psql_value(target, sql, dbname=None, timeout=60, os_user=None, error=PgError):
    """One value through psql; `error` naming the cluster when psql fails."""
    code, out, err = psql(target, sql, dbname, timeout=timeout, os_user=os_user, error=error)
    if code != 0:
        raise error("could not query PostgreSQL at %s: %s" % (target.where, err))
    return out


IDENTITY_SQL = {
    "system_identifier": "SELECT system_identifier::text FROM pg_control_system()",
    "timeline": "SELECT timeline_id FROM pg_control_checkpoint()",
    "server_version_num": "SELECT current_setting('server_version_num')::int",
    "cluster_name": "SELECT current_setting('cluster_name')",
    "data_directory": "SELECT current_setting('data_directory')",
    "in_recovery": "SELECT pg_is_in_recovery()",
}


def identity(conn):
    """Which cluster this is: system identifier, timeline, version, name, data directory."""
    return {key: conn.execute(sql).fetchone()[0] for key, sql in IDENTITY_SQL.items()}


def settings(conn, names):
    """{name: current_setting(name)} for each name (None where the setting does not exist)."""
    return {
        name: conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()[0]
        for name in names
    }


def streaming_standbys(conn):
    """{application_name: sync_state} of every standby streaming from this server now."""
    rows = conn.execute(
        "SELECT application_name, sync_state FROM pg_stat_replication WHERE state = 'streaming'"
    ).fetchall()
    return dict(rows)


def recovery_state(conn):
    """Whether the cluster replays WAL, whether replay is paused, and how far it got."""
    in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    state = {"in_recovery": in_recovery, "pause_state": None, "replay_lsn": None}
    if in_recovery:
        row = conn.execute(
            "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn()::text, "
            "pg_last_xact_replay_timestamp(), pg_last_wal_receive_lsn()::text"
        ).fetchone()
        state.update(
            pause_state=row[0],
            replay_lsn=row[1],
            last_replay_timestamp=row[2].isoformat() if row[2] else None,
            receive_lsn=row[3],
        )
    return state


QUALIFIED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*[.][A-Za-z_][A-Za-z0-9_$]*$")


def wal_position(conn, in_recovery):
    """Where this instance's WAL is: a primary's current LSN and its timeline (from the WAL
    file name, which moves at promotion, unlike the last checkpoint's); a standby's replayed
    LSN and the timeline its WAL receiver streams (None when it does not stream)."""
    if not in_recovery:
        row = conn.execute(
            "SELECT pg_current_wal_lsn()::text, "
            "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
        ).fetchone()
        return {"lsn": row[0], "timeline": row[1], "streaming": False}
    row = conn.execute(
        "SELECT pg_last_wal_replay_lsn()::text, "
        "(SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming')"
    ).fetchone()
    return {"lsn": row[0], "timeline": row[1], "streaming": row[1] is not None}


def setting_sources(conn, names):
    """{name: {value, sourcefile}} from pg_settings for each name that exists."""
    rows = conn.execute(
        "SELECT name, setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = ANY(%s)",
        (list(names),),
    ).fetchall()
    return {name: {"value": value, "sourcefile": source} for name, value, source in rows}


CORRUPT_RELATION = re.compile(r'(?:table|index) "[^".]+\.([^".]+\.[^".]+)"')


def amcheck(target, dbname, exclude=(), heapallindexed=False, timeout=600, error=PgError):
    """What pg_amcheck finds in one database: corrupt?, the first findings, the relations.
    `exclude` holds pg_amcheck relation patterns (a table's indexes and TOAST go with it)."""
    argv = [target.binary("pg_amcheck"), *_connection_args(target), "-d", dbname]
    argv += ["--no-dependent-toast"] + (["--heapallindexed"] if heapallindexed else [])
    argv += ["--exclude-relation=" + pattern for pattern in exclude]
    proc = run(argv, env=target.env(), timeout=timeout, cwd=None, error=error)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return {
        "corrupt": proc.returncode != 0,
        "exit_code": proc.returncode,
        "finding_count": len(lines),
        "findings": lines[:10],
        "corrupt_relations": sorted(set(CORRUPT_RELATION.findall("\n".join(lines)))),
    }


def exact_relation(name):
    """A pg_amcheck pattern that matches schema.table literally (double quotes)."""
    schema, _dot, table = name.partition(".")
    return '"%s"."%s"' % (schema, table)


FULL_READ_SQL = """DO $$DECLARE r record; BEGIN
FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
AND format('%%s.%%s', n.nspname, c.relname) <> ALL (%s::text[]) LOOP
EXECUTE format('SELECT count(*) FROM %%s', r.rel); END LOOP; END$$"""


def databases(conn):
    """The databases that take connections, templates left out, by name."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def has_extension(target, dbname, name, error=PgError):
    conn = connect(target, dbname, error=error)
    try:
        row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = %s", (name,))
        return row.fetchone()[0] > 0
    finally:
        conn.close()


def full_read(target, dbname, exclude=(), error=PgError):
    """Read every permanent table of one database (every page's checksum is verified);
    None when it reads, else the first line of the error."""
    import psycopg

    try:
        conn = connect(target, dbname, error=error)
    except error as exc:
        return str(exc)
    try:
        # A DO block takes no parameters: the excluded names go in as a quoted literal array.
        literal = "ARRAY[%s]" % ", ".join("'%s'" % n.replace("'", "''") for n in exclude)
        conn.execute("SET statement_timeout = 0")
        conn.execute(FULL_READ_SQL % literal)
        return None
    except psycopg.Error as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        conn.close()


def read_only_query(target, dbname, sql, timeout_ms=60000, error=PgError):
    """(value of the first column of the first row, error) of an operator's check, run in a
    read-only transaction with a statement timeout."""
    import psycopg

    try:
        conn = connect(target, dbname, autocommit=False, error=error)
    except error as exc:
        return None, str(exc)
    try:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = %d" % int(timeout_ms))
        row = conn.execute(sql).fetchone()
        return (None if row is None else row[0]), None
    except psycopg.Error as exc:
        return None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        conn.rollback()
        conn.close()

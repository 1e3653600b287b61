# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schema migrations a release depends on: plain SQL directories and Alembic.

A plain SQL directory holds NNNN_name.up.sql and, when the change can be undone,
NNNN_name.down.sql. Applied revisions live in knowngood_schema_migrations. A release
declares in release.json the revisions it works with ("schema": ["0001", "0002"]).
"""

import os
import re

MIGRATION_RE = re.compile(r"^(?P<rev>[0-9]{4,})_(?P<name>[A-Za-z0-9_]+)\.(?P<dir>up|down)\.sql$")
VERSION_TABLE = "knowngood_schema_migrations"
DB_RUNBOOK = "playbooks/rollback-database.yml"


class MigrationError(Exception):
    """Raised for anything that stops a migration plan; main() turns it into fail_json."""


def scan_sql_dirs(dirs):
    """Merge the migrations found in dirs: {revision: {"name", "up", "down"}}.

    Several directories are searched because the down script of a revision ships with
    the newer release that introduced it, not with the older release being restored.
    """
    found = {}
    for directory in dirs:
        if not directory or not os.path.isdir(directory):
            continue
        for filename in sorted(os.listdir(directory)):
            match = MIGRATION_RE.match(filename)
            if not match:
                continue
            entry = found.setdefault(
                match.group("rev"), {"name": match.group("name"), "up": None, "down": None}
            )
            entry.setdefault(match.group("dir"), None)
            if entry[match.group("dir")] is None:
                entry[match.group("dir")] = os.path.join(directory, filename)
    return found


def plan_sql(applied, supported, available, latest=False):
    """Steps that bring the live schema into `supported`.

    With latest=True (deploys), a schema inside `supported` but older than its newest
    revision is migrated up too; rollbacks only move a schema the target cannot run on.

    applied: revisions recorded as applied; supported: revisions the target release works
    with; available: scan_sql_dirs() output. Returns a list of steps, each
    {"revision", "name", "direction", "script", "reversible"}.
    """
    if not supported:
        return []
    supported = sorted(supported)
    head = max(applied) if applied else None
    if head is not None and head in supported and not (latest and head < supported[-1]):
        return []
    steps = []
    if head is not None and head > supported[-1]:
        for rev in sorted((r for r in applied if r > supported[-1]), reverse=True):
            entry = available.get(rev, {})
            steps.append(
                {
                    "revision": rev,
                    "name": entry.get("name"),
                    "direction": "down",
                    "script": entry.get("down"),
                    "reversible": bool(entry.get("down")),
                }
            )
        return steps
    for rev in sorted(r for r in available if r <= supported[-1] and r not in applied):
        entry = available[rev]
        if not entry.get("up"):
            raise MigrationError("revision %s has no up script" % rev)
        steps.append(
            {
                "revision": rev,
                "name": entry["name"],
                "direction": "up",
                "script": entry["up"],
                "reversible": bool(entry.get("down")),
            }
        )
    return steps


def refuse_irreversible(steps, live, target, restore_points=None):
    """Fail before anything runs when a needed down migration does not exist.

    restore_points ({revision: restore point created before it was applied}) lets the
    message name the exact database rollback to run instead.
    """
    blocked = [s["revision"] for s in steps if s["direction"] == "down" and not s["reversible"]]
    if blocked:
        point = (restore_points or {}).get(min(blocked))
        how = (
            "%s -e db_strategy=pitr -e target_name=%s (the restore point taken before %s was "
            "applied)" % (DB_RUNBOOK, point, min(blocked))
            if point
            else "%s (db_strategy=pitr, target_name set to the release's restore point)"
            % DB_RUNBOOK
        )
        raise MigrationError(
            "live schema %s is newer than the target release supports (%s) and revision(s) %s "
            "cannot be undone (no down migration). Nothing was switched. Restore the database "
            "to a point before the migration with %s and then roll the code back."
            % (live, ", ".join(target), ", ".join(blocked), how)
        )


def ensure_version_table(conn):
    conn.execute(
        "CREATE TABLE IF NOT EXISTS %s ("
        " revision text PRIMARY KEY, name text, applied_at timestamptz NOT NULL DEFAULT now(),"
        " run_id text)" % VERSION_TABLE
    )
    conn.execute("ALTER TABLE %s ADD COLUMN IF NOT EXISTS restore_point text" % VERSION_TABLE)


def restore_points(conn):
    """{revision: name of the restore point created just before it was applied}."""
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
        (VERSION_TABLE, "restore_point"),
    ).fetchone()
    if row is None:
        return {}
    return dict(
        conn.execute(
            "SELECT revision, restore_point FROM %s WHERE restore_point IS NOT NULL" % VERSION_TABLE
        ).fetchall()
    )


def create_restore_point(conn, name):
    """pg_create_restore_point(name): a point PITR can stop at by name; returns its LSN."""
    return str(conn.execute("SELECT pg_create_restore_point(%s)", (name,)).fetchone()[0])


def applied_revisions(conn):
    row = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()
    if row[0] is None:
        return []
    return [r[0] for r in conn.execute("SELECT revision FROM %s ORDER BY revision" % VERSION_TABLE)]


def apply_sql(conn, steps, run_id, restore_point=None):
    """Run every step in one transaction: PostgreSQL DDL is transactional, so a failure
    half-way leaves the schema exactly as it was. restore_point is recorded with every
    revision applied up."""
    executed = []
    with conn.transaction():
        ensure_version_table(conn)
        for step in steps:
            with open(step["script"]) as handle:
                conn.execute(handle.read())
            if step["direction"] == "up":
                conn.execute(
                    "INSERT INTO %s (revision, name, run_id, restore_point)"
                    " VALUES (%%s, %%s, %%s, %%s)" % VERSION_TABLE,
                    (step["revision"], step["name"], run_id, restore_point),
                )
            else:
                conn.execute(
                    "DELETE FROM %s WHERE revision = %%s" % VERSION_TABLE, (step["revision"],)
                )
            executed.append(
                "%s %s (%s)"
                % (step["direction"], step["revision"], os.path.basename(step["script"]))
            )
    return executed

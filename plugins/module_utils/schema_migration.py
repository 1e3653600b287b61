# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What knowngood.runbooks.schema_migration does: its argument spec, the plan and the migration.

The module and its in-process action (plugins/action/schema_migration.py) both call run() with
an object carrying params, check_mode and run_command (AnsibleModule, or the action's stand-in).
"""

import time
import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils.migrations import (
    MigrationError,
    applied_revisions,
    apply_sql,
    create_restore_point,
    plan_sql,
    refuse_irreversible,
    restore_points,
    scan_sql_dirs,
)

try:
    import psycopg
except ImportError:
    psycopg = None
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()
else:
    PSYCOPG_IMPORT_ERROR = None


ARGUMENT_SPEC = dict(
    dsn=dict(type="str", required=True, no_log=True),
    engine=dict(type="str", default="sql", choices=["sql", "alembic"]),
    supported_revisions=dict(type="list", elements="str", required=True),
    migrations_dirs=dict(type="list", elements="path", default=[]),
    alembic_config=dict(type="path"),
    alembic_command=dict(type="path", default="alembic"),
    mode=dict(type="str", default="compatible", choices=["compatible", "latest"]),
    allow_down=dict(type="bool", default=True),
    run_id=dict(type="str"),
    restore_point=dict(type="str"),
)
REQUIRED_IF = [("engine", "alembic", ("alembic_config",))]


def _alembic(module, args):
    env = {"KNOWNGOOD_DSN": module.params["dsn"]}
    argv = [module.params["alembic_command"], "-c", module.params["alembic_config"]] + args
    rc, out, err = module.run_command(argv, environ_update=env)
    return rc, out, err


def plan_alembic(module, live):
    """One step to the newest supported revision, up or down, checked before anything runs."""
    supported = module.params["supported_revisions"]
    target = supported[-1]
    if live == target or (live in supported and module.params["mode"] == "compatible"):
        return []
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError:
        raise MigrationError(missing_required_lib("alembic")) from None
    script = ScriptDirectory.from_config(Config(module.params["alembic_config"]))
    if script.get_revision(target) is None:
        raise MigrationError("alembic has no revision %s" % target)
    ancestors = [rev.revision for rev in script.walk_revisions(base="base", head=target)]
    direction = "up" if live is None or live in ancestors else "down"
    rc, err = 0, ""
    if direction == "down":
        # Offline mode renders the SQL without touching the database; a downgrade() that
        # raises (the Alembic idiom for "cannot be undone") fails here, before anything runs.
        rc, _out, err = _alembic(module, ["downgrade", "%s:%s" % (live, target), "--sql"])
    return [
        {
            "revision": target,
            "name": None,
            "direction": direction,
            "script": None,
            "reversible": rc == 0,
            "error": err.strip()[-400:] if rc else None,
        }
    ]


def predicted_head(live, steps):
    """Newest revision once steps have run: downs remove revisions, ups add them."""
    if not steps:
        return live
    last = steps[-1]
    if last["direction"] == "up":
        return last["revision"]
    return "below %s" % last["revision"]


def alembic_live(conn):
    row = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
    if row[0] is None:
        return None
    found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return found[0] if found else None


def run(module):
    """(failed, result) of one task."""
    if psycopg is None:
        return True, {"msg": missing_required_lib("psycopg"), "exception": PSYCOPG_IMPORT_ERROR}
    started = time.time()
    params = module.params
    supported = params["supported_revisions"]
    queries = []
    point = point_lsn = None
    try:
        with postgres.connect(params["dsn"], error=MigrationError) as conn:
            if params["engine"] == "sql":
                applied = applied_revisions(conn)
                live = max(applied) if applied else None
                steps = plan_sql(
                    applied,
                    supported,
                    scan_sql_dirs(params["migrations_dirs"]),
                    latest=params["mode"] == "latest",
                )
            else:
                live = alembic_live(conn)
                steps = plan_alembic(module, live)
            downs = [s for s in steps if s["direction"] == "down"]
            if downs and not params["allow_down"]:
                raise MigrationError(
                    "down migrations needed (%s) but allow_down is false"
                    % ", ".join(s["revision"] for s in downs)
                )
            points = restore_points(conn) if params["engine"] == "sql" else {}
            refuse_irreversible(steps, live, supported, points)
            after = live
            if steps and not module.check_mode:
                ups = [s for s in steps if s["direction"] == "up"]
                if params["restore_point"] and ups:
                    try:
                        point_lsn = create_restore_point(conn, params["restore_point"])
                    except psycopg.Error as exc:
                        raise MigrationError(
                            "cannot create restore point %s before migrating, nothing was "
                            "migrated: %s" % (params["restore_point"], str(exc).strip())
                        ) from None
                    point = params["restore_point"]
                    queries.append("restore point %s at %s" % (point, point_lsn))
                if params["engine"] == "sql":
                    queries += apply_sql(conn, steps, params["run_id"], point)
                    after = max(applied_revisions(conn), default=None)
                else:
                    step = steps[0]
                    rc, _out, err = _alembic(
                        module,
                        [
                            "downgrade" if step["direction"] == "down" else "upgrade",
                            step["revision"],
                        ],
                    )
                    if rc != 0:
                        raise MigrationError("alembic %s failed: %s" % (step["direction"], err))
                    queries.append("alembic %s %s" % (step["direction"], step["revision"]))
                    after = alembic_live(conn)
    except (MigrationError, psycopg.Error, OSError) as exc:
        return True, {
            "msg": str(exc),
            "restore_point": point,
            "restore_point_lsn": point_lsn,
            "duration_ms": int((time.time() - started) * 1000),
        }
    plan = [{k: s[k] for k in ("revision", "name", "direction", "reversible")} for s in steps]
    return False, {
        "changed": bool(steps),
        "live_revision": live,
        "revision_after": after,
        "plan": plan,
        "restore_point": point,
        "restore_point_lsn": point_lsn,
        "queries": queries,
        "duration_ms": int((time.time() - started) * 1000),
        "diff": {"before": {"revision": live}, "after": {"revision": predicted_head(live, steps)}},
    }

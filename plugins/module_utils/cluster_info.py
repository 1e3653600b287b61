# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What knowngood.runbooks.pg_cluster_info does: its argument spec and the read.

The module and its in-process action (plugins/action/pg_cluster_info.py) both call run().
"""

import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres

ARGUMENT_SPEC = dict(
    host=dict(type="str", default="127.0.0.1"),
    port=dict(type="int", default=5432),
    user=dict(type="str", default="postgres"),
    password=dict(type="str", no_log=True),
    dbname=dict(type="str", default="postgres"),
    bin_dir=dict(type="path", default=postgres.DEFAULT_BIN_DIR),
    wait=dict(type="int", default=0),
    amcheck=dict(type="bool", default=False),
    full_read=dict(type="bool", default=False),
    exclude_tables=dict(type="list", elements="str", default=[]),
    queries=dict(type="list", elements="raw", default=[]),
    query_database=dict(type="str", default="postgres"),
    settings=dict(type="list", elements="str", default=[]),
)


def _connect(target, dbname, wait):
    deadline = time.monotonic() + max(0, wait)
    while True:
        try:
            return postgres.connect(target, dbname), ""
        except postgres.PgError as exc:
            if time.monotonic() >= deadline:
                return None, str(exc)
        time.sleep(1)


def _data_checks(target, names, params):
    exclude = params["exclude_tables"]
    amchecked, read, problems = [], [], []
    patterns = [postgres.exact_relation(name) for name in exclude]
    for name in names:
        if params["amcheck"] and postgres.has_extension(target, name, "amcheck"):
            found = postgres.amcheck(target, name, patterns, heapallindexed=True)
            amchecked.append({"database": name, **found})
            if found["corrupt"]:
                problems.append("pg_amcheck found corruption in " + name)
        elif params["full_read"]:
            error = postgres.full_read(target, name, exclude)
            read.append({"database": name, "error": error})
            if error:
                problems.append("a full read failed in %s: %s" % (name, error))
    return amchecked, read, problems


def _queries(target, queries, default_db):
    out, problems = [], []
    for item in queries:
        spec = item if isinstance(item, dict) else {"sql": str(item)}
        database = spec.get("database") or default_db
        value, error = postgres.read_only_query(target, database, spec["sql"])
        ok = error is None and (value is True or str(value) == "t")
        name = spec.get("name") or spec["sql"]
        out.append({"name": name, "database": database, "ok": ok, "value": value, "error": error})
        if not ok:
            problems.append("check returned false or failed: %s" % (error or name))
    return out, problems


def run(params):
    """(failed, result): the cluster's state, or why it could not be read."""
    bad = [n for n in params["exclude_tables"] if not postgres.QUALIFIED_NAME.match(n)]
    if bad:
        return True, {"changed": False, "msg": "exclude_tables: write schema.table, not %s" % bad}
    for item in params["queries"]:
        if not (isinstance(item, str) or (isinstance(item, dict) and item.get("sql"))):
            return True, {
                "changed": False,
                "msg": "each query is SQL or {name, sql, database}, not %r" % (item,),
            }
    target = postgres.Target.from_params(params)
    conn, error = _connect(target, params["dbname"], params["wait"])
    checks = {"amcheck": [], "full_read": [], "queries": [], "problems": []}
    if conn is None:
        return False, {"changed": False, "reachable": False, "error": error, "checks": checks}
    try:
        result = {
            "identity": postgres.identity(conn),
            "recovery": postgres.recovery_state(conn),
            "databases": postgres.databases(conn),
            "settings": postgres.setting_sources(conn, params["settings"]),
        }
        result["wal"] = postgres.wal_position(conn, result["recovery"]["in_recovery"])
    finally:
        conn.close()
    checks["amcheck"], checks["full_read"], problems = _data_checks(
        target, result["databases"], params
    )
    checks["queries"], failed = _queries(target, params["queries"], params["query_database"])
    checks["problems"] = problems + failed
    result.update(changed=False, reachable=True, error="", checks=checks)
    return False, result

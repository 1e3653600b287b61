# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Synchronous replication as inventory data, and what a primary's settings must be.

The cluster declares it once (knowngood_db_synchronous on the primary's host or the `all`
group); the settings follow whichever node is the primary. plan() turns the declaration, the
primary's inventory name, the nodes that may not be waited for (fenced, not yet re-seeded) and
the standbys that stream from the primary now into the two settings PostgreSQL reads:
synchronous_standby_names (naming the standbys that remain, never the primary itself) and
synchronous_commit.

When fewer standbys remain than the declaration waits for, a primary that kept the old
setting would block every commit. `without_standby` decides, and the default is the one that
never blocks: `async` runs asynchronous until a standby streams again (degraded, loudly: the
caller reports and audits the warning); `refuse` keeps RPO 0 by refusing to run degraded (the
runbook stops before it promotes). Standard library only.
"""

SETTINGS = ("synchronous_standby_names", "synchronous_commit")
COMMIT_LEVELS = ("on", "remote_apply", "remote_write")
METHODS = ("ANY", "FIRST")
POLICIES = ("async", "refuse")
DEFAULTS = {
    "enabled": False,
    "method": "ANY",
    "num_sync": 1,
    "commit": "on",
    "names": {},
    "without_standby": "async",
}


class ReplicationError(Exception):
    """A declaration that cannot be used, or a refusal to run degraded."""


def validate(spec):
    """The declaration with defaults filled in; ReplicationError listing every problem."""
    if not isinstance(spec, dict):
        raise ReplicationError("knowngood_db_synchronous must be a mapping")
    unknown = sorted(set(spec) - set(DEFAULTS))
    out = dict(DEFAULTS, **spec)
    problems = ["unknown keys %s (known: %s)" % (unknown, ", ".join(DEFAULTS))] if unknown else []
    out["method"] = str(out["method"]).upper()
    if out["method"] not in METHODS:
        problems.append("method %r is not ANY or FIRST" % out["method"])
    if out["commit"] not in COMMIT_LEVELS:
        problems.append("commit %r is not one of %s" % (out["commit"], ", ".join(COMMIT_LEVELS)))
    if out["without_standby"] not in POLICIES:
        problems.append("without_standby %r is not async or refuse" % out["without_standby"])
    try:
        out["num_sync"] = int(out["num_sync"])
        if out["num_sync"] < 1:
            raise ValueError
    except (TypeError, ValueError):
        problems.append("num_sync %r is not a positive number" % (out["num_sync"],))
    names = out["names"]
    if not isinstance(names, dict) or not all(
        isinstance(v, str) and v.strip() for v in names.values()
    ):
        problems.append("names must map each database host to its standby's application_name")
    elif out["enabled"] and len(names) < 2:
        problems.append("names must list every database node (at least two)")
    if problems:
        raise ReplicationError("knowngood_db_synchronous: " + "; ".join(problems))
    out["enabled"] = bool(out["enabled"])
    return out


def _quote_name(name):
    return '"%s"' % name.replace('"', '""')


def standby_names(method, num_sync, names):
    """synchronous_standby_names for these application names ('' for none)."""
    if not names:
        return ""
    return "%s %d (%s)" % (method, num_sync, ", ".join(_quote_name(n) for n in names))


def plan(spec, primary, exclude=(), streaming=()):
    """The settings the primary must run with, and whether that is degraded.

    spec: a declaration (validated here); primary: the primary's inventory name; exclude:
    inventory names not to wait for (fenced nodes); streaming: application names streaming from
    the primary now. Returns {managed, settings, standbys, streaming, degraded, warning}; raises
    ReplicationError when without_standby is refuse and too few standbys remain."""
    spec = validate(spec)
    if not spec["enabled"]:
        return {
            "managed": False,
            "settings": {},
            "standbys": [],
            "streaming": [],
            "degraded": False,
            "warning": "",
        }
    names = spec["names"]
    if primary not in names:
        raise ReplicationError(
            "knowngood_db_synchronous.names has no entry for the primary %s" % primary
        )
    candidates = [names[h] for h in sorted(names) if h != primary and h not in set(exclude)]
    live = [n for n in candidates if n in set(streaming)]
    need = spec["num_sync"]
    degraded = len(live) < need
    if spec["without_standby"] == "refuse":
        if len(candidates) < need:
            raise ReplicationError(
                "synchronous replication waits for %d standby(s) and only %s remain(s) for %s "
                "(without %s); refusing to run degraded (without_standby: refuse). Re-seed a "
                "standby first, or run with without_standby: async to accept an asynchronous "
                "window" % (need, candidates or "none", primary, sorted(exclude) or "none")
            )
        # RPO 0 above all: name them even before they stream; commits wait until they do.
        chosen, degraded = candidates, False
    elif degraded:
        # Wait for the standbys that stream, as many as there are: less protection than
        # declared, never a wait for one that is not there.
        chosen, need = live, len(live)
    else:
        chosen = candidates
    warning = ""
    if degraded:
        how = (
            "runs ASYNCHRONOUS replication"
            if not chosen
            else "waits for only %d synchronous standby(s)" % len(chosen)
        )
        warning = (
            "DEGRADED: %s %s: %d synchronous standby(s) declared, %s streaming (%s not waited "
            "for). Until enough standbys stream and synchronous mode is restored, a loss of %s "
            "can lose acknowledged commits."
            % (primary, how, spec["num_sync"], live or "none", sorted(exclude) or "none", primary)
        )
    return {
        "managed": True,
        "settings": {
            "synchronous_standby_names": standby_names(spec["method"], need, chosen),
            "synchronous_commit": spec["commit"],
        },
        "standbys": chosen,
        "streaming": live,
        "degraded": degraded,
        "warning": warning,
    }


__all__ = ["ReplicationError", "SETTINGS", "plan", "standby_names", "validate"]

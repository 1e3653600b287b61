# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""System failure recovery (strategy section 3.4): probes and the failure classification.

probe() takes one snapshot of the app hosts (each one's live-pool instance), the load balancer
and every database node; classify() turns snapshots into one of
  none        nothing is wrong (a re-run after a finished recovery lands here)
  partial     some app hosts down and/or the primary down with a standby that can take over
  outage      the service is down as a whole: load balancer down, no app host up, or no
              database node up at all
  corruption  the writable primary answers but pg_amcheck finds damaged relations
with its evidence. It refuses to decide (confident=False) when two rounds of probes disagree,
when corruption comes together with other failures, or when two nodes accept writes.
"""

import time
import urllib.error

from ansible.module_utils.urls import open_url
from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres

CLASSES = ("none", "partial", "outage", "corruption")


def http_status(url, timeout):
    try:
        with open_url(url, timeout=timeout, use_proxy=False) as resp:
            return resp.getcode(), resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return None, str(exc)


def probe_db(node, app_dbname, amcheck, amcheck_exclude=()):
    state = {
        "name": node["name"],
        "port": node["port"],
        "accepts": False,
        "in_recovery": None,
        "error": None,
        "corrupt": None,
        "findings": [],
    }
    target = postgres.Target.from_params(node)
    code, out, err = postgres.psql(
        target,
        "SELECT pg_is_in_recovery(), current_setting('data_checksums'), "
        "(SELECT coalesce(sum(checksum_failures), 0) FROM pg_stat_database)",
    )
    if code != 0:
        state["error"] = (err.splitlines() or ["no answer"])[-1][:200]
        return state
    in_recovery, checksums, failures = (out.split("|") + ["", "", "0"])[:3]
    state.update(
        {
            "accepts": True,
            "in_recovery": in_recovery == "t",
            "data_checksums": checksums == "on",
            "checksum_failures_total": int(failures or 0),
        }
    )
    if amcheck and not state["in_recovery"]:
        found = postgres.amcheck(target, app_dbname, amcheck_exclude)
        state.update(
            corrupt=found["corrupt"],
            findings=found["findings"],
            corrupt_relations=found["corrupt_relations"],
        )
    return state


def probe(params):
    """One snapshot of the whole system."""
    apps = {}
    for app in params["apps"]:
        url = app["urls"].get(params["live_pool"]) or list(app["urls"].values())[0]
        code, body = http_status(url.rstrip("/") + "/version", params["timeout"])
        apps[app["host"]] = {
            "url": url,
            "status": code,
            "up": code is not None and code < 500,
            "detail": body[:160] if code is None or code >= 500 else "",
        }
    lb_code, lb_body = http_status(
        params["lb_url"].rstrip("/") + params["lb_health_path"], params["timeout"]
    )
    dbs = {
        node["name"]: probe_db(
            node, params["app_dbname"], params["amcheck"], params.get("amcheck_exclude") or ()
        )
        for node in params["databases"]
    }
    return {
        "at": time.time(),
        "apps": apps,
        "lb": {
            "url": params["lb_url"],
            "status": lb_code,
            "up": lb_code == 200,
            "live_pool": params["live_pool"],
        },
        "databases": dbs,
    }


def classify(snapshot):
    """(class, confident, evidence, facts) for one snapshot."""
    apps, lb, dbs = snapshot["apps"], snapshot["lb"], snapshot["databases"]
    down_apps = sorted(h for h, a in apps.items() if not a["up"])
    up_apps = sorted(h for h, a in apps.items() if a["up"])
    writable = sorted(n for n, d in dbs.items() if d["accepts"] and not d["in_recovery"])
    standbys = sorted(n for n, d in dbs.items() if d["accepts"] and d["in_recovery"])
    down_dbs = sorted(n for n, d in dbs.items() if not d["accepts"])
    corrupt = sorted(n for n, d in dbs.items() if d.get("corrupt"))
    evidence = []
    if not lb["up"]:
        evidence.append("load balancer %s answers %s" % (lb["url"], lb["status"] or "nothing"))
    for host in down_apps:
        evidence.append(
            "app host %s: %s answers %s"
            % (host, apps[host]["url"], apps[host]["status"] or "nothing")
        )
    for name in down_dbs:
        evidence.append("database %s refuses connections (%s)" % (name, dbs[name]["error"]))
    for name in writable:
        evidence.append("database %s accepts writes" % name)
    for name in standbys:
        evidence.append("database %s is a standby (in recovery)" % name)
    for name in corrupt:
        evidence.append(
            "database %s: pg_amcheck finds %s" % (name, "; ".join(dbs[name]["findings"][:3])[:300])
        )
    facts = {
        "down_apps": down_apps,
        "up_apps": up_apps,
        "writable": writable,
        "standbys": standbys,
        "down_databases": down_dbs,
        "corrupt": corrupt,
        "lb_up": lb["up"],
    }
    if len(writable) > 1:
        evidence.append("more than one database accepts writes: split brain, a person must decide")
        return "none", False, evidence, facts
    if not lb["up"] or not up_apps or not (writable or standbys):
        return "outage", True, evidence, facts
    if corrupt:
        if down_apps or not writable:
            evidence.append("corruption together with failed hosts: which came first is not clear")
            return "corruption", False, evidence, facts
        return "corruption", True, evidence, facts
    if down_apps or not writable or down_dbs:
        # A lost standby is a partial failure too: redundancy is gone until it is re-seeded.
        return "partial", True, evidence, facts
    return "none", True, evidence, facts


def judge(snapshots, requested):
    """Classify every round; auto needs them to agree and to be confident."""
    rounds = [classify(s) for s in snapshots]
    klass, confident, evidence, facts = rounds[-1]
    reasons = []
    if len({r[0] for r in rounds}) > 1:
        confident = False
        reasons.append("probe rounds disagree: %s" % ", ".join(r[0] for r in rounds))
    elif not confident:
        reasons.append(evidence[-1])
    decided = klass if requested == "auto" else requested
    return {
        "observed": klass,
        "class": decided,
        "confident": confident,
        "requested": requested,
        "evidence": evidence,
        "reasons": reasons,
        "facts": facts,
        "overridden": requested != "auto" and requested != klass,
    }

# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Post-incident reviews (strategy section 10) in the audit trail.

A review belongs to a recorded run. It is opened, gets findings and action items (owner, due
date), each action is marked done with links to what changed afterwards (a path in the
collection, pinned by its sha256, or a git commit that exists), and it is closed once no action
is open, or with the open ones deferred for a stated reason. Every step is one entry in the
audit chain (kinds below): signed, hash-chained, checkpointed and witnessed like a run's record,
so `knowngood audit verify` catches an edited or dropped review entry. Nothing is kept anywhere
else; the review's state is read back from the chain.

Each command checks everything first and appends one entry, or nothing. Reminders
(review_nagged) go out at most once per period per action, like break-glass escalations.
"""

import datetime
import os
import re
import subprocess

from ansible_collections.knowngood.runbooks.plugins.module_utils import (
    audit_chain,
    audit_record,
    break_glass,
)

OPENED = "review_opened"
FINDING = "review_finding"
ACTION = "review_action"
DONE = "review_action_done"
CLOSED = "review_closed"
NAGGED = "review_nagged"
KINDS = (OPENED, FINDING, ACTION, DONE, CLOSED, NAGGED)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
MIN_REASON = 10
MAX_TEXT = 2000
LOCK = ".review.lock"


class ReviewError(Exception):
    """A review step refused; the message says why. Nothing was written."""


def parse_due(text):
    """A due date, YYYY-MM-DD and a real day, else ReviewError."""
    text = str(text or "").strip()
    try:
        if not DATE_RE.match(text):
            raise ValueError
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ReviewError("due date %r refused: it must be a day as YYYY-MM-DD" % text) from None


def _text(value, what):
    value = " ".join(str(value or "").split())
    if not value:
        raise ReviewError("%s is empty" % what)
    if len(value) > MAX_TEXT:
        raise ReviewError("%s is longer than %d characters" % (what, MAX_TEXT))
    return value


def _name(value, what):
    value = str(value or "").strip()
    if not value:
        raise ReviewError("%s is empty" % what)
    if len(value) > 100 or any(ord(c) < 32 or c in "<>" for c in value):
        raise ReviewError(
            "%s %r refused: a name or an address of at most 100 characters" % (what, value)
        )
    return value


def state(entries, run_id, today):
    """The review of run_id as the chain tells it, or None when none was opened.

    {run_id, summary, opened_by, opened_at, findings, actions, state (open|closed), closed_by,
    closed_at, deferred, defer_reason}; each action {id, text, owner, due, state (open, overdue,
    done, deferred), days_left, done_by, done_at, links, reminders, last_reminded_at}."""
    review = None
    for entry in entries:
        if entry.get("kind") not in KINDS or entry.get("run_id") != run_id:
            continue
        kind = entry["kind"]
        if kind == OPENED:
            review = {
                "run_id": run_id,
                "summary": entry.get("summary", ""),
                "opened_by": entry.get("by", ""),
                "opened_at": entry.get("at", ""),
                "findings": [],
                "actions": [],
                "state": "open",
                "closed_by": "",
                "closed_at": "",
                "deferred": [],
                "defer_reason": "",
            }
        elif review is None:
            continue
        elif kind == FINDING:
            review["findings"].append(
                {"id": entry.get("finding_id"), "text": entry.get("text"), "by": entry.get("by")}
            )
        elif kind == ACTION:
            review["actions"].append(
                {
                    "id": entry.get("action_id"),
                    "text": entry.get("text"),
                    "owner": entry.get("owner"),
                    "due": entry.get("due"),
                    "added_by": entry.get("by"),
                    "added_at": entry.get("at"),
                    "done_by": "",
                    "done_at": "",
                    "links": [],
                    "reminders": 0,
                    "last_reminded_at": "",
                }
            )
        elif kind in (DONE, NAGGED):
            action = next((a for a in review["actions"] if a["id"] == entry.get("action_id")), None)
            if action is None:
                continue
            if kind == DONE:
                action.update(done_by=entry.get("by"), done_at=entry.get("at"))
                action["links"] = entry.get("links") or []
            else:
                action["reminders"] += 1
                action["last_reminded_at"] = entry.get("at", "")
        elif kind == CLOSED:
            review.update(
                state="closed",
                closed_by=entry.get("by", ""),
                closed_at=entry.get("at", ""),
                deferred=entry.get("deferred") or [],
                defer_reason=entry.get("defer_reason") or "",
            )
    if review is None:
        return None
    for action in review["actions"]:
        left = (parse_due(action["due"]) - today).days
        action["days_left"] = left
        if action["done_at"]:
            action["state"] = "done"
        elif action["id"] in review["deferred"]:
            action["state"] = "deferred"
        else:
            action["state"] = "overdue" if left < 0 else "open"
    return review


def reviews(entries, today):
    """Every review in the trail, in the order they were opened."""
    run_ids = [e["run_id"] for e in entries if e.get("kind") == OPENED]
    return [state(entries, run_id, today) for run_id in dict.fromkeys(run_ids)]


def action_items(entries, today, only_open=False):
    """Action items across reviews, overdue first (most overdue first), then by due date;
    done and deferred ones last (only_open leaves them out)."""
    rank = {"overdue": 0, "open": 1, "deferred": 2, "done": 3}
    items = []
    for review in reviews(entries, today):
        for action in review["actions"]:
            if only_open and action["state"] not in ("open", "overdue"):
                continue
            items.append(dict(action, run_id=review["run_id"], review_state=review["state"]))
    return sorted(items, key=lambda a: (rank[a["state"]], a["due"], a["run_id"], a["id"]))


def _run_recorded(audit_dir, entries, run_id):
    audit_chain.check_name(run_id, "run id")
    closed = any(e.get("kind", "record") == "record" and e.get("run_id") == run_id for e in entries)
    if not closed or audit_record.read(audit_dir, run_id) is None:
        raise ReviewError(
            "no recorded run %s in %s (`knowngood audit list` shows the runs)" % (run_id, audit_dir)
        )


def _open_review(audit_dir, entries, run_id, today):
    _run_recorded(audit_dir, entries, run_id)
    review = state(entries, run_id, today)
    if review is None:
        raise ReviewError(
            "run %s has no review: open it first (knowngood review open %s --by NAME)"
            % (run_id, run_id)
        )
    if review["state"] == "closed":
        raise ReviewError(
            "the review of %s was closed by %s at %s: nothing more can be recorded in it"
            % (run_id, review["closed_by"], review["closed_at"])
        )
    return review


def resolve_link(target, root):
    """A link to what changed: {kind: path, path, sha256} for a file or directory inside the
    collection at root, {kind: commit, commit, subject} for a commit of root's git repository.
    Anything else (a URL, a path outside the collection, an unknown commit) is refused."""
    target = str(target or "").strip()
    if not target:
        raise ReviewError("a link is empty")
    base = os.path.realpath(root)
    if "://" not in target and not os.path.isabs(target):
        path = os.path.realpath(os.path.join(base, target))
        inside = path.startswith(base + os.sep)
        in_git = os.path.relpath(path, base).split(os.sep)[0] == ".git"
        if inside and os.path.exists(path) and not in_git:
            link = {"kind": "path", "path": os.path.relpath(path, base)}
            if os.path.isfile(path):
                link["sha256"] = audit_chain.sha256_file(path)
            return link
    if COMMIT_RE.match(target):
        proc = subprocess.run(
            ["git", "-C", base, "log", "-1", "--format=%H%x00%s", target + "^{commit}", "--"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            commit, dummy, subject = proc.stdout.decode("utf-8", "replace").strip().partition("\0")
            return {"kind": "commit", "commit": commit, "subject": subject[:200]}
    raise ReviewError(
        "link %r refused: name a path in the collection (%s), such as a runbook, a role, its "
        "defaults or a page of docs/, or a git commit of it that exists" % (target, base)
    )


def _append(trail, entry):
    return audit_chain.append(trail["audit_dir"], entry, trail["key"], trail["witness"])


def _stamp(kind, run_id, who):
    return {"kind": kind, "run_id": run_id, "at": audit_chain.utcnow(), "recorded_by": who}


def open_review(trail, run_id, by, summary, who, today):
    """Open the review of a recorded run; refused when it already has one."""
    audit_dir = trail["audit_dir"]
    by = _name(by, "--by")
    summary = " ".join(str(summary or "").split())[:MAX_TEXT]
    with break_glass.locked(audit_dir, LOCK):
        entries = audit_chain.entries(audit_dir)
        _run_recorded(audit_dir, entries, run_id)
        review = state(entries, run_id, today)
        if review is not None:
            raise ReviewError(
                "run %s already has a review, opened by %s at %s"
                % (run_id, review["opened_by"], review["opened_at"])
            )
        return _append(trail, dict(_stamp(OPENED, run_id, who), by=by, summary=summary))


def add_finding(trail, run_id, text, who, today):
    audit_dir = trail["audit_dir"]
    text = _text(text, "the finding")
    with break_glass.locked(audit_dir, LOCK):
        entries = audit_chain.entries(audit_dir)
        review = _open_review(audit_dir, entries, run_id, today)
        finding_id = "F%d" % (len(review["findings"]) + 1)
        return _append(
            trail, dict(_stamp(FINDING, run_id, who), finding_id=finding_id, text=text, by=who)
        )


def add_action(trail, run_id, text, owner, due, who, today, action_id=""):
    """An action item with an owner and a due date (today or later); its id is given or the
    next A<n>; a duplicate id is refused."""
    audit_dir = trail["audit_dir"]
    text = _text(text, "the action")
    owner = _name(owner, "--owner")
    day = parse_due(due)
    if day < today:
        raise ReviewError("due date %s refused: it is in the past (today is %s)" % (due, today))
    if action_id and not ID_RE.match(action_id):
        raise ReviewError("action id %r refused: it must match %s" % (action_id, ID_RE.pattern))
    with break_glass.locked(audit_dir, LOCK):
        entries = audit_chain.entries(audit_dir)
        review = _open_review(audit_dir, entries, run_id, today)
        taken = [a["id"] for a in review["actions"]]
        number = len(taken) + 1
        while not action_id and "A%d" % number in taken:
            number += 1
        action_id = action_id or "A%d" % number
        if action_id in taken:
            raise ReviewError("the review of %s already has an action %s" % (run_id, action_id))
        return _append(
            trail,
            dict(
                _stamp(ACTION, run_id, who),
                action_id=action_id,
                text=text,
                owner=owner,
                due=day.isoformat(),
                by=who,
            ),
        )


def mark_done(trail, run_id, action_id, links, root, who, today):
    """Mark an action done with what changed (resolve_link, each); refused without a link, for
    an unknown action, or one already done."""
    audit_dir = trail["audit_dir"]
    if not links:
        raise ReviewError("say what changed: --link a path in the collection or a git commit")
    resolved = [resolve_link(link, root) for link in links]
    with break_glass.locked(audit_dir, LOCK):
        entries = audit_chain.entries(audit_dir)
        review = _open_review(audit_dir, entries, run_id, today)
        action = next((a for a in review["actions"] if a["id"] == action_id), None)
        if action is None:
            known = ", ".join(a["id"] for a in review["actions"]) or "none"
            raise ReviewError(
                "the review of %s has no action %r (actions: %s)" % (run_id, action_id, known)
            )
        if action["state"] == "done":
            raise ReviewError(
                "action %s of %s was already done by %s at %s"
                % (action_id, run_id, action["done_by"], action["done_at"])
            )
        return _append(
            trail, dict(_stamp(DONE, run_id, who), action_id=action_id, links=resolved, by=who)
        )


def close(trail, run_id, who, today, defer_reason=""):
    """Close the review; refused while an action is open unless defer_reason (10+ characters)
    defers every open one, which the closing entry names."""
    audit_dir = trail["audit_dir"]
    defer_reason = " ".join(str(defer_reason or "").split())
    with break_glass.locked(audit_dir, LOCK):
        entries = audit_chain.entries(audit_dir)
        review = _open_review(audit_dir, entries, run_id, today)
        still = [a for a in review["actions"] if a["state"] in ("open", "overdue")]
        if still and not defer_reason:
            raise ReviewError(
                "the review of %s has open action(s) %s: mark them done, or close with --defer "
                "REASON to defer them" % (run_id, ", ".join(a["id"] for a in still))
            )
        if still and len(defer_reason) < MIN_REASON:
            raise ReviewError("--defer needs a reason of %d+ characters" % MIN_REASON)
        if defer_reason and not still:
            raise ReviewError("--defer refused: the review of %s has no open action" % run_id)
        return _append(
            trail,
            dict(
                _stamp(CLOSED, run_id, who),
                by=who,
                findings=len(review["findings"]),
                actions_done=[a["id"] for a in review["actions"] if a["state"] == "done"],
                deferred=[a["id"] for a in still],
                defer_reason=defer_reason,
            ),
        )


def due_items(entries, today, within_days, every_h, now):
    """Open action items overdue or due within within_days, not reminded in the last every_h."""
    return [
        a
        for a in action_items(entries, today, only_open=True)
        if a["days_left"] <= within_days
        and break_glass.period_passed(a["last_reminded_at"], every_h, now)
    ]


def nag(trail, today, within_days, every_h, now, send, who):
    """Remind the owners and contacts of every due action item: send(items) tells them and
    returns {run_id, summary}; one review_nagged entry per item. Returns (entries, items)."""
    audit_dir = trail["audit_dir"]
    if within_days < 0 or every_h <= 0:
        raise ReviewError("--within must be 0 or more days and --every more than 0 hours")
    with break_glass.locked(audit_dir, LOCK):
        items = due_items(audit_chain.entries(audit_dir), today, within_days, every_h, now)
        if not items:
            return [], items
        outcome = send(items)
        written = [
            _append(
                trail,
                dict(
                    _stamp(NAGGED, item["run_id"], who),
                    action_id=item["id"],
                    owner=item["owner"],
                    due=item["due"],
                    state=item["state"],
                    notify_run_id=outcome.get("run_id", ""),
                    notified=outcome.get("summary", ""),
                ),
            )
            for item in items
        ]
    return written, items

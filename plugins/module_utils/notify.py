# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Contacts and notifications (strategy section 5).

Contacts are inventory data (knowngood_contacts: primary_oncall, secondary_oncall, infra_lead,
each with name, email, phone). Channels (knowngood_notify) are Slack-compatible webhooks, which
hear every event, and SMTP, which mails the contacts the event is routed to. Every delivery is
retried a bounded number of times with jittered backoff and short timeouts, and never raises:
it returns one outcome per target. Outcomes name webhooks by scheme and host only, since the
path of a webhook URL is its token.
"""

import datetime
import email.message
import json
import random
import re
import smtplib
import threading
import time
import urllib.request
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

try:
    from ansible.module_utils.urls import open_url
except ImportError:  # kg-wal, the standalone WAL tool, on a host without Ansible
    open_url = None

EVENTS = (
    "request",
    "approval_needed",
    "start",
    "success",
    "failure",
    "break_glass",
    "break_glass_overdue",
    "review_action_due",
)
CONTACT_ROLES = ("primary_oncall", "secondary_oncall", "infra_lead")
# Who is e-mailed for each event; webhooks (the team channel) hear every event.
ROUTES = {
    "request": ("primary_oncall", "secondary_oncall"),
    "approval_needed": ("infra_lead",),  # plus the approvers holding the roles required
    "start": ("primary_oncall", "secondary_oncall"),
    "success": ("primary_oncall", "secondary_oncall"),
    "failure": ("primary_oncall", "secondary_oncall", "infra_lead"),
    "break_glass": CONTACT_ROLES,  # every contact
    # every contact, plus the approvers holding a role its post-hoc approval still needs
    "break_glass_overdue": CONTACT_ROLES,
    # every contact, plus each action item's owner (owner_addresses)
    "review_action_due": CONTACT_ROLES,
}
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
NAME_RE = re.compile(r"^[^\x00-\x1f<>@]{1,100}$")
MAX_ATTEMPTS = 5
DEFAULTS = {"webhooks": [], "smtp": {}, "attempts": 3, "timeout_s": 3.0, "backoff_s": 0.5}


class NotifyError(Exception):
    """Contacts or channels that cannot be used; the message says which and why."""


def utcnow():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mask_url(url):
    """scheme://host[:port]/*** : a webhook's path and query are its credentials."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or "?"
        port = ":%d" % parts.port if parts.port else ""
    except ValueError:
        return "<invalid url>"
    tail = "/***" if (parts.path not in ("", "/") or parts.query) else ""
    return "%s://%s%s%s" % (parts.scheme or "?", host, port, tail)


def _valid_webhook(url):
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # .port raises on a bad port
    except ValueError:
        return False
    web = parts.scheme in ("http", "https") and bool(parts.hostname)
    return port_ok and web and not parts.username


def validate_contacts(contacts):
    """The contacts as {role: {name, email, phone}}; NotifyError listing every problem."""
    problems = []
    if not isinstance(contacts, dict):
        raise NotifyError("knowngood_contacts must be a mapping of %s" % ", ".join(CONTACT_ROLES))
    out = {}
    for role in CONTACT_ROLES:
        entry = contacts.get(role)
        if not isinstance(entry, dict):
            problems.append("%s is missing" % role)
            continue
        name = str(entry.get("name") or "").strip()
        mail = str(entry.get("email") or "").strip()
        if not NAME_RE.match(name):
            problems.append("%s: name %r is empty or not a name" % (role, name))
        if not EMAIL_RE.match(mail):
            problems.append("%s: e-mail %r is not an address" % (role, mail))
        out[role] = {"name": name, "email": mail, "phone": str(entry.get("phone") or "")}
    unknown = sorted(set(contacts) - set(CONTACT_ROLES))
    if unknown:
        known = ", ".join(CONTACT_ROLES)
        problems.append("unknown contact roles %s (known: %s)" % (unknown, known))
    if problems:
        raise NotifyError("knowngood_contacts: " + "; ".join(problems))
    return out


def validate_channels(channels):
    """knowngood_notify with defaults filled in; NotifyError listing every problem."""
    channels = dict(DEFAULTS, **(channels or {}))
    problems = []
    hooks = channels["webhooks"]
    if isinstance(hooks, str) or not isinstance(hooks, list):
        problems.append("webhooks must be a list of URLs")
        hooks = []
    for number, url in enumerate(hooks, 1):
        if not isinstance(url, str) or not _valid_webhook(url):
            # Never echo the URL: its path is a token.
            problems.append("webhook %d (%s) is not an http(s) URL" % (number, mask_url(url)))
    smtp = channels["smtp"] or {}
    if not isinstance(smtp, dict):
        problems.append("smtp must be a mapping")
        smtp = {}
    if smtp:
        if not str(smtp.get("host") or "").strip():
            problems.append("smtp.host is missing")
        try:
            port = int(smtp.get("port", 25))
            if not 0 < port < 65536:
                raise ValueError
        except (TypeError, ValueError):
            problems.append("smtp.port %r is not a port" % (smtp.get("port"),))
        if not EMAIL_RE.match(str(smtp.get("sender") or "")):
            problems.append("smtp.sender %r is not an address" % (smtp.get("sender"),))
    try:
        attempts = int(channels["attempts"])
        timeout = float(channels["timeout_s"])
        backoff = float(channels["backoff_s"])
        if not 1 <= attempts <= MAX_ATTEMPTS or not 0 < timeout <= 30 or not 0 <= backoff <= 10:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(
            "attempts (1-%d), timeout_s (0-30] and backoff_s [0-10] are out of range" % MAX_ATTEMPTS
        )
        attempts, timeout, backoff = 1, 3.0, 0.5
    if problems:
        raise NotifyError("knowngood_notify: " + "; ".join(problems))
    return dict(
        channels,
        webhooks=list(hooks),
        smtp=dict(smtp),
        attempts=attempts,
        timeout_s=timeout,
        backoff_s=backoff,
    )


def owner_addresses(owners, contacts, approvers=None):
    """The e-mail address of each owner that has one: an address as given, a contact role
    (infra_lead), a contact's name, or an approver's principal; others are left out (the notice
    still names them)."""
    found = []
    for owner in owners or []:
        owner = str(owner or "").strip()
        by_name = [c for c in contacts.values() if c.get("name", "").lower() == owner.lower()]
        if EMAIL_RE.match(owner):
            found.append(owner)
        elif owner in contacts:
            found.append(contacts[owner]["email"])
        elif by_name:
            found.append(by_name[0]["email"])
        elif EMAIL_RE.match(str(((approvers or {}).get(owner) or {}).get("email") or "")):
            found.append(approvers[owner]["email"])
    return found


def recipients(event, contacts, approvers=None, required_roles=(), owners=()):
    """E-mail addresses the event goes to, in a stable order, without duplicates."""
    if event not in EVENTS:
        raise NotifyError("unknown event %r (known: %s)" % (event, ", ".join(EVENTS)))
    found = [contacts[role]["email"] for role in ROUTES[event] if role in contacts]
    if event in ("approval_needed", "break_glass_overdue"):
        for entry in [approvers[name] for name in sorted(approvers or {})]:
            if set((entry or {}).get("roles") or []) & set(required_roles or []):
                mail = str((entry or {}).get("email") or "")
                if EMAIL_RE.match(mail):
                    found.append(mail)
    found += owner_addresses(owners, contacts, approvers)
    return list(dict.fromkeys(found))


def _backoff(attempt, base):
    """Exponential, capped at 5 s, with full jitter so senders do not retry in step."""
    return min(5.0, base * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5)


def _scrub(text, secrets):
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def _outcome(event, channel, target, started, attempts, error):
    return {
        "event": event,
        "channel": channel,
        "target": target,
        "outcome": "failed" if error else "delivered",
        "attempts": attempts,
        "error": error or "",
        "at": utcnow(),
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # answered as the HTTP error it is: the URL holds a token


def _stdlib_open(url, data, headers, method, timeout, follow_redirects="none"):
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    return urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout)


def post_webhook(event, url, text, attempts, timeout, backoff):
    """POST {"text": ...}; retries connection errors, 429 and 5xx; 4xx is final."""
    started = time.monotonic()
    body = json.dumps({"text": text}).encode("utf-8")
    error = ""
    attempt = 0
    for attempt in range(1, attempts + 1):
        retry = True
        try:
            resp = (open_url or _stdlib_open)(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
                timeout=timeout,
                follow_redirects="none",
            )
            resp.read(1024)
            resp.close()
            error = ""
            break
        except HTTPError as exc:
            error = "HTTP %d" % exc.code
            retry = exc.code == 429 or exc.code >= 500
        except (URLError, OSError) as exc:  # timeouts are OSErrors
            reason = getattr(exc, "reason", exc)
            error = "%s: %s" % (type(reason).__name__, reason)
        if not retry:
            break
        if attempt < attempts:
            time.sleep(_backoff(attempt, backoff))
    return _outcome(event, "webhook", mask_url(url), started, attempt, _scrub(error, [url]))


def send_mail(event, smtp, password, to, subject, text, attempts, timeout, backoff):
    """One message to every recipient; one outcome per recipient (refusals are per address)."""
    started = time.monotonic()
    msg = email.message.EmailMessage()
    msg["From"] = smtp["sender"]
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content(text)
    refused, error, attempt = {}, "", 0
    for attempt in range(1, attempts + 1):
        try:
            cls = smtplib.SMTP_SSL if smtp.get("ssl") else smtplib.SMTP
            with cls(smtp["host"], int(smtp.get("port", 25)), timeout=timeout) as conn:
                if smtp.get("starttls"):
                    conn.starttls()
                if smtp.get("username"):
                    conn.login(smtp["username"], password or "")
                refused = conn.send_message(msg) or {}
            error = ""
            break
        except smtplib.SMTPAuthenticationError as exc:
            error = "authentication failed (%d)" % exc.smtp_code
            break  # retrying a wrong password only locks the account
        except smtplib.SMTPRecipientsRefused as exc:
            refused, error = exc.recipients, ""
            break
        except (smtplib.SMTPException, OSError) as exc:
            error = "%s: %s" % (type(exc).__name__, exc)
        if attempt < attempts:
            time.sleep(_backoff(attempt, backoff))
    error = _scrub(error, [password])
    out = []
    for address in to:
        why = error
        if not why and address in refused:
            code, answer = refused[address]
            why = "refused %s %s" % (code, _scrub(answer.decode("utf-8", "replace"), [password]))
        out.append(_outcome(event, "email", address, started, attempt, why))
    return out


def deliver(
    event,
    text,
    contacts,
    channels,
    smtp_password="",
    approvers=None,
    required_roles=(),
    subject="",
    owners=(),
):
    """Send the event to every webhook and routed contact, in parallel; never raises.

    Returns one outcome per target (event, channel, target, outcome, attempts, error, at,
    duration_ms). The whole call takes at most about attempts x (timeout + 5 s backoff).
    """
    contacts = validate_contacts(contacts)
    channels = validate_channels(channels)
    attempts, timeout, backoff = channels["attempts"], channels["timeout_s"], channels["backoff_s"]
    results = []
    lock = threading.Lock()

    def keep(outcomes):
        with lock:
            results.extend(outcomes)

    jobs = [
        lambda url=url: keep([post_webhook(event, url, text, attempts, timeout, backoff)])
        for url in channels["webhooks"]
    ]
    to = recipients(event, contacts, approvers, required_roles, owners)
    if channels["smtp"] and to:
        subject = subject or "[knowngood] %s" % event.replace("_", "-").upper()
        jobs.append(
            lambda: keep(
                send_mail(
                    event,
                    channels["smtp"],
                    smtp_password,
                    to,
                    subject,
                    text,
                    attempts,
                    timeout,
                    backoff,
                )
            )
        )
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    bound = attempts * (timeout + 5.0) + 5.0
    deadline = time.monotonic() + bound
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        keep([_outcome(event, "all", "-", deadline - bound, 0, "gave up after %.0f s" % bound)])
    order = {"webhook": 0, "email": 1, "all": 2}
    return sorted(results, key=lambda r: (order.get(r["channel"], 3), r["target"]))


def configured(channels):
    channels = channels or {}
    return bool(channels.get("webhooks") or channels.get("smtp"))


HEADLINES = {
    "request": "rollback requested",
    "approval_needed": "approval needed",
    "start": "rollback starting",
    "success": "rollback succeeded",
    "failure": "rollback FAILED",
    "break_glass": "BREAK-GLASS rollback starting without approvals",
    "break_glass_overdue": "BREAK-GLASS still not signed off",
    "review_action_due": "post-incident action item due",
}


def compose(event, details):
    """(subject, text) for an event; details are public run facts (no secrets)."""
    d = dict((k, v) for k, v in (details or {}).items() if v not in (None, "", [], {}))
    what = d.get("playbook", "runbook")
    subject = "[knowngood] %s: %s%s" % (
        HEADLINES.get(event, event),
        what,
        " (%s)" % d["ticket"] if "ticket" in d else "",
    )
    lines = [subject]
    for label, key in (
        ("run", "run_id"),
        ("request", "request_id"),
        ("severity", "severity"),
        ("by", "user"),
        ("reason", "reason"),
        ("break-glass reason", "break_glass_reason"),
        ("approved by", "approved_by"),
        ("approvals required", "roles"),
        ("broken at", "broken_at"),
        ("open for", "age"),
        ("still missing", "missing_roles"),
        ("action item", "action"),
        ("owner", "owner"),
        ("due", "due"),
        ("state", "state"),
        ("mark it done with", "done_with"),
        ("status", "status"),
        ("duration", "duration"),
        ("failed", "failed"),
        ("sign with", "sign_with"),
        ("post-hoc approval", "post_hoc"),
    ):
        if key in d:
            value = d[key]
            if isinstance(value, (list, tuple)):
                value = ", ".join(str(v) for v in value)
            lines.append("%s: %s" % (label, value))
    return subject, "\n".join(lines)


# The arguments of knowngood.runbooks.notify: its action validates with them, its module
# (documentation only) declares them.
ARGUMENT_SPEC = dict(
    event=dict(type="str", required=True, choices=["validate", *EVENTS]),
    contacts=dict(type="dict", default={}),
    channels=dict(type="dict", default={}),
    smtp_password=dict(type="str", default="", no_log=True),
    approvers=dict(type="dict", default={}),
    matrix=dict(type="dict", default={}),
    request=dict(type="path"),
    details=dict(type="dict", default={}),
    owners=dict(type="list", elements="str", default=[]),
)

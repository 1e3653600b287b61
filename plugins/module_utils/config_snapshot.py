# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Configuration snapshots: a content-addressed store per host, and a validated revert.

Store layout (one per host, 0700):
  objects/<aa>/<sha256>      file contents, by hash
  snapshots/<id>.json        manifest; id = first 16 hex of sha256(canonical manifest)
  known-good.jsonl           append-only: which snapshot was verified live, when, by which run
  lock                       flock held while live files are swapped, validated or restored

Only tracked files are touched: paths listed by the services of the managed set, and the
files found under listed directories. Untracked files are reported, never deleted.
"""

import contextlib
import difflib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import tempfile
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres

SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{16}$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESTART_ON = ("never", "always", "postgresql")
MASK = "********"
# key = value, key: value, key value; the value of a key naming a secret is masked in every diff.
SECRET_LINE_RE = re.compile(
    r"^(\s*(?:[\w.\-]+\s+)?[\w.\-]*(?:password|passwd|secret|token|api_key|apikey|private_key|credential"
    r"|authorization)[\w.\-]*[\"']?\s*(?:[=:]\s*|\s+))(\S.*)$",
    re.I,
)
# Secrets inside a value: a conninfo's password=..., a URL's user:password@.
INLINE_SECRET_RES = (
    re.compile(r"((?:password|passwd|secret|token)\s*=\s*)[^\s'\";]+", re.I),
    re.compile(r"(://[^/:@\s]+:)[^@\s]+(@)"),
)
PG_PARAM_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:=\s*|\s+)(.*?)\s*$")


class ConfigError(Exception):
    """Every refusal and failure of this module_utils; main() turns it into fail_json once."""


# ------------------------------------------------------------------ managed set


def normalize_services(services):
    """Check the inventory's managed set; returns {name: service dict} with clean paths."""
    if not services:
        raise ConfigError("no managed services: set knowngood_config_services for this host")
    out = {}
    for raw in services:
        name = raw.get("name") or ""
        if not SERVICE_NAME_RE.match(name):
            raise ConfigError("service name %r is not a plain name" % name)
        if name in out:
            raise ConfigError("service %s is declared twice" % name)
        paths = [check_path(p, name) for p in raw.get("paths") or []]
        if not paths:
            raise ConfigError("service %s lists no paths" % name)
        restart_on = raw.get("restart_on") or "never"
        if restart_on not in RESTART_ON:
            raise ConfigError(
                "service %s: restart_on must be one of %s" % (name, ", ".join(RESTART_ON))
            )
        for key in ("validate", "reload", "restart"):
            value = raw.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError("service %s: %s must be an argv list of strings" % (name, key))
        out[name] = {
            "name": name,
            "paths": sorted(set(paths)),
            "validate": list(raw.get("validate") or []),
            "reload": list(raw.get("reload") or []),
            "restart": list(raw.get("restart") or []),
            "restart_on": restart_on,
            "dsn": raw.get("dsn") or "",
        }
    all_paths = sorted(p for svc in out.values() for p in svc["paths"])
    for index in range(1, len(all_paths)):
        first, second = all_paths[index - 1], all_paths[index]
        if second == first or second.startswith(first.rstrip("/") + "/"):
            raise ConfigError("managed paths overlap: %s and %s" % (first, second))
    return out


def check_path(path, service):
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError("service %s: managed path %r is not absolute" % (service, path))
    parts = path.split("/")
    if ".." in parts or "." in parts:
        raise ConfigError(
            "service %s: managed path %s contains '..' or '.': path traversal is refused"
            % (service, path)
        )
    return os.path.normpath(path)


def service_set(services):
    """What a snapshot must match to be restored here: service names and their paths."""
    return {name: svc["paths"] for name, svc in sorted(services.items())}


def _inside(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _owner_names(st):
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


def _read_text(path):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "%s is not UTF-8 text (byte %d): configuration snapshots hold text only, so every "
            "change can be diffed with secrets masked; keep binary files out of the managed set"
            % (path, exc.start)
        ) from None
    return data


def collect(services):
    """Walk the managed set: [(entry, content bytes or None)] in path order."""
    roots = [os.path.realpath(p) for svc in services.values() for p in svc["paths"]]
    found = []
    for name, svc in sorted(services.items()):
        for root in svc["paths"]:
            if os.path.isdir(root) and not os.path.islink(root):
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames.sort()
                    for fname in sorted(filenames + [d for d in dirnames if _islink(dirpath, d)]):
                        found.append((name, os.path.join(dirpath, fname)))
            elif os.path.lexists(root):
                found.append((name, root))
    out = []
    for name, path in found:
        st = os.lstat(path)
        user, group = _owner_names(st)
        entry = {
            "path": path,
            "service": name,
            "mode": "%04o" % stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "owner": user,
            "group": group,
        }
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            real = os.path.realpath(path)
            if not _inside(real, roots):
                raise ConfigError(
                    "%s is a symlink to %s, outside the managed set: refused (a revert must "
                    "never write through it)" % (path, real)
                )
            entry["link"] = target
            out.append((entry, None))
        elif stat.S_ISREG(st.st_mode):
            data = _read_text(path)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["size"] = len(data)
            out.append((entry, data))
        else:
            raise ConfigError("%s is neither a file nor a symlink: refused" % path)
    return out


def _islink(dirpath, name):
    return os.path.islink(os.path.join(dirpath, name))


# ------------------------------------------------------------------ store


def _canonical(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Store:
    def __init__(self, root):
        self.root = root

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def ensure(self):
        for sub in ("", "objects", "snapshots"):
            os.makedirs(self.path(sub), mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, timeout=60):
        self.ensure()
        fd = os.open(self.path("lock"), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            "another run holds %s for %ds" % (self.path("lock"), timeout)
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def object_path(self, digest):
        return self.path("objects", digest[:2], digest)

    def put_object(self, data):
        digest = hashlib.sha256(data).hexdigest()
        target = self.object_path(digest)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            _write_file(target, data, 0o600)
        return digest

    def get_object(self, digest):
        try:
            with open(self.object_path(digest), "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError("object %s is missing from the store: %s" % (digest, exc)) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ConfigError("object %s is corrupt (hash mismatch): refused" % digest)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("object %s is not UTF-8 text: refused" % digest) from None
        return data

    def snapshot_ids(self):
        """Snapshot ids, oldest first."""
        try:
            names = os.listdir(self.path("snapshots"))
        except FileNotFoundError:
            return []
        docs = []
        for fname in names:
            if fname.endswith(".json") and SNAPSHOT_ID_RE.match(fname[:-5]):
                with contextlib.suppress(ConfigError):
                    doc = self.read_manifest(fname[:-5])
                    docs.append((doc.get("when", 0), fname[:-5]))
        return [sid for _when, sid in sorted(docs)]

    def read_manifest(self, snapshot_id):
        if not isinstance(snapshot_id, str) or not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ConfigError(
                "%r is not a snapshot id (16 lower-case hex characters)" % (snapshot_id,)
            )
        try:
            with open(self.path("snapshots", snapshot_id + ".json"), "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise ConfigError(
                "unknown snapshot %s: not in the store %s" % (snapshot_id, self.root)
            ) from None
        doc = json.loads(raw)
        body = {k: v for k, v in doc.items() if k != "snapshot_id"}
        if hashlib.sha256(_canonical(body)).hexdigest()[:16] != snapshot_id:
            raise ConfigError(
                "snapshot %s does not match its id (tampered?): refused" % snapshot_id
            )
        return doc

    def write_manifest(self, body):
        snapshot_id = hashlib.sha256(_canonical(body)).hexdigest()[:16]
        doc = dict(body, snapshot_id=snapshot_id)
        target = self.path("snapshots", snapshot_id + ".json")
        if not os.path.exists(target):
            _write_file(target, json.dumps(doc, indent=1, sort_keys=True).encode(), 0o600)
        return doc

    def known_good(self):
        """Known-good events, oldest first."""
        try:
            with open(self.path("known-good.jsonl")) as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def last_known_good(self):
        for event in reversed(self.known_good()):
            if os.path.exists(self.path("snapshots", event["snapshot_id"] + ".json")):
                return event["snapshot_id"]
        return None

    def mark_known_good(self, snapshot_id, run_id, who, reason):
        event = {
            "snapshot_id": snapshot_id,
            "when": time.time(),
            "run_id": run_id,
            "who": who,
            "reason": reason,
        }
        with open(self.path("known-good.jsonl"), "a") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return event


def _write_file(path, data, mode, uid=None, gid=None):
    """Write through a temp file in the same directory and rename over path (atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=".kg-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if uid is not None:
                os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def content_of(entries):
    """What two snapshots must share to be the same configuration (who/when aside)."""
    return hashlib.sha256(_canonical(entries)).hexdigest()


def take(store, services, host, label="", run_id="", who="", kind="manual"):
    """Snapshot the live managed set; returns (manifest, created). An unchanged configuration
    returns the newest snapshot with the same content instead of a new one."""
    found = collect(services)
    entries = [entry for entry, _data in found]
    content_id = content_of({"host": host, "set": service_set(services), "files": entries})
    store.ensure()
    for sid in reversed(store.snapshot_ids()):
        doc = store.read_manifest(sid)
        if doc.get("content_id") == content_id:
            return doc, False
    for _entry, data in found:
        if data is not None:
            store.put_object(data)
    body = {
        "format": 1,
        "host": host,
        "service_set": service_set(services),
        "files": entries,
        "content_id": content_id,
        "label": label,
        "kind": kind,
        "run_id": run_id,
        "who": who,
        "when": round(time.time(), 3),
    }
    return store.write_manifest(body), True


def check_target(manifest, services, host):
    """Refuse a snapshot taken on another host or for another managed set."""
    if manifest.get("host") != host:
        raise ConfigError(
            "snapshot %s was taken on host %s, not %s: refused"
            % (manifest.get("snapshot_id"), manifest.get("host"), host)
        )
    if manifest.get("service_set") != service_set(services):
        raise ConfigError(
            "snapshot %s covers another service set (%s) than this host manages (%s): refused"
            % (
                manifest.get("snapshot_id"),
                json.dumps(manifest.get("service_set"), sort_keys=True),
                json.dumps(service_set(services), sort_keys=True),
            )
        )
    for entry in manifest.get("files", []):
        svc = services.get(entry.get("service"))
        path = entry.get("path", "")
        check_path(path, entry.get("service"))
        if svc is None or not _inside(path, svc["paths"]):
            raise ConfigError(
                "snapshot %s names %s outside the managed set: refused"
                % (manifest.get("snapshot_id"), path)
            )


# ------------------------------------------------------------------ diff and plan


def mask(text):
    out = []
    for line in text.splitlines(True):
        line = SECRET_LINE_RE.sub(lambda m: m.group(1) + MASK, line)
        line = INLINE_SECRET_RES[0].sub(lambda m: m.group(1) + MASK, line)
        line = INLINE_SECRET_RES[1].sub(lambda m: m.group(1) + MASK + m.group(2), line)
        out.append(line)
    return "".join(out)


def plan(store, manifest, services, limit=None):
    """Compare a snapshot with the live files of the services in limit (all by default)."""
    names = sorted(limit) if limit else sorted(services)
    unknown = [n for n in names if n not in services]
    if unknown:
        raise ConfigError(
            "services %s are not managed on this host (managed: %s)"
            % (", ".join(unknown), ", ".join(sorted(services)))
        )
    subset = {n: services[n] for n in names}
    live = {entry["path"]: (entry, data) for entry, data in collect(subset)}
    changes = []
    for entry in manifest["files"]:
        if entry["service"] not in subset:
            continue
        have, have_data = live.get(entry["path"], (None, None))
        want_data = None if "link" in entry else store.get_object(entry["sha256"])
        what = []
        if have is None:
            what.append("created")
        elif ("link" in entry) != ("link" in have):
            what.append("type")
        elif "link" in entry:
            if entry["link"] != have["link"]:
                what.append("link")
        else:
            if entry["sha256"] != have["sha256"]:
                what.append("content")
            if entry["mode"] != have["mode"]:
                what.append("mode")
            if (entry["uid"], entry["gid"]) != (have["uid"], have["gid"]):
                what.append("owner")
        if what:
            changes.append(
                {
                    "path": entry["path"],
                    "service": entry["service"],
                    "change": what,
                    "entry": entry,
                    "before": have_data,
                    "after": want_data,
                    "before_entry": have,
                }
            )
    tracked = {e["path"] for e in manifest["files"]}
    untracked = sorted(p for p in live if p not in tracked)
    return changes, untracked


def diffs(changes):
    """Ansible diff entries with secrets masked."""
    out = []
    for change in changes:
        before = (change["before"] or b"").decode("utf-8")
        after = (change["after"] or b"").decode("utf-8")
        if "link" in change["entry"]:
            after = "symlink -> %s\n" % change["entry"]["link"]
        out.append(
            {
                "before_header": "%s (live)" % change["path"],
                "after_header": "%s (snapshot)" % change["path"],
                "before": mask(before),
                "after": mask(after),
            }
        )
    return out


def summary(changes):
    return [{"path": c["path"], "service": c["service"], "change": c["change"]} for c in changes]


def unified(changes):
    """A masked unified diff, for a report."""
    lines = []
    for d in diffs(changes):
        lines += difflib.unified_diff(
            d["before"].splitlines(True),
            d["after"].splitlines(True),
            d["before_header"],
            d["after_header"],
        )
    return "".join(lines)


def pg_params(text):
    params = {}
    for line in text.splitlines():
        line = _strip_comment(line)
        match = PG_PARAM_RE.match(line)
        if match and match.group(1).lower() not in ("include", "include_dir", "include_if_exists"):
            params[match.group(1).lower()] = match.group(2).strip()
    return params


def _strip_comment(line):
    quoted = False
    for index, char in enumerate(line):
        if char == "'":
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def changed_params(changes):
    names = set()
    for change in changes:
        before = pg_params((change["before"] or b"").decode("utf-8"))
        after = pg_params((change["after"] or b"").decode("utf-8"))
        names |= {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return sorted(names)


def pg_contexts(dsn, names):
    """{name: context} of PostgreSQL settings, or None when the server does not answer (down,
    or stuck shutting down). psycopg is imported only here, not at the top: only
    restart_on=postgresql needs it, and importing it costs ~0.4 s per host on a busy machine."""
    if not postgres.has_psycopg():
        raise ConfigError("restart_on=postgresql needs the psycopg library on the host")
    try:
        conn = postgres.connect(dsn)
    except postgres.PgError:
        return None
    with conn:
        rows = conn.execute(
            "SELECT name, context FROM pg_settings WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
    return dict(rows)


def actions(services, changes):
    """Per service whose files change: reload or restart, and why."""
    out = []
    for name in sorted({c["service"] for c in changes}):
        svc = services[name]
        mine = [c for c in changes if c["service"] == name]
        action, params, why = "reload", [], "files changed"
        if svc["restart_on"] == "always":
            action, why = "restart", "restart_on: always"
        elif svc["restart_on"] == "postgresql":
            names = changed_params(mine)
            contexts = pg_contexts(svc["dsn"], names)
            if contexts is None:
                # A reload needs a running server; pg_ctl restart also starts a stopped one. This
                # is what lets the rescue put a configuration back after a restart that failed.
                action, params = "restart", names
                why = "PostgreSQL does not answer: a restart starts it on these files"
            else:
                # A name pg_settings does not know would fail validation; restart to be safe.
                params = [n for n in names if contexts.get(n, "postmaster") == "postmaster"]
                action = "restart" if params else "reload"
                why = "postmaster parameters changed" if params else "no postmaster parameter"
        out.append(
            {
                "service": name,
                "action": action,
                "command": svc[action] or svc["reload"],
                "restart_params": params,
                "why": why,
                "files": [c["path"] for c in mine],
            }
        )
    return out


# ------------------------------------------------------------------ apply


def _apply_one(change):
    entry = change["entry"]
    path = entry["path"]
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError("cannot restore %s: its directory %s is gone" % (path, parent))
    if "link" in entry:
        tmp = os.path.join(parent, ".kg-link-%d" % os.getpid())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(entry["link"], tmp)
        os.replace(tmp, path)
        return
    _write_file(path, change["after"], int(entry["mode"], 8), entry["uid"], entry["gid"])


def _restore_previous(change):
    """Put back what was live before _apply_one (the safety snapshot holds it too)."""
    before = change["before_entry"]
    path = change["path"]
    if before is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    _apply_one({"entry": before, "after": change["before"]})


def run(argv, timeout=300):
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def validate(services, names):
    """Run each named service's validate command; [(service, output)] of those that fail."""
    failures = []
    for name in names:
        argv = services[name]["validate"]
        if argv:
            rc, out = run(argv)
            if rc != 0:
                failures.append((name, "%s exited %d: %s" % (" ".join(argv), rc, out[-1500:])))
    return failures


def swap_in(services, changes, log):
    """Write the changed files and validate every affected service; on a failed validation
    put the previous files back and raise: the live configuration stays as it was."""
    done = []
    try:
        for change in changes:
            _apply_one(change)
            done.append(change)
            log.append("wrote %s (%s)" % (change["path"], ", ".join(change["change"])))
        names = sorted({c["service"] for c in changes})
        failures = validate(services, names)
        for name in names:
            log.append("validated %s: %s" % (name, "failed" if name in dict(failures) else "ok"))
    except BaseException:
        undo(done, log)
        raise
    if failures:
        undo(done, log)
        raise ConfigError(
            "candidate configuration fails validation, live configuration unchanged: "
            + "; ".join("%s: %s" % item for item in failures)
        )


def undo(done, log):
    for change in reversed(done):
        _restore_previous(change)
        log.append("put back %s" % change["path"])


def activate(plan_actions, log):
    """Reload or restart each service in turn; returns the first failure or None."""
    for item in plan_actions:
        argv = item["command"]
        if not argv:
            log.append("%s: no %s command, files only" % (item["service"], item["action"]))
            continue
        rc, out = run(argv)
        log.append("%s %s: %s (rc=%d)" % (item["action"], item["service"], " ".join(argv), rc))
        if rc != 0:
            return "%s of %s failed: %s" % (item["action"], item["service"], out[-1500:])
    return None


# ------------------------------------------------------------------ git mirror


def git_mirror(repo, manifest, services_data, log):
    """Commit the snapshot (secrets masked) into a plain git repository: a reviewable history
    of configuration. The object store, not git, is what a revert reads."""
    if not os.path.isdir(os.path.join(repo, ".git")):
        os.makedirs(repo, mode=0o700, exist_ok=True)
        rc, out = run(["git", "-C", repo, "init", "-q"])
        if rc != 0:
            raise ConfigError("git init %s failed: %s" % (repo, out))
    host_dir = os.path.join(repo, manifest["host"])
    for entry, data in services_data:
        rel = entry["path"].lstrip("/")
        target = os.path.join(host_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        text = "symlink -> %s\n" % entry["link"] if data is None else mask(data.decode("utf-8"))
        with open(target, "w") as handle:
            handle.write(text)
    with open(os.path.join(host_dir, "MANIFEST.json"), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    ident = ["-c", "user.name=knowngood", "-c", "user.email=knowngood@localhost"]
    rc, out = run(["git", "-C", repo, "add", "-A", manifest["host"]])
    if rc == 0:
        message = "%s: snapshot %s %s" % (
            manifest["host"],
            manifest["snapshot_id"],
            manifest["label"],
        )
        rc, out = run(
            ["git", "-C", repo] + ident + ["commit", "-q", "--allow-empty", "-m", message]
        )
    if rc != 0:
        raise ConfigError("git mirror %s failed: %s" % (repo, out))
    log.append("mirrored to git %s" % repo)

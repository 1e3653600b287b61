# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release ledger, layout checks and the atomic switch for one deploy root.

Layout of a deploy root (ansistrano vocabulary, plus blue/green slots):

    <root>/releases/<release_id>/      unpacked release, release.json inside
    <root>/slots/{blue,green}          symlinks to ../releases/<id>, one per app instance
    <root>/current                     symlink to slots/<live pool>, or straight to releases/<id>
    <root>/.knowngood/ledger.jsonl     append-only ledger, one JSON event per line
    <root>/.knowngood/lock             the host run lock (module_utils/run_lock.py)

The ledger is the only source of truth for which release is known good; directory
mtimes are never consulted.
"""

import errno
import hashlib
import json
import os
import re
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils.run_lock import read_lock

RELEASE_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
POOLS = ("blue", "green")
STATUSES = ("registered", "deployed", "known-good", "bad", "rolled-back")
STATE_DIR = ".knowngood"


class ReleaseError(Exception):
    """The one exception the release helpers raise; main() turns it into fail_json."""


def validate_release_id(release_id):
    """Refuse ids that could escape releases/ or reach a shell."""
    if not isinstance(release_id, str) or not RELEASE_ID_RE.match(release_id) or ".." in release_id:
        raise ReleaseError(
            "invalid release id %r: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, no '..'" % (release_id,)
        )
    return release_id


def validate_pool(pool):
    if pool not in POOLS:
        raise ReleaseError("invalid pool %r: expected one of %s" % (pool, ", ".join(POOLS)))
    return pool


class Layout:
    """Paths of one deploy root. Nothing here touches the disk."""

    def __init__(self, root):
        if not root or not os.path.isabs(root):
            raise ReleaseError("deploy root must be an absolute path, got %r" % (root,))
        self.root = os.path.normpath(root)
        self.releases = os.path.join(self.root, "releases")
        self.slots = os.path.join(self.root, "slots")
        self.current = os.path.join(self.root, "current")
        self.state = os.path.join(self.root, STATE_DIR)
        self.ledger = os.path.join(self.state, "ledger.jsonl")
        self.lock = os.path.join(self.state, "lock")

    def release_dir(self, release_id):
        return os.path.join(self.releases, validate_release_id(release_id))

    def slot(self, pool):
        return os.path.join(self.slots, validate_pool(pool))


# ---------------------------------------------------------------- links


def _release_of_target(layout, target_path, what):
    """Map a resolved link target to a release id, refusing anything outside releases/."""
    real_releases = os.path.realpath(layout.releases)
    parent, name = os.path.split(os.path.normpath(target_path))
    if os.path.realpath(parent) != real_releases:
        raise ReleaseError(
            "%s points outside %s (to %s): refusing to touch a layout this tool did not make"
            % (what, layout.releases, target_path)
        )
    validate_release_id(name)
    return name


def _readlink_abs(path):
    target = os.readlink(path)
    if not os.path.isabs(target):
        target = os.path.join(os.path.dirname(path), target)
    return os.path.normpath(target)


def read_slot(layout, pool):
    """Release id a pool's slot serves, or None when the slot does not exist yet."""
    path = layout.slot(pool)
    if not os.path.lexists(path):
        return None
    if not os.path.islink(path):
        raise ReleaseError("%s is a real file or directory, not a symlink: refusing" % path)
    return _release_of_target(layout, _readlink_abs(path), path)


def read_current(layout):
    """Return (release_id, pool) that `current` resolves to; pool is None for plain layouts.

    Raises when `current` is a real directory or points outside the layout: the
    runbook must stop before anything changes rather than guess.
    """
    path = layout.current
    if not os.path.lexists(path):
        return None, None
    if not os.path.islink(path):
        raise ReleaseError(
            "%s is a real directory, not a symlink: the live release cannot be identified "
            "safely; move it aside by hand" % path
        )
    target = _readlink_abs(path)
    if os.path.dirname(target) == os.path.normpath(layout.slots):
        pool = os.path.basename(target)
        if pool not in POOLS:
            raise ReleaseError("%s points to unknown slot %s" % (path, target))
        return read_slot(layout, pool), pool
    return _release_of_target(layout, target, path), None


def swap_symlink(link_path, target):
    """Point link_path at target atomically: create a temporary link, rename it over."""
    tmp = "%s.tmp-%d" % (link_path, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link_path)


# ---------------------------------------------------------------- ledger


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_ledger(layout):
    """All ledger events, oldest first. A torn last line (crash mid-write) is ignored."""
    try:
        with open(layout.ledger) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ReleaseError(
                "ledger %s is corrupt at line %d" % (layout.ledger, number)
            ) from None
    return events


def append_event(layout, event):
    """Append one event with O_APPEND and fsync; the ledger is never rewritten."""
    if not os.path.isdir(layout.state):
        os.makedirs(layout.state, 0o755)
    record = dict(event)
    record.setdefault("ts", _now())
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(layout.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return record


def summarize(events):
    """Fold events into one entry per release: status, source, checksum, history."""
    releases = {}
    order = []
    for event in events:
        rid = event.get("release_id")
        if not rid:
            continue
        entry = releases.get(rid)
        if entry is None:
            entry = {
                "release_id": rid,
                "status": "registered",
                "source": None,
                "checksum": None,
                "registered_at": event.get("ts"),
                "deployed_at": None,
                "known_good_at": None,
                "history": [],
            }
            releases[rid] = entry
            order.append(rid)
        for key in ("source", "checksum", "schema"):
            if event.get(key) is not None:
                entry[key] = event[key]
        status = event.get("status")
        if status in STATUSES:
            entry["status"] = status
            if status == "deployed":
                entry["deployed_at"] = event.get("ts")
            elif status == "known-good":
                entry["known_good_at"] = event.get("ts")
        entry["history"].append(
            {k: event.get(k) for k in ("ts", "status", "user", "run_id", "reason", "ticket")}
        )
    return [releases[rid] for rid in order]


def last_known_good(summary, exclude=()):
    """The release most recently confirmed good that is still good now.

    A release later marked bad or rolled back drops out, so a rollback never
    picks it again automatically.
    """
    candidates = [
        r for r in summary if r["status"] == "known-good" and r["release_id"] not in exclude
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["known_good_at"] or "", summary.index(r)))


def find(summary, release_id):
    for entry in summary:
        if entry["release_id"] == release_id:
            return entry
    return None


# ---------------------------------------------------------------- content


def tree_checksum(path):
    """sha256 over relative paths, modes and contents, so any change to a release shows."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            digest.update(rel.encode("utf-8") + b"\0")
            if os.path.islink(full):
                digest.update(b"L" + os.readlink(full).encode("utf-8"))
                continue
            digest.update(oct(os.stat(full).st_mode & 0o777).encode("ascii"))
            with open(full, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 16), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _resolve_member_path(links, parts, what):
    """Where a path inside the release lands once the archive's symlinks exist, as components
    relative to the release root; the kernel's rules (a link is expanded before a following
    '..'). Raises ReleaseError if the path leaves the root or loops."""
    out, queue, hops = [], list(parts), 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise ReleaseError("member %s resolves outside the release" % what)
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                raise ReleaseError(
                    "member %s resolves outside the release (through link %s -> %s)"
                    % (what, "/".join(out), target)
                )
            out.pop()
            queue = target.split("/") + queue
    return out


def _check_member(member, links, files, seen):
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise ReleaseError("member %r has an absolute or unsafe name" % name)
    if ".." in parts:
        raise ReleaseError("member %r has a '..' component" % name)
    if not parts:
        return  # the archive's root directory entry
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise ReleaseError("member %r is a device, fifo or other special file" % name)
    if member.mode & 0o7000:
        raise ReleaseError("member %r has setuid, setgid or sticky bits (%o)" % (name, member.mode))
    key = "/".join(parts)
    if key in links or (key in seen and (member.issym() or member.islnk())):
        raise ReleaseError("member %r replaces an earlier member or link of that name" % name)
    seen.add(key)
    parent = _resolve_member_path(links, parts[:-1], repr(name))
    landed = "/".join(parent + [parts[-1]])
    target = member.linkname
    if member.issym():
        if not target or target.startswith("/"):
            raise ReleaseError("member %r is a link to an absolute path %r" % (name, target))
        _resolve_member_path(links, parent + target.split("/"), "%r -> %r" % (name, target))
        links[key] = links[landed] = target
    elif member.islnk():
        if not target or target.startswith("/") or ".." in target.split("/"):
            raise ReleaseError("member %r is a hardlink to %r outside the release" % (name, target))
        resolved = "/".join(_resolve_member_path(links, target.split("/"), repr(name)))
        if resolved not in files:
            raise ReleaseError(
                "member %r is a hardlink to %r, not a regular file of the artifact" % (name, target)
            )
        files.add(landed)
    else:
        _resolve_member_path(links, parent + [parts[-1]], repr(name))
        if member.isreg():
            files.add(landed)


def check_archive_members(members, src="artifact"):
    """Refuse, before anything is written, an archive that could write outside its release.

    members: tarfile.TarInfo objects in archive order; unpacked into an empty directory.
    Checks every member as extraction would meet it, following the symlinks the members
    before it created: regular files, directories, symlinks and hardlinks only (no devices,
    fifos), no setuid/setgid/sticky bits, no absolute names or '..' components, no name that
    reaches through a link to outside, no symlink whose target (resolved from where it lands)
    leaves the release, hardlinks only to a regular file the archive holds, no member
    replacing a link. The ReleaseError names the member. Works with any Python 3; tarfile's
    data filter (3.11.4+) then runs too, as a second check, during extraction."""
    links, files, seen = {}, set(), set()
    try:
        for member in members:
            _check_member(member, links, files, seen)
    except ReleaseError as exc:
        raise ReleaseError("artifact %s: %s; nothing was unpacked" % (src, exc)) from None
    return True


def read_manifest(layout, release_id):
    """release.json of an unpacked release: id, schema revisions it works with."""
    path = os.path.join(layout.release_dir(release_id), "release.json")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except OSError:
        return {}
    except ValueError as exc:
        raise ReleaseError("%s is not valid JSON: %s" % (path, exc)) from exc
    return manifest if isinstance(manifest, dict) else {}


# ---------------------------------------------------------------- state


def host_state(layout):
    """Everything a runbook needs to plan: live release and pool, slots, ledger summary."""
    current, pool = read_current(layout)
    slots = {}
    if os.path.isdir(layout.slots):
        for name in POOLS:
            slots[name] = read_slot(layout, name)
    summary = summarize(read_ledger(layout))
    installed = []
    if os.path.isdir(layout.releases):
        installed = sorted(
            name
            for name in os.listdir(layout.releases)
            if RELEASE_ID_RE.match(name) and os.path.isdir(os.path.join(layout.releases, name))
        )
    schemas = dict((rid, read_manifest(layout, rid).get("schema", [])) for rid in installed)
    good = last_known_good(summary, exclude=(current,) if current else ())
    idle = None
    if pool:
        idle = POOLS[1 - POOLS.index(pool)]
    return {
        "root": layout.root,
        "current": current,
        "live_pool": pool,
        "idle_pool": idle,
        "slots": slots,
        "installed": installed,
        "schemas": schemas,
        "releases": summary,
        "last_known_good": good["release_id"] if good else None,
        "lock": read_lock(layout.lock),
    }


def describe(root, release_id=None):
    """release_info's whole answer: the host state, plus one release's entry if asked."""
    layout = Layout(root)
    state = host_state(layout)
    if release_id:
        rid = validate_release_id(release_id)
        entry = find(state["releases"], rid)
        state["release"] = dict(
            entry or {"release_id": rid, "status": None},
            installed=os.path.isdir(layout.release_dir(rid)),
        )
    return state

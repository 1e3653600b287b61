# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pgbackrest engine: drive `pgbackrest` behind the same interface as the native engine.

    result = configure(cfg)            # writes the 0600 pgbackrest.conf, returns the WAL commands
    stanza_create(cfg)
    entry = take_backup(cfg, "full")   # one `pgbackrest backup` per repository
    list_backups(cfg)                  # `pgbackrest info --output=json` as catalog entries
    restore(cfg, entry["label"], "/var/tmp/scratch")
    verify(cfg); expire(cfg)

pgbackrest runs as the cluster's OS user (cfg.pg.os_user): when we are root we switch to it,
when we are that user we run it directly. Every option, secrets included (S3 keys, cipher
passphrases), is in the configuration file (mode 0600, owned by that user): command lines carry
only the file's path, the stanza and non-secret options.

Repositories come from cfg.pgbackrest_repos, one per entry, numbered repo1.. in order:
    {type: posix, path: /var/lib/pgbackrest}
    {type: s3, endpoint, bucket, region, key, key_secret, path: /, uri_style: path,
     verify_tls: n, port: 443, cipher_pass: "..."}
pgbackrest (2.45 and every release up to at least 2.55) speaks S3 over TLS only: an endpoint
given as http://... is refused here, with the reason, rather than failing later in a TLS error.

Labels are pgbackrest's own (20261128-181500F, 20261128-181500F_20261128-190000I). Every
repository holds backups of its own with labels of their own, so an entry's `locations` name the
repositories holding that label, and take_backup's result also lists each repository's label
under `repo_labels`.

Standard library only.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils import postgres
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    BackupError,
    format_lsn,
    iso,
    parse_lsn,
    segment_name,
    utcnow,
    write_atomic,
)

DEFAULT_CONFIG_DIR = "/etc/pgbackrest"
COMPRESS_TYPE = {"lz4": "lz4", "zstd": "zst", "none": "none"}
BACKUP_TYPE = {"full": "full", "incremental": "incr", "incr": "incr", "diff": "diff"}
TYPE_NAME = {"full": "full", "incr": "incremental", "diff": "diff"}
RESTORE_TYPES = ("default", "immediate", "time", "lsn", "name", "xid", "standby", "none")
_REPO_KEYS = {
    "posix": {"type", "path", "retention_full", "cipher_pass"},
    "s3": {
        "type", "path", "endpoint", "bucket", "region", "key", "key_secret", "uri_style",
        "verify_tls", "port", "retention_full", "cipher_pass", "ca_file",
    },
}  # fmt: skip
_SECRET_REPO_KEYS = ("key", "key_secret", "cipher_pass")
_CONF_VALUE_RE = re.compile(r"^[^\n\r]*$")
_ERROR_RE = re.compile(r"ERROR: \[(\d+)\]: (.*)")
TIMEOUT = 6 * 3600


# ---- locating things ----------------------------------------------------------------------


def pgbackrest_binary():
    found = shutil.which("pgbackrest", path="/usr/bin:/usr/local/bin:/bin:" + os.environ.get(
        "PATH", ""))  # fmt: skip
    if not found:
        raise BackupError(
            "pgbackrest is not installed (no pgbackrest in /usr/bin, /usr/local/bin or PATH): "
            "install the pgbackrest package on the database host"
        )
    return found


def config_path(cfg):
    """Where this cluster's pgbackrest.conf lives (cfg.pgbackrest_config, else per cluster)."""
    return cfg.pgbackrest_config or os.path.join(DEFAULT_CONFIG_DIR, f"{cfg.cluster}.conf")


def work_dir(cfg):
    """pgbackrest's lock, log and spool directories for this cluster: under spool_dir."""
    return os.path.join(cfg.spool_dir, "pgbackrest")


def stanza(cfg):
    if not cfg.pgbackrest_stanza:
        raise BackupError("engine pgbackrest needs pgbackrest_stanza")
    return cfg.pgbackrest_stanza


def _os_user(cfg):
    """(uid, gid, home) of the cluster's OS user."""
    return postgres.os_user_ids(cfg.pg.os_user, BackupError)


def wal_commands(cfg):
    """(archive_command, restore_command) that send WAL through pgbackrest for this stanza."""
    base = f"{pgbackrest_binary()} --config={_quote(config_path(cfg))} --stanza={stanza(cfg)}"
    return f"{base} archive-push %p", f'{base} archive-get %f "%p"'


def _quote(path):
    if re.match(r"^[A-Za-z0-9_./-]+$", path):
        return path
    return "'" + path.replace("'", "'\"'\"'") + "'"


# ---- running pgbackrest -------------------------------------------------------------------


def _secrets(cfg):
    out = []
    for repo in cfg.pgbackrest_repos:
        if isinstance(repo, dict):
            out += [str(repo[k]) for k in _SECRET_REPO_KEYS if repo.get(k)]
    return [s for s in out if len(s) >= 4]


def _scrub(cfg, text):
    for secret in _secrets(cfg):
        text = text.replace(secret, "********")
    return text


def run(cfg, args, *, check=True, timeout=TIMEOUT, repo=None):
    """Run `pgbackrest --config=... --stanza=... <args>` as the cluster's OS user.

    Returns the CompletedProcess; on failure (check) raises BackupError naming the command and
    pgbackrest's ERROR line, with a hint for the errors an operator meets first.
    """
    binary = pgbackrest_binary()
    uid, gid, home = _os_user(cfg)
    conf = config_path(cfg)
    argv = [binary, f"--config={conf}", f"--stanza={stanza(cfg)}"]
    if repo is not None:
        argv.append(f"--repo={repo}")
    argv += list(args)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": home,
           "LC_ALL": "C.UTF-8", "PGHOST": cfg.pg.host, "PGPORT": str(cfg.pg.port)}  # fmt: skip
    kwargs = {}
    if os.geteuid() != uid:
        if os.geteuid() != 0:
            raise BackupError(
                f"pgbackrest must run as {cfg.pg.os_user}: run this as root or as that user"
            )
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    try:
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"pgbackrest {args[-1]} did not finish in {timeout}s") from None
    except OSError as exc:
        raise BackupError(f"could not run {binary}: {exc}") from None
    if check and done.returncode != 0:
        raise BackupError(_explain(cfg, args, done))
    return done


def _explain(cfg, args, done):
    text = _scrub(cfg, (done.stderr or "") + (done.stdout or ""))
    match = _ERROR_RE.search(text)
    code, message = (int(match.group(1)), match.group(2).strip()) if match else (None, "")
    if not message:
        tail = [line for line in text.strip().splitlines() if line.strip()][-3:]
        message = " / ".join(tail) or f"exit status {done.returncode}"
    command = next((a for a in args if not a.startswith("-")), "command")
    name = stanza(cfg)
    hint = ""
    lowered = message.lower()
    if not os.path.exists(config_path(cfg)):
        hint = f"; {config_path(cfg)} does not exist: run configure first"
    elif code == 31 and "pg1-path" in message:
        hint = f"; stanza {name!r} is not in {config_path(cfg)} (wrong pgbackrest_stanza?)"
    elif code in (55, 103) or "missing stanza" in lowered or "stanza-create" in lowered:
        hint = f"; stanza {name!r} does not exist in the repository: run stanza_create first"
    elif code == 82 or "archive_command" in lowered or "wal segment" in lowered:
        hint = (
            f"; the cluster is not archiving WAL through pgbackrest stanza {name!r}: set "
            f"archive_command to configure()'s archive_command"
        )
    elif code == 28 and "lock" in lowered:
        hint = "; another pgbackrest command holds the lock for this stanza"
    return f"pgbackrest {command} (stanza {name}) failed [{code}]: {message}{hint}"


def _psql(cfg, query):
    """One value from the cluster through psql, as the cluster's OS user."""
    return postgres.psql_value(cfg.pg.target, query, os_user=cfg.pg.os_user, error=BackupError)


def check_archiving(cfg):
    """BackupError unless the cluster archives WAL through pgbackrest for this stanza."""
    mode = _psql(cfg, "SHOW archive_mode")
    command = _psql(cfg, "SHOW archive_command")
    name = stanza(cfg)
    if mode not in ("on", "always"):
        raise BackupError(
            f"the cluster at port {cfg.pg.port} does not archive WAL (archive_mode={mode}): "
            f"set archive_mode=on and archive_command to pgbackrest archive-push for stanza {name}"
        )
    if "pgbackrest" not in command or f"--stanza={name}" not in command:
        raise BackupError(
            f"the cluster at port {cfg.pg.port} does not archive WAL through pgbackrest stanza "
            f"{name!r} (archive_command is {command!r}): set it to configure()'s archive_command"
        )


def _notify(progress, message):
    if progress is not None:
        progress(message)


# ---- configuration ------------------------------------------------------------------------


def _conf_value(value, what):
    text = ("y" if value else "n") if isinstance(value, bool) else str(value)
    if not text or not _CONF_VALUE_RE.match(text):
        raise BackupError(f"{what} must be a non-empty single-line value")
    return text


def repo_options(cfg):
    """[(repo number, {option: value})] from cfg.pgbackrest_repos, validated."""
    repos = cfg.pgbackrest_repos
    if not repos:
        raise BackupError("engine pgbackrest needs pgbackrest_repos (at least one repository)")
    if len(repos) > 4:
        raise BackupError(f"pgbackrest supports at most 4 repositories, got {len(repos)}")
    out = []
    for number, raw in enumerate(repos, start=1):
        where = f"pgbackrest_repos[{number - 1}]"
        if not isinstance(raw, dict):
            raise BackupError(f"{where} must be a mapping")
        kind = raw.get("type", "posix")
        if kind not in _REPO_KEYS:
            raise BackupError(f"{where}.type must be posix or s3, got {kind!r}")
        unknown = sorted(set(raw) - _REPO_KEYS[kind])
        if unknown:
            raise BackupError(f"{where}: unknown keys {unknown} for a {kind} repository")
        path = raw.get("path") or ("/" if kind == "s3" else "")
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
            raise BackupError(f"{where}.path must be an absolute path, got {path!r}")
        prefix = f"repo{number}-"
        opts = {f"{prefix}type": kind, f"{prefix}path": path}
        opts[f"{prefix}retention-full"] = str(int(raw.get("retention_full") or cfg.retention_full))
        if kind == "s3":
            for key in ("endpoint", "bucket", "region", "key", "key_secret"):
                if not raw.get(key):
                    raise BackupError(f"{where}.{key} is required for an s3 repository")
            endpoint = str(raw["endpoint"])
            if endpoint.startswith("http://"):
                raise BackupError(
                    f"{where}.endpoint {endpoint!r}: pgbackrest reaches S3 over https only (no "
                    "release supports plain http); put a TLS endpoint in front of the store"
                )
            endpoint = endpoint.removeprefix("https://").rstrip("/")
            if ":" in endpoint and not raw.get("port"):
                endpoint, port = endpoint.rsplit(":", 1)
                opts[f"{prefix}storage-port"] = port
            opts[f"{prefix}s3-endpoint"] = endpoint
            opts[f"{prefix}s3-bucket"] = raw["bucket"]
            opts[f"{prefix}s3-region"] = raw["region"]
            opts[f"{prefix}s3-key"] = raw["key"]
            opts[f"{prefix}s3-key-secret"] = raw["key_secret"]
            opts[f"{prefix}s3-uri-style"] = raw.get("uri_style") or "path"
            if raw.get("port"):
                opts[f"{prefix}storage-port"] = int(raw["port"])
            verify = raw.get("verify_tls", True)
            if isinstance(verify, str):
                verify = verify.lower() in ("y", "yes", "true", "1")
            opts[f"{prefix}storage-verify-tls"] = "y" if verify else "n"
            if raw.get("ca_file"):
                opts[f"{prefix}storage-ca-file"] = raw["ca_file"]
        if raw.get("cipher_pass"):
            opts[f"{prefix}cipher-type"] = "aes-256-cbc"
            opts[f"{prefix}cipher-pass"] = raw["cipher_pass"]
        out.append((number, {k: _conf_value(v, f"{where} {k}") for k, v in opts.items()}))
    return out


def render_config(cfg):
    """The text of pgbackrest.conf for this configuration (secrets included: file is 0600)."""
    work = work_dir(cfg)
    lines = ["# Written by knowngood (backup_pgbackrest.configure); changes are overwritten.",
             "[global]"]  # fmt: skip
    for _dummy, opts in repo_options(cfg):
        lines += [f"{k}={v}" for k, v in opts.items()]
    general = {
        "process-max": cfg.parallel,
        "compress-type": COMPRESS_TYPE[cfg.compression],
        "start-fast": "y",
        "delta": "y",
        "lock-path": os.path.join(work, "lock"),
        "log-path": os.path.join(work, "log"),
        "spool-path": os.path.join(work, "spool"),
        "log-level-console": "warn",
        "log-level-file": "info",
        "archive-timeout": 120,
    }
    if cfg.compression != "none":
        general["compress-level"] = max(cfg.compression_level, 1 if cfg.compression == "lz4" else 0)
    lines += [f"{k}={v}" for k, v in general.items()]
    lines += ["", f"[{stanza(cfg)}]"]
    pg = {"pg1-path": cfg.pg.data_dir, "pg1-port": cfg.pg.port, "pg1-user": cfg.pg.user}
    if not cfg.pg.data_dir:
        raise BackupError("engine pgbackrest needs pg.data_dir")
    if cfg.pg.host.startswith("/"):
        pg["pg1-socket-path"] = cfg.pg.host
    lines += [f"{k}={_conf_value(v, k)}" for k, v in pg.items()]
    return "\n".join(lines) + "\n"


def configure(cfg):
    """Write pgbackrest.conf (0600, owned by the cluster's OS user) and the posix repositories'
    directories; return {changed, config_path, archive_command, restore_command}."""
    pgbackrest_binary()
    user = _os_user(cfg)[:2]
    path = config_path(cfg)
    text = render_config(cfg)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        for sub in ("", "lock", "log", "spool"):
            _own_dir(os.path.join(work_dir(cfg), sub), user)
        for number, opts in repo_options(cfg):
            if opts[f"repo{number}-type"] == "posix":
                _own_dir(opts[f"repo{number}-path"], user, mode=0o750)
        try:
            with open(path) as handle:
                old = handle.read()
        except FileNotFoundError:
            old = None
        changed = old != text
        if changed:
            write_atomic(path, text, mode=0o600)
        if os.geteuid() == 0:
            os.chown(path, *user)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise BackupError(f"could not write pgbackrest configuration {path}: {exc}") from None
    archive_command, restore_command = wal_commands(cfg)
    return {
        "changed": changed,
        "config_path": path,
        "archive_command": archive_command,
        "restore_command": restore_command,
    }


def _own_dir(path, user, mode=0o750):
    """Make path (mode) owned by user, a (uid, gid), when it does not exist yet."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode)
        if os.geteuid() == 0:
            os.chown(path, *user)
        os.chmod(path, mode)


def stanza_create(cfg, *, progress=None):
    """Create the stanza in every repository (idempotent: an existing matching stanza is fine)."""
    _require_config(cfg)
    _notify(progress, f"pgbackrest stanza-create {stanza(cfg)}")
    done = run(cfg, ["stanza-create"])
    return {"changed": "already exists" not in (done.stdout + done.stderr), "stanza": stanza(cfg)}


def _require_config(cfg):
    if not os.path.exists(config_path(cfg)):
        raise BackupError(f"{config_path(cfg)} does not exist: run configure first")


# ---- info -> catalog entries ----------------------------------------------------------------


def info(cfg):
    """`pgbackrest info --output=json` for our stanza (the stanza's dict), checked."""
    _require_config(cfg)
    done = run(cfg, ["--output=json", "info"])
    try:
        data = json.loads(done.stdout)
    except ValueError:
        raise BackupError(f"pgbackrest info printed no JSON: {done.stdout[:200]!r}") from None
    entry = next((s for s in data if s.get("name") == stanza(cfg)), None)
    if entry is None:
        raise BackupError(f"pgbackrest info does not know stanza {stanza(cfg)!r}")
    status = entry.get("status") or {}
    # 0 ok, 2 no valid backup yet, 5 repositories differ (checked one by one), 6 a backup or
    # expire is running; anything else (1 missing stanza path, 3 missing stanza data, 4 another
    # cluster, 99 other) is an error.
    bad = [
        repo for repo in entry.get("repo") or []
        if (repo.get("status") or {}).get("code") not in (0, 2, None)
    ]  # fmt: skip
    if status.get("code") not in (0, 2, 5, 6, None) or bad:
        message = status.get("message", "")
        for repo in bad:
            message += f"; repo{repo.get('key')}: {(repo.get('status') or {}).get('message')}"
        hint = ""
        if "missing stanza" in message:
            hint = ": run stanza_create first (or check pgbackrest_stanza)"
        raise BackupError(f"pgbackrest stanza {stanza(cfg)!r}: {message}{hint}")
    return entry


def _entry(cfg, raw, repos):
    kind = TYPE_NAME.get(raw.get("type"), raw.get("type"))
    archive = raw.get("archive") or {}
    lsn = raw.get("lsn") or {}
    stamp = raw.get("timestamp") or {}
    size = (raw.get("info") or {}).get("size")
    repository = (raw.get("info") or {}).get("repository") or {}
    wal_start = archive.get("start")
    timeline = int(wal_start[:8], 16) if wal_start else None
    start_lsn, stop_lsn = lsn.get("start"), lsn.get("stop")
    if not start_lsn and wal_start:
        start_lsn = _segment_lsn(wal_start)
    reference = raw.get("reference") or []
    label = raw["label"]
    chain = [*reference, label] if kind != "full" else [label]
    return {
        "label": label,
        "type": kind,
        "engine": "pgbackrest",
        "stanza": stanza(cfg),
        "parent": raw.get("prior"),
        "chain": sorted(set(chain), key=chain.index),
        "start_lsn": start_lsn,
        "stop_lsn": stop_lsn,
        "start_time": iso(_from_epoch(stamp["start"])) if stamp.get("start") else None,
        "stop_time": iso(_from_epoch(stamp["stop"])) if stamp.get("stop") else None,
        "timeline": timeline,
        "wal_start": wal_start,
        "wal_stop": archive.get("stop"),
        "size": size,
        "delta_size": (raw.get("info") or {}).get("delta"),
        "stored_size": repository.get("delta", repository.get("size")),
        "repo_size": repository.get("size"),
        "compression": cfg.compression,
        "encrypted": False,
        "error": bool(raw.get("error")),
        "locations": {f"repo{r}": {"status": "ok"} for r in repos},
    }


def _segment_lsn(name):
    return format_lsn(int(name[8:16], 16) << 32 | int(name[16:24], 16) * 16 * 1024 * 1024)


def _from_epoch(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _repo_archive_dir(cfg, repo):
    root = os.path.join(repo["path"], "archive", stanza(cfg))
    ids = sorted(
        (d for d in os.listdir(root) if re.match(r"^\d+-\d+$", d)),
        key=lambda d: int(d.split("-")[1]),
    )
    if not ids:
        raise BackupError(f"pgBackRest repository {repo['path']} holds no WAL archive")
    return os.path.join(root, ids[-1])


def archived_wal(cfg):
    """[(repoN, [archived WAL file names], error or None)]: what each posix repository's
    archive holds (segments by name, history files)."""
    out = []
    for number, repo in enumerate(cfg.pgbackrest_repos, start=1):
        name = f"repo{number}"
        if (repo.get("type") or "posix") != "posix" or not repo.get("path"):
            out.append((name, [], "only posix repositories can be listed for continuity"))
            continue
        names = []
        try:
            base = _repo_archive_dir(cfg, repo)
            for entry in os.listdir(base):
                if entry.endswith(".history"):
                    names.append(entry)
                elif re.match(r"^[0-9A-F]{16}$", entry):
                    for item in os.listdir(os.path.join(base, entry)):
                        names.append(item.split("-", 1)[0] if "-" in item else item)
        except (OSError, BackupError) as err:
            out.append((name, names, str(err)))  # what was listed before the error counts
            continue
        out.append((name, names, None))
    return out


def list_backups(cfg):
    """Every backup of the stanza in every repository, oldest first, as catalog entries.

    A label held by several repositories (not the usual case: each repository's backups get
    labels of their own) is one entry whose locations name them all."""
    data = info(cfg)
    ciphered = {number for number, opts in repo_options(cfg) if f"repo{number}-cipher-type" in opts}
    by_label = {}
    for raw in data.get("backup") or []:
        repo = (raw.get("database") or {}).get("repo-key", 1)
        if raw["label"] in by_label:
            by_label[raw["label"]]["locations"][f"repo{repo}"] = {"status": "ok"}
            continue
        entry = _entry(cfg, raw, [repo])
        entry["encrypted"] = repo in ciphered
        by_label[raw["label"]] = entry
    return sorted(by_label.values(), key=lambda e: (e["start_time"] or "", e["label"]))


def _repo_labels(entries):
    out = {}
    for entry in entries:
        for name in entry["locations"]:
            out.setdefault(name, set()).add(entry["label"])
    return out


# ---- backup -------------------------------------------------------------------------------


def take_backup(cfg, backup_type, *, label=None, progress=None):
    """`pgbackrest backup --type=full|incr|diff` into each repository, one after the other.

    Returns the catalog entry of the first repository that took it (label = pgbackrest's
    label), with `locations` {repoN: {status: ok|failed, error, label}} for every repository
    and `repo_labels`. `label` is ignored (pgbackrest names its backups); it is accepted for
    the native engine's interface. BackupError when no repository took the backup.
    """
    kind = BACKUP_TYPE.get(backup_type)
    if kind is None:
        raise BackupError(f"backup type must be full, incremental or diff, got {backup_type!r}")
    _require_config(cfg)
    check_archiving(cfg)
    repos = [number for number, dummy in repo_options(cfg)]
    before = _repo_labels(list_backups(cfg))
    results, errors = {}, {}
    started = time.monotonic()
    for number in repos:
        name = f"repo{number}"
        _notify(progress, f"pgbackrest backup --type={kind} --repo={number}")
        t0 = time.monotonic()
        try:
            run(cfg, [f"--type={kind}", "backup"], repo=number)
        except BackupError as exc:
            errors[name] = str(exc)
            _notify(progress, f"{name}: failed: {exc}")
            continue
        results[name] = round(time.monotonic() - t0, 3)
        _notify(progress, f"{name}: done in {results[name]:.1f}s")
    entries = list_backups(cfg)
    after = _repo_labels(entries)
    new = {name: sorted(after.get(name, set()) - before.get(name, set()))[-1:] for name in results}
    repo_labels = {name: labels[0] for name, labels in new.items() if labels}
    if not repo_labels:
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "no new backup in info"
        raise BackupError(f"pgbackrest {kind} backup of stanza {stanza(cfg)} failed: {detail}")
    first = next(name for name in (f"repo{n}" for n in repos) if name in repo_labels)
    by_label = {e["label"]: e for e in entries}
    entry = dict(by_label[repo_labels[first]])
    locations = {}
    for number in repos:
        name = f"repo{number}"
        if name in repo_labels:
            locations[name] = {"status": "ok", "label": repo_labels[name], "at": iso(utcnow()),
                               "seconds": results[name]}  # fmt: skip
        else:
            locations[name] = {"status": "failed", "error": errors.get(name, "no new backup"),
                               "at": iso(utcnow())}  # fmt: skip
    entry["locations"] = locations
    entry["repo_labels"] = repo_labels
    entry["requested_type"] = TYPE_NAME[kind]
    entry["seconds"] = round(time.monotonic() - started, 3)
    entry["complete"] = not errors
    entry["incomplete_locations"] = {
        name: loc["error"] for name, loc in locations.items() if loc["status"] != "ok"
    }
    return entry


def find_backup(cfg, label):
    """(entry, repo number) of a label; BackupError naming the labels there are otherwise."""
    entries = list_backups(cfg)
    for entry in entries:
        if entry["label"] == label:
            repo = sorted(int(name[4:]) for name in entry["locations"])[0]
            return entry, repo
    have = [e["label"] for e in entries]
    raise BackupError(f"no pgbackrest backup {label!r} in stanza {stanza(cfg)}; have {have}")


# ---- restore ------------------------------------------------------------------------------


def restore(cfg, label, target_dir, *, target=None, progress=None, location=None,
            archive_mode="preserve"):  # fmt: skip
    """`pgbackrest restore --set=label --pg1-path=target_dir --delta` as the cluster's OS user.

    target: None (replay to the end of the archive), "immediate" (stop at consistency), or a
    dict {type: time|lsn|name|xid|immediate|standby|none, value, action: promote|pause|
    shutdown, inclusive: bool}. location: "repoN" to restore from a given repository (default:
    the first holding the label). archive_mode "off" keeps a scratch restore from archiving
    into the repository. The restored cluster is not started; PostgreSQL fetches WAL through
    pgbackrest archive-get (restore_command written to postgresql.auto.conf).
    """
    _require_config(cfg)
    entry, repo = find_backup(cfg, label)
    if location:
        if location not in entry["locations"]:
            raise BackupError(f"backup {label} is not in {location}: {sorted(entry['locations'])}")
        repo = int(location[4:])
    if not os.path.isabs(target_dir) or ".." in target_dir.split("/"):
        raise BackupError(f"restore target must be an absolute path, got {target_dir!r}")
    if os.path.exists(os.path.join(target_dir, "postmaster.pid")):
        raise BackupError(f"{target_dir} has a postmaster.pid: stop that cluster first")
    if archive_mode not in ("preserve", "off"):
        raise BackupError(f"archive_mode must be preserve or off, got {archive_mode!r}")
    user = _os_user(cfg)[:2]
    try:
        _own_dir(target_dir, user, mode=0o700)
    except OSError as exc:
        raise BackupError(f"could not create restore target {target_dir}: {exc}") from None
    args = [f"--pg1-path={target_dir}", f"--set={label}", "--delta"]
    if os.listdir(target_dir) and not os.path.exists(os.path.join(target_dir, "PG_VERSION")):
        args.append("--force")
    if archive_mode == "off":
        args.append("--archive-mode=off")
    args += _target_args(target)
    _notify(progress, f"pgbackrest restore --set={label} --repo={repo} into {target_dir}")
    started = time.monotonic()
    run(cfg, [*args, "restore"], repo=repo)
    seconds = round(time.monotonic() - started, 3)
    _notify(progress, f"restored {label} in {seconds:.1f}s")
    return {
        "label": label,
        "type": entry["type"],
        "chain": entry["chain"],
        "location": f"repo{repo}",
        "target_dir": target_dir,
        "target": target,
        "size": entry["size"],
        "stop_lsn": entry["stop_lsn"],
        "timeline": entry["timeline"],
        "seconds": seconds,
        "restore_command": wal_commands(cfg)[1],
    }


def _target_args(target):
    if target is None:
        return []
    if isinstance(target, str):
        target = {"type": target}
    if not isinstance(target, dict):
        raise BackupError(f"restore target must be None, a type name or a mapping, got {target!r}")
    kind = target.get("type", "default")
    if kind not in RESTORE_TYPES:
        raise BackupError(f"restore target type must be one of {RESTORE_TYPES}, got {kind!r}")
    args = [f"--type={kind}"]
    if kind in ("time", "lsn", "name", "xid"):
        value = target.get("value")
        if value in (None, "") or not _CONF_VALUE_RE.match(str(value)):
            raise BackupError(f"restore target type {kind} needs a value")
        if kind == "lsn":
            format_lsn(parse_lsn(str(value)))
        args.append(f"--target={value}")
        if "inclusive" in target:
            args.append(f"--target-exclusive={'n' if target['inclusive'] else 'y'}")
    action = target.get("action")
    if action:
        if action not in ("promote", "pause", "shutdown"):
            raise BackupError(f"restore target action must be promote|pause|shutdown: {action!r}")
        args.append(f"--target-action={action}")
    return args


# ---- verify / expire ---------------------------------------------------------------------


def verify(cfg, *, progress=None):
    """`pgbackrest check` (archiving works end to end, every repository reachable) and
    `pgbackrest verify` of each repository (every backup file and WAL segment checksummed).

    Returns {ok, check: {ok, error}, repos: {repoN: {ok, output}}}; never raises for a failed
    verification (the result says so), only for a missing pgbackrest or configuration."""
    _require_config(cfg)
    result = {"ok": True, "check": {"ok": True, "error": None}, "repos": {}}
    _notify(progress, "pgbackrest check")
    try:
        run(cfg, ["check"], timeout=600)
    except BackupError as exc:
        result["ok"] = False
        result["check"] = {"ok": False, "error": str(exc)}
    for number, _dummy in repo_options(cfg):
        _notify(progress, f"pgbackrest verify --repo={number}")
        done = run(cfg, ["--output=text", "verify"], repo=number, check=False)
        text = _scrub(cfg, (done.stdout + done.stderr).strip())
        ok = done.returncode == 0
        result["repos"][f"repo{number}"] = {"ok": ok, "output": text[-4000:]}
        result["ok"] = result["ok"] and ok
    result["at"] = iso(utcnow())
    return result


def expire(cfg, *, progress=None):
    """`pgbackrest expire` with repoN-retention-full (cfg.retention_full unless the repository
    sets retention_full); returns {changed, expired: [labels], kept: [labels]}."""
    _require_config(cfg)
    before = {e["label"] for e in list_backups(cfg)}
    _notify(progress, "pgbackrest expire")
    run(cfg, ["expire"])
    after = list_backups(cfg)
    gone = sorted(before - {e["label"] for e in after})
    return {"changed": bool(gone), "expired": gone, "kept": [e["label"] for e in after]}


def wal_segment_of(timeline, lsn_text):
    """The WAL segment holding an LSN (for callers that compare against archive coverage)."""
    return segment_name(timeline, parse_lsn(lsn_text))

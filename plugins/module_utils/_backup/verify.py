# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification tiers for native backups; each tier's result goes into the catalog.

- integrity: every stored object of every copy against manifest.json (present, size, sha256 of
  the stored bytes; bundles: the whole bundle and every file's slice of it, problems named by
  data file), manifest.json against the checksum in backup.json, export signatures,
  no extra objects, pg's backup_manifest, and WAL continuity from each backup's start segment
  to the newest archived segment.
- freshness: newest full / any backup / archived WAL against the policy; every backup in every
  required location.
- restore: the newest backup restored into a scratch cluster on a spare port, WAL replayed to
  the end of the archive, pg_amcheck, and a sentinel row written just before must be there.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import tempfile
import time

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup import (
    archive,
    codec,
    command,
    engine,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.catalog import (
    Catalog,
    backups_prefix,
    list_labels,
    read_entry,
    read_manifest_bytes,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    CHUNK,
    WAL_SEGMENT_RE,
    BackupError,
    iso,
    parse_iso,
    segment_parts,
    sha256_bytes,
    utcnow,
)

TIERS = ("integrity", "freshness", "restore")
SENTINEL_TABLE = "knowngood_sentinel"


def _noop(*_args, **_kwargs):
    return None


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---- integrity -------------------------------------------------------------------------------


def _hash_object(location, key, tmp_dir):
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="obj.")
    os.close(fd)
    try:
        location.get_file(key, tmp)
        digest = hashlib.sha256()
        size = 0
        with open(tmp, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_copy(cfg, target, entry, tmp_dir, pool):
    """Problems (strings naming location, backup and file) of one copy of one backup."""
    label = entry["label"]
    where = f"location {target.name}: backup {label}"
    prefix = backups_prefix(cfg, label)
    problems = []
    try:
        stored_entry = read_entry(target.location, cfg, label)
    except Exception as err:  # noqa: BLE001
        return [f"{where}: backup.json missing or unreadable ({_first_line(err)})"], {}
    want = ((stored_entry.get("locations") or {}).get(target.name) or {}).get("manifest_sha256")
    want = want or (stored_entry.get("manifests") or {}).get(target.variant)
    try:
        raw = read_manifest_bytes(target.location, cfg, label)
    except Exception as err:  # noqa: BLE001
        return [f"{where}: manifest.json missing ({_first_line(err)})"], {}
    if want and sha256_bytes(raw) != want:
        return [
            f"{where}: bad manifest: manifest.json does not match its checksum in backup.json"
        ], {}
    if target.spec.type == "export":
        try:
            target.location.verify_signed_manifest(label, cfg.signing_key, raw)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{where}: bad manifest signature: {_first_line(err)}")
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{where}: bad manifest: manifest.json is not a valid manifest"], {}
    own_files = [f for f in files if f.get("ref") == label]
    own = {f["key"]: f for f in own_files if not f.get("bundle")}
    in_bundle = {}
    for item in own_files:
        if item.get("bundle"):
            in_bundle.setdefault(item["bundle"], []).append(item)
    bundle_info = {b["key"]: b for b in manifest.get("bundles") or [] if b.get("key")}
    expected = set(own) | set(in_bundle) | set(bundle_info)
    try:
        present = set(target.location.list(f"{prefix}files/"))
        present |= set(target.location.list(f"{prefix}bundles/"))
    except Exception as err:  # noqa: BLE001
        return [f"{where}: cannot list stored files ({_first_line(err)})"], {}
    for key in sorted(set(own) - present):
        problems.append(f"{where}: missing file {own[key]['path']} (object {key})")
    for key in sorted(set(in_bundle) - present):
        problems.extend(
            _affected(where, "missing file", in_bundle[key], f"(bundle {key} is missing)")
        )
    for key in sorted(set(bundle_info) - set(in_bundle) - present):
        problems.append(f"{where}: missing bundle {key}")
    for key in sorted(present - expected):
        problems.append(f"{where}: extra file {key} not in manifest.json")
    refs = sorted({f["ref"] for f in files if f.get("ref") != label})
    if refs:
        committed = list_labels(target.location, cfg)
        for ref in refs:
            if committed.get(ref) is not True:
                problems.append(f"{where}: references backup {ref}, which is not committed here")
    bm = manifest.get("backup_manifest")
    if bm:
        try:
            data = target.location.get_bytes(f"{prefix}backup_manifest")
            if sha256_bytes(data) != bm.get("sha256"):
                problems.append(f"{where}: changed bytes in backup_manifest (sha256 mismatch)")
        except Exception as err:  # noqa: BLE001
            problems.append(f"{where}: missing file backup_manifest ({_first_line(err)})")

    def one(item):
        size, digest = _hash_object(target.location, item["key"], tmp_dir)
        if size != item["stored_size"]:
            kind = "truncated file" if size < item["stored_size"] else "changed size of file"
            return [
                f"{where}: {kind} {item['path']}: {size} bytes stored, "
                f"{item['stored_size']} expected"
            ]
        if digest != item["stored_sha256"]:
            return [f"{where}: changed bytes in file {item['path']} (sha256 mismatch)"]
        return []

    def bundle(key):
        return check_bundle(
            target.location, key, in_bundle.get(key, []), bundle_info.get(key), where, tmp_dir
        )

    checked = [item for key, item in own.items() if key in present]
    bundles = sorted(key for key in set(in_bundle) | set(bundle_info) if key in present)
    futures = {pool.submit(one, item): item["path"] for item in checked}
    futures.update({pool.submit(bundle, key): f"bundle {key}" for key in bundles})
    for future in concurrent.futures.as_completed(futures):
        try:
            found = future.result()
        except Exception as err:  # noqa: BLE001
            found = [f"{where}: cannot read file {futures[future]}: {_first_line(err)}"]
        problems.extend(found)
    problems.sort()
    stats = {
        "files": len(files),
        "objects": len(checked) + len(bundles),
        "bundles": len(bundles),
        "bytes": sum(i["stored_size"] for i in checked)
        + sum(i["stored_size"] for k in bundles for i in in_bundle.get(k, [])),
    }
    return problems, stats


_AFFECTED_LIMIT = 20


def _affected(where, kind, items, note):
    """One problem per data file hit by a bundle-level fault (the first few, then a count)."""
    paths = sorted(i["path"] for i in items)
    out = [f"{where}: {kind} {path} {note}" for path in paths[:_AFFECTED_LIMIT]]
    if len(paths) > _AFFECTED_LIMIT:
        out.append(f"{where}: {kind}: {len(paths) - _AFFECTED_LIMIT} more files {note}")
    return out


def check_bundle(location, key, items, info, where, tmp_dir):
    """Problems of one bundle object: every slice (size + stored sha256) named by its data
    file, then the bundle as a whole against the manifest's bundle record."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="bundle.")
    os.close(fd)
    problems = []
    try:
        location.get_file(key, tmp)
        size = os.path.getsize(tmp)
        digest = hashlib.sha256()
        with open(tmp, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
            truncated = []
            for item in sorted(items, key=lambda i: i["offset"]):
                handle.seek(item["offset"])
                data = handle.read(item["stored_size"])
                if len(data) < item["stored_size"]:
                    truncated.append(item)
                    if len(truncated) <= _AFFECTED_LIMIT:
                        problems.append(
                            f"{where}: truncated file {item['path']} in bundle {key}: "
                            f"{len(data)} bytes stored, {item['stored_size']} expected"
                        )
                elif sha256_bytes(data) != item["stored_sha256"]:
                    problems.append(
                        f"{where}: changed bytes in file {item['path']} in bundle {key} "
                        "(sha256 mismatch)"
                    )
            if len(truncated) > _AFFECTED_LIMIT:
                problems.append(
                    f"{where}: truncated file: {len(truncated) - _AFFECTED_LIMIT} more files "
                    f"in bundle {key}"
                )
        end = max((i["offset"] + i["stored_size"] for i in items), default=0)
        want_size = (info or {}).get("stored_size", end)
        if size < want_size:
            problems.append(
                f"{where}: truncated bundle {key}: {size} bytes stored, {want_size} expected"
            )
        elif size > want_size:
            problems.append(
                f"{where}: changed size of bundle {key}: {size} bytes stored, {want_size} expected"
            )
        elif (
            info
            and info.get("stored_sha256")
            and digest.hexdigest() != info["stored_sha256"]
            and not problems
        ):
            problems.append(f"{where}: changed bytes in bundle {key} (sha256 mismatch)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return problems


def integrity(cfg, catalog, targets, *, label=None, progress=_noop):
    entries = catalog.entries()
    if label:
        names = {e["label"] for e in catalog.chain(label)}
        entries = [e for e in entries if e["label"] in names]
    problems, checked, per_label = [], {}, {}
    tmp_dir = tempfile.mkdtemp(prefix="kg-verify-", dir=_ensure_dir(cfg.spool_dir))
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.io_parallel) as pool:
            for entry in entries:
                for target in targets:
                    copy = (entry.get("locations") or {}).get(target.name) or {}
                    if copy.get("status") != "ok":
                        continue
                    progress(f"integrity: {entry['label']} in {target.name}")
                    found, stats = check_copy(cfg, target, entry, tmp_dir, pool)
                    checked.setdefault(entry["label"], {})[target.name] = {
                        **stats,
                        "ok": not found,
                    }
                    problems.extend(found)
                    per_label.setdefault(entry["label"], []).extend(found)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    wal = {}
    for target in targets:
        starts = [
            e.get("wal_start")
            for e in entries
            if ((e.get("locations") or {}).get(target.name) or {}).get("status") == "ok"
            and e.get("wal_start")
        ]
        if not starts:
            continue
        start = min(starts, key=lambda s: segment_parts(s)[1])
        try:
            span = archive.continuity(cfg, target.location, start)
            found = {k: span[k] for k in ("ok", "gaps", "newest")}
        except Exception as err:  # noqa: BLE001
            found = {"ok": False, "gaps": [], "newest": None, "error": _first_line(err)}
        wal[target.name] = {"from": start, **found}
        if found.get("error"):
            problems.append(f"location {target.name}: WAL check failed: {found['error']}")
        for gap in found.get("gaps") or []:
            text = gap if isinstance(gap, str) else json.dumps(gap, sort_keys=True)
            problems.append(f"location {target.name}: WAL gap: segment {text} is missing")
            gap_seg = _gap_segno(gap)
            for entry in entries:
                if entry.get("wal_start") and (
                    gap_seg is None or segment_parts(entry["wal_start"])[1] <= gap_seg
                ):
                    per_label.setdefault(entry["label"], []).append(
                        f"location {target.name}: WAL gap at {text}"
                    )
    for entry in entries:
        found = per_label.get(entry["label"], [])
        catalog.record_verification(
            entry["label"],
            {
                "tier": "integrity",
                "ok": not found,
                "details": {"problems": found, "copies": checked.get(entry["label"], {})},
            },
        )
    return {"ok": not problems, "problems": problems, "backups": checked, "wal": wal}


def _gap_segno(gap):
    text = gap if isinstance(gap, str) else (gap.get("from") or gap.get("start") or "")
    text = str(text)[:24]
    if WAL_SEGMENT_RE.match(text):
        return segment_parts(text)[1]
    return None


def _ensure_dir(path):
    os.makedirs(path, exist_ok=True)
    return path


# ---- freshness -------------------------------------------------------------------------------


def _age_hours(text, now):
    return round((now - parse_iso(text)).total_seconds() / 3600, 3) if text else None


def freshness(cfg, catalog, targets, *, progress=_noop):
    now = utcnow()
    refreshed = catalog.refresh([t.location for t in targets])
    problems = []
    newest_full = catalog.newest("full")
    newest_any = catalog.newest()
    full_age = _age_hours((newest_full or {}).get("stop_time"), now)
    any_age = _age_hours((newest_any or {}).get("stop_time"), now)
    if newest_full is None:
        problems.append("no full backup in the catalog")
    elif full_age > cfg.freshness_full_hours:
        problems.append(
            f"newest full backup {newest_full['label']} is {full_age:.1f} h old "
            f"(limit {cfg.freshness_full_hours:g} h)"
        )
    if newest_any is not None and any_age > cfg.freshness_incremental_hours:
        problems.append(
            f"newest backup {newest_any['label']} is {any_age:.2f} h old (incremental limit "
            f"{cfg.freshness_incremental_hours:g} h)"
        )
    wal = {"last_archived_wal": None, "age_minutes": None}
    try:
        with contextlib.closing(cfg.pg.connect()) as conn:
            row = conn.execute(
                "SELECT last_archived_wal, last_archived_time, last_failed_wal, "
                "last_failed_time FROM pg_stat_archiver"
            ).fetchone()
        wal["last_archived_wal"] = row[0]
        if row[1] is not None:
            wal["age_minutes"] = round((now - row[1]).total_seconds() / 60, 2)
        if row[3] is not None and (row[1] is None or row[3] > row[1]):
            problems.append(f"WAL archiving is failing (last failed segment {row[2]})")
    except BackupError as err:
        wal["error"] = str(err)
    if wal["age_minutes"] is None and "error" not in wal:
        problems.append("no WAL segment was ever archived")
    elif wal["age_minutes"] is not None and wal["age_minutes"] > cfg.freshness_wal_minutes:
        problems.append(
            f"last WAL segment {wal['last_archived_wal']} was archived "
            f"{wal['age_minutes']:.1f} min ago (limit {cfg.freshness_wal_minutes:g} min; "
            "set archive_timeout)"
        )
    coverage = {}
    required = [spec.name for spec in cfg.locations if spec.required]
    for entry in catalog.entries():
        missing = [
            name
            for name in required
            if ((entry.get("locations") or {}).get(name) or {}).get("status") != "ok"
        ]
        if missing:
            coverage[entry["label"]] = missing
            problems.append(f"backup {entry['label']} is missing from required {missing}")
    for name, error in (refreshed.get("unreachable") or {}).items():
        problems.append(f"location {name} unreachable: {error}")
    result = {
        "ok": not problems,
        "problems": problems,
        "newest_full": (newest_full or {}).get("label"),
        "newest_full_age_hours": full_age,
        "newest_backup": (newest_any or {}).get("label"),
        "newest_backup_age_hours": any_age,
        "wal": wal,
        "coverage_missing": coverage,
        "debris": refreshed.get("debris", {}),
    }
    if newest_any is not None:
        catalog.record_verification(
            newest_any["label"], {"tier": "freshness", "ok": not problems, "details": result}
        )
    return result


# ---- restore test ----------------------------------------------------------------------------


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_sentinel(cfg, timeout=120):
    """A random token in knowngood_sentinel on the live cluster, its WAL archived."""
    token = secrets.token_hex(16)
    with contextlib.closing(cfg.pg.connect()) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SENTINEL_TABLE} "
            "(token text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(f"DELETE FROM {SENTINEL_TABLE} WHERE written_at < now() - interval '30 days'")
        conn.execute(f"INSERT INTO {SENTINEL_TABLE} (token) VALUES (%s)", (token,))
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while True:
            last, failed = conn.execute(
                "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
            ).fetchone()
            if last and last >= segment:
                return {"token": token, "segment": segment}
            if time.monotonic() > deadline:
                raise BackupError(
                    f"sentinel: segment {segment} was not archived within {timeout}s "
                    f"(last archived {last}, last failed {failed})"
                )
            time.sleep(0.2)


def _fetch_wal(cfg, target, entry, wal_dir, progress):
    """Python fallback for restore_command: every WAL file from the backup's start segment on
    (and every history file), decoded into wal_dir; restore_command then copies from it."""
    start_tli, start_seg = segment_parts(entry["wal_start"])
    names = archive.wal_objects(target.location)
    wanted = []
    for name, key in names.items():
        if name.endswith(".history"):
            wanted.append((name, key))
            continue
        base = name[:24]
        if WAL_SEGMENT_RE.match(base):
            tli, seg = segment_parts(base)
            if tli >= start_tli and seg >= start_seg:
                wanted.append((name, key))
    progress(f"restore test: fetching {len(wanted)} WAL files from {target.name}")

    def one(item):
        name, key = item
        tmp = os.path.join(wal_dir, f".{name}.stored")
        try:
            target.location.get_file(key, tmp)
            parsed = codec.parse_suffix(key.rsplit("/", 1)[-1]) or ("none", False)
            codec.decode_file(
                tmp,
                os.path.join(wal_dir, name),
                compression=parsed[0],
                key=target.key if parsed[1] else None,
                encrypted=parsed[1],
                mode=0o644,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.parallel) as pool:
        list(pool.map(one, wanted))
    return len(wanted)


def _wal_tool_restore_command(cfg, scratch_dir):
    """restore_command of the installed WAL tool, or None when it is not available here."""
    from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.install import (
        install_tool as install,
    )

    tool_dir = os.path.join(scratch_dir, "tool")
    try:
        installed = install(cfg, tool_dir)
    except Exception:  # noqa: BLE001 - fall back to the Python fetcher
        return None
    if isinstance(installed, dict):
        return installed.get("restore_command")
    return None


def _scratch_settings(cfg, port, run_dir, hba):
    return {
        "port": port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": run_dir,
        "hba_file": hba,
        "archive_mode": "off",
        "archive_command": "",
        "cluster_name": "knowngood-restore-test",
        "logging_collector": False,
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",
        "wal_level": "replica",
    }


def _pg_ctl(cfg, *args, timeout=None, check=True):
    return command.run(
        [cfg.pg.binary("pg_ctl"), *args],
        cfg=cfg,
        as_postgres=True,
        timeout=timeout,
        check=check,
        what="pg_ctl " + args[0],
    )


def restore_test(
    cfg,
    catalog,
    *,
    label=None,
    scratch_dir=None,
    scratch_port=None,
    sentinel=True,
    restore_command=None,
    progress=_noop,
    timeout=1800,
    meter=None,
):
    entry = catalog.get(label) if label else catalog.newest()
    if entry is None:
        raise BackupError(f"no backup {'labelled ' + label if label else ''} in the catalog")
    label = entry["label"]
    scratch_dir = scratch_dir or os.path.join(cfg.spool_dir, "restore-test")
    port = scratch_port or _free_port()
    uid, gid = cfg.pg.os_ids()
    result = {"label": label, "scratch_port": port, "ok": False}
    marker = None
    started = None
    data = os.path.join(scratch_dir, "data")
    try:
        if sentinel:
            progress("restore test: writing the sentinel row on the live cluster")
            marker = write_sentinel(cfg)
            result["sentinel_segment"] = marker["segment"]
        if os.path.exists(scratch_dir):
            _stop_scratch(cfg, data)
            shutil.rmtree(scratch_dir)
        _make_reachable(scratch_dir, uid, gid)
        run_dir = os.path.join(scratch_dir, "run")
        wal_dir = os.path.join(scratch_dir, "wal")
        for path in (run_dir, wal_dir):
            os.makedirs(path, mode=0o755)
            os.chown(path, uid, gid)
        started = time.monotonic()
        restored = engine.restore(cfg, label, data, progress=progress, meter=meter)
        result["restore"] = restored
        fetch_command = restore_command or _wal_tool_restore_command(cfg, scratch_dir)
        if fetch_command:
            result["restore_command"] = "wal tool"
        else:
            target = engine.open_targets(cfg, names=[restored["location"]])[0][0]
            result["wal_files"] = _fetch_wal(cfg, target, entry, wal_dir, progress)
            for name in os.listdir(wal_dir):
                os.chown(os.path.join(wal_dir, name), uid, gid)
            fetch_command = f"cp {shlex.quote(wal_dir)}/%f %p"
            result["restore_command"] = "python prefetch"
        hba = os.path.join(scratch_dir, "pg_hba.conf")
        with open(hba, "w", encoding="utf-8") as handle:
            handle.write(f"local all all trust\nhost all {cfg.pg.user} 127.0.0.1/32 trust\n")
        os.chown(hba, uid, gid)
        conf = os.path.join(data, "postgresql.conf")
        if not os.path.exists(conf):
            open(conf, "w").close()  # noqa: SIM115 - Debian keeps it in /etc
            os.chown(conf, uid, gid)
        engine.write_recovery(
            data, cfg, fetch_command, settings=_scratch_settings(cfg, port, run_dir, hba)
        )
        progress(f"restore test: starting the scratch cluster on port {port}, replaying WAL")
        log = os.path.join(scratch_dir, "server.log")
        replay_started = time.monotonic()
        try:
            _pg_ctl(cfg, "start", "-D", data, "-w", "-t", str(timeout), "-l", log,
                    timeout=timeout + 30)  # fmt: skip
        except BackupError as err:
            raise BackupError(f"scratch cluster did not start: {err}; log: {_tail(log)}") from None
        scfg = _scratch_cfg(cfg, port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with contextlib.closing(scfg.pg.connect()) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        break
            except BackupError:
                if not os.path.exists(os.path.join(data, "postmaster.pid")):
                    raise BackupError(
                        f"scratch cluster stopped during recovery; log: {_tail(log)}"
                    ) from None
            if time.monotonic() > deadline:
                raise BackupError(f"scratch cluster still in recovery after {timeout}s")
            time.sleep(0.3)
        result["replay_seconds"] = round(time.monotonic() - replay_started, 3)
        progress("restore test: pg_amcheck --all")
        amcheck_started = time.monotonic()
        proc = command.run(
            [cfg.pg.binary("pg_amcheck"), "--all", "--install-missing", "-h", "127.0.0.1",
             "-p", port, "-U", cfg.pg.user, "--no-password"],
            check=False, timeout=timeout,
        )  # fmt: skip
        result["amcheck"] = {
            "ok": proc.returncode == 0,
            "seconds": round(time.monotonic() - amcheck_started, 3),
            "output": (proc.stdout + proc.stderr).strip().splitlines()[-10:],
        }
        if sentinel:
            with contextlib.closing(scfg.pg.connect()) as conn:
                found = conn.execute(
                    f"SELECT count(*) FROM {SENTINEL_TABLE} WHERE token = %s",
                    (marker["token"],),
                ).fetchone()[0]
            result["sentinel"] = {"ok": found == 1, "segment": marker["segment"]}
        result["rto_seconds"] = round(time.monotonic() - started, 3)
        problems = []
        if not result["amcheck"]["ok"]:
            problems.append(
                "pg_amcheck found corruption: " + " | ".join(result["amcheck"]["output"])
            )
        if sentinel and not result["sentinel"]["ok"]:
            problems.append(
                f"sentinel row written before the test (WAL segment {marker['segment']}) is "
                "missing after replay: WAL after the backup did not replay"
            )
        result["problems"] = problems
        result["ok"] = not problems
    except BackupError as err:
        result["error"] = str(err)
        result["problems"] = [str(err)]
        result["ok"] = False
    finally:
        _stop_scratch(cfg, data)
        shutil.rmtree(scratch_dir, ignore_errors=True)
        if started is not None and "rto_seconds" not in result:
            result["seconds"] = round(time.monotonic() - started, 3)
    catalog.record_verification(label, {"tier": "restore", "ok": result["ok"], "details": result})
    return result


def _scratch_cfg(cfg, port):
    import dataclasses

    return dataclasses.replace(
        cfg, pg=dataclasses.replace(cfg.pg, host="127.0.0.1", port=port, dbname=cfg.pg.dbname)
    )


def _stop_scratch(cfg, data):
    if os.path.exists(os.path.join(data, "postmaster.pid")):
        with contextlib.suppress(BackupError):
            _pg_ctl(cfg, "stop", "-D", data, "-m", "immediate", "-w", "-t", "60", timeout=90,
                    check=False)  # fmt: skip


def _make_reachable(path, uid, gid):
    missing = []
    current = os.path.abspath(path)
    while not os.path.exists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory)
        os.chmod(directory, 0o755)
    os.chown(path, uid, gid)
    os.chmod(path, 0o755)


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as handle:
            return " | ".join(handle.read().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Public names of the scratch-cluster helpers for pitr.py (point-in-time recovery reuses them).
pg_ctl = _pg_ctl
scratch_cfg = _scratch_cfg
scratch_settings = _scratch_settings
stop_scratch = _stop_scratch
make_reachable = _make_reachable
log_tail = _tail
free_port = _free_port

# ---- entry point -----------------------------------------------------------------------------


def verify(
    cfg,
    tiers=TIERS,
    *,
    label=None,
    scratch_dir=None,
    scratch_port=None,
    sentinel=True,
    progress=None,
    restore_command=None,
    meter=None,
):
    """Run the tiers; {ok, label, tiers: {name: {ok, problems, ...}}}. Each tier's outcome is
    appended to the catalog's verification history. `meter` (module_utils/progress.Progress)
    is told the restore tier's bytes restored."""
    progress = progress or _noop
    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        raise BackupError(f"unknown verification tiers {unknown}; choose from {list(TIERS)}")
    if cfg.engine != "native":
        raise BackupError("backup_verify implements the native engine's tiers only")
    catalog = Catalog(cfg)
    if label and catalog.get(label) is None:
        raise BackupError(f"no backup labelled {label!r} in the catalog")
    out = {"tiers": {}, "label": label, "at": iso(utcnow())}
    targets, failures = engine.open_targets(cfg)
    for name in tiers:
        started = time.monotonic()
        try:
            if name == "integrity":
                result = integrity(cfg, catalog, targets, label=label, progress=progress)
                for loc, error in failures.items():
                    result["problems"].append(f"location {loc} unreachable: {error}")
                    result["ok"] = False
            elif name == "freshness":
                result = freshness(cfg, catalog, targets, progress=progress)
            else:
                result = restore_test(
                    cfg,
                    catalog,
                    label=label,
                    scratch_dir=scratch_dir,
                    scratch_port=scratch_port,
                    sentinel=sentinel,
                    restore_command=restore_command,
                    progress=progress,
                    meter=meter,
                )
                out["label"] = result.get("label")
        except BackupError as err:
            result = {"ok": False, "problems": [str(err)], "error": str(err)}
        result["seconds"] = round(time.monotonic() - started, 3)
        out["tiers"][name] = result
    out["ok"] = all(t.get("ok") for t in out["tiers"].values())
    return out

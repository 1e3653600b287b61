# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive in a location: the only listing of its objects and the only continuity check.

The archiver (wal.py) writes `wal/<timeline>/<name>.<suffix>`; verification, PITR, retention and
`kg-wal status` read the archive through here. Standard library only (the WAL tool runs it).
"""

from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.codec import (
    parse_suffix,
    suffix,
)
from ansible_collections.knowngood.runbooks.plugins.module_utils._backup.common import (
    WAL_SEGMENT_RE,
    segment_from_parts,
    segment_parts,
)

WAL_PREFIX = "wal/"


def _objects(location, prefix=WAL_PREFIX):
    """(file name, key) of every object under prefix."""
    for key in location.list(prefix):
        yield key.rsplit("/", 1)[-1], key


def wal_objects(location):
    """{name: key} of every WAL segment / history file in a location."""
    out = {}
    for base, key in _objects(location):
        parsed = parse_suffix(base)
        name = base
        if parsed is not None:
            ext = "." + suffix(*parsed)
            name = base[: -len(ext)] if base.endswith(ext) else base
        out.setdefault(name, key)
    return out


def list_segments(location, timeline=None):
    """Sorted names of the full WAL segments (not .partial/.backup/.history) in a location."""
    prefix = f"wal/{timeline:08X}" if isinstance(timeline, int) else "wal"
    if isinstance(timeline, str):
        prefix = f"wal/{timeline}"
    names = set()
    for base, _key in _objects(location, prefix):
        seg = base.split(".", 1)[0]
        if WAL_SEGMENT_RE.match(seg) and parse_suffix(base) and base.count(".") in (1, 2):
            rest = base[len(seg) + 1 :]
            if rest.split(".")[0] in ("lz4", "zst", "raw"):
                names.add(seg)
    return sorted(names)


def newest_segment(location_or_names, timeline=None):
    names = (
        location_or_names
        if isinstance(location_or_names, (list, tuple, set))
        else list_segments(location_or_names, timeline)
    )
    if not names:
        return None
    return max(names, key=lambda n: (segment_parts(n)[1], segment_parts(n)[0]))


def continuity(cfg, location, start_segment, end_segment=None):
    """Every segment from start to end (default: the newest archived) must be archived.

    A segment number counts as present on the start timeline or any later one (a timeline
    switch continues the numbering). Returns {ok, gaps: [names], newest, checked}."""
    names = list_segments(location)
    start_tli, start_no = segment_parts(start_segment)
    have = {}
    for n in names:
        tli, no = segment_parts(n)
        if tli >= start_tli:
            have.setdefault(no, tli)
    newest = newest_segment([n for n in names if segment_parts(n)[0] >= start_tli])
    if end_segment is None:
        end_no = segment_parts(newest)[1] if newest else start_no
    else:
        end_no = segment_parts(end_segment)[1]
    gaps = []
    tli = start_tli
    for no in range(start_no, end_no + 1):
        if no in have:
            tli = max(tli, have[no])
        else:
            gaps.append(segment_from_parts(tli, no))
    return {
        "ok": not gaps,
        "gaps": gaps,
        "newest": newest,
        "checked": max(0, end_no - start_no + 1),
        "location": location.name,
    }


def keys_before(location, keep_from):
    """Keys of the archived segments older than keep_from (same or earlier timeline, lower
    number): what retention may delete. History files are kept."""
    keep_tli, keep_seg = segment_parts(keep_from)
    keys = []
    for base, key in _objects(location):
        name = base[:24]
        if not WAL_SEGMENT_RE.match(name) or ".history" in key:
            continue
        tli, seg = segment_parts(name)
        if tli <= keep_tli and seg < keep_seg:
            keys.append(key)
    return keys

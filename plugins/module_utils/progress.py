# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long database step (backup, restore, WAL replay), for whoever watches it.

The module side (Progress) replaces a small JSON file atomically as work is done: the phase,
done and total in bytes or WAL segments, elapsed seconds and an estimate of the time left. The
controller side (plugin_utils/progress_action.py) reads that file between async polls and
prints one line per poll with describe(). Standard library only; no file, no writes.
"""

import json
import os
import tempfile
import threading
import time

UNITS = ("bytes", "segments", "steps")


def estimate(done, total, elapsed):
    """Seconds left at the rate so far; None when it cannot be told (no total, nothing done)."""
    if not total or not done or elapsed <= 0 or done <= 0:
        return None
    if done >= total:
        return 0.0
    return (total - done) * elapsed / done


def _size(value):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


_NAMES = {"segments": "WAL segments", "steps": "steps"}


def _seconds(value):
    value = int(round(value))
    if value < 120:
        return f"{value} s"
    if value < 7200:
        return f"{value // 60} min {value % 60} s"
    return f"{value // 3600} h {value % 3600 // 60} min"


def describe(snapshot):
    """One line for the operator, e.g. 'restore 1.31 GB of 2.20 GB (59 %), 12 s elapsed,
    about 8 s left'; 'estimate unknown' when there is no total."""
    phase = snapshot.get("phase") or "working"
    unit = snapshot.get("unit") or "bytes"
    done = snapshot.get("done") or 0
    total = snapshot.get("total")
    elapsed = snapshot.get("phase_elapsed_s") or 0
    pct = f" ({min(100, int(100 * done / total))} %)" if total else ""
    if unit == "bytes":
        text = f"{phase} {_size(done)}" + (f" of {_size(total)}" if total else "") + pct
    else:
        text = f"{phase} {int(done)}" + (f" of {int(total)}" if total else "")
        text += f" {_NAMES.get(unit, unit)}{pct}"
    text += f", {_seconds(elapsed)} elapsed"
    eta = snapshot.get("eta_s")
    if snapshot.get("finished"):
        text += ", done"
    elif total and done >= total:
        text += ", finishing"
    elif eta is None:
        text += ", estimate unknown"
    else:
        text += f", about {_seconds(eta)} left"
    return text


class Progress:
    """Reports one step's phases to `path` (None: reports nowhere, costs nothing).

    Thread safe: worker threads call advance(). The file is replaced at most every
    `min_interval` seconds, and at every phase change and finish.
    """

    def __init__(self, path, min_interval=0.2, clock=time.monotonic):
        self.path = path
        self.min_interval = min_interval
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
        self.phases = []  # finished phases, summarised
        self.current = None
        self.last_write = None

    def phase(self, name, total=None, unit="bytes"):
        """Start phase `name` (finishing the one before) with `total` units to do, if known."""
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        with self.lock:
            self._close_current()
            self.current = {
                "phase": name,
                "unit": unit,
                "done": 0,
                "total": total,
                "phase_started": self.clock(),
            }
            self._write(force=True)

    def set_total(self, total):
        with self.lock:
            if self.current is not None:
                self.current["total"] = total
                self._write(force=True)

    def advance(self, amount):
        """amount more units done in the current phase."""
        with self.lock:
            if self.current is not None:
                self.current["done"] += amount
                self._write()

    def update(self, done):
        """done units so far in the current phase (never goes back)."""
        with self.lock:
            if self.current is not None and done > self.current["done"]:
                self.current["done"] = done
                self._write()

    def finish(self):
        """The current phase is complete: what was done is its total (100 %); an estimated
        total (a base backup's database sizes) gives way to the real amount."""
        with self.lock:
            self._close_current()
            self._write(force=True)

    def snapshot(self):
        with self.lock:
            return self._snapshot()

    def _close_current(self):
        if self.current is None:
            return
        cur = self.current
        cur["total"] = cur["done"]
        self.phases.append(self._phase_view(cur, finished=True))
        self.current = None

    def _phase_view(self, cur, finished=False):
        elapsed = self.clock() - cur["phase_started"]
        view = {
            "phase": cur["phase"],
            "unit": cur["unit"],
            "done": cur["done"],
            "total": cur["total"],
            "phase_elapsed_s": round(elapsed, 3),
            "eta_s": 0.0 if finished else estimate(cur["done"], cur["total"], elapsed),
            "finished": finished,
        }
        if view["eta_s"] is not None:
            view["eta_s"] = round(view["eta_s"], 1)
        return view

    def _snapshot(self):
        now = self.clock()
        if self.current is not None:
            view = self._phase_view(self.current)
        elif self.phases:
            view = dict(self.phases[-1])
        else:
            view = {"phase": None, "unit": "bytes", "done": 0, "total": None, "eta_s": None}
        view["elapsed_s"] = round(now - self.started, 3)
        view["phases"] = list(self.phases)
        view["pid"] = os.getpid()
        return view

    def _write(self, force=False):
        if not self.path:
            return
        now = self.clock()
        if not force and self.last_write is not None and now - self.last_write < self.min_interval:
            return
        self.last_write = now
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kg-progress.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._snapshot(), handle, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            # progress is for the watcher; it never fails the step
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)


def from_params(params):
    """The Progress a module reports to: its progress_file option, else nowhere."""
    path = params.get("progress_file")
    return Progress(path) if path else Progress(None)

# Copyright: knowngood contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP probes and the one latency judge every runbook's verdict goes through.

A latency is judged against a baseline measured the same way on the same machine (the
service before the change, or the release it replaced probed in the same rounds), never
against an absolute number: on a shared machine an absolute budget measures the machine.
The operator's SLO stays available as a cap, off unless set.
"""

import collections
import json
import os
import threading
import time

from ansible.module_utils.six.moves.urllib.error import HTTPError
from ansible.module_utils.urls import Request, make_context

# Strategy section 2.1: "performance degradation > 30%".
TOLERANCE = 0.30
# A rise smaller than this is noise, whatever the percentage says (3 ms -> 5 ms); the rollback
# decision's min_latency_delta_ms has the same default, and runbooks take it from there.
MIN_DELTA_MS = 20.0
# A baseline that failed more than this share of its requests measured an outage.
BASELINE_MAX_ERROR_RATIO = 0.5
BODY_LIMIT = 65536

Answer = collections.namedtuple("Answer", "status ms body headers")


def raise_priority():
    """Best effort: a probe waiting for a CPU would count the wait as the service's latency.

    On Linux the nice value is per thread, so this is called before the workers start and
    they inherit it. Only root may raise it; elsewhere the probe runs as it is."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > -10:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    except (AttributeError, OSError):
        pass


def fetch(url, timeout, context):
    """One GET: an Answer whose status is None when nothing answered."""
    started = time.monotonic()
    try:
        # A fresh Request per call keeps the probes independent (no shared cookie jar); the
        # TLS context comes ready-made because building one takes longer than a request.
        response = Request(use_netrc=False, context=context).open("GET", url, timeout=timeout)
        status, body, headers = response.getcode(), response.read(BODY_LIMIT), response.headers
    except HTTPError as exc:
        status, body, headers = exc.code, exc.read(BODY_LIMIT), exc.headers or {}
    except Exception:  # a probe that breaks counts as a failed request, never as none
        return Answer(None, (time.monotonic() - started) * 1000.0, b"", {})
    return Answer(status, (time.monotonic() - started) * 1000.0, body or b"", headers or {})


def probe(urls, total, concurrency=4, timeout=5.0):
    """`total` GETs of each URL from `concurrency` threads; one list of Answers per URL.

    With several URLs the requests alternate between them, so each URL is measured over the
    same moments of the machine: a target and its baseline probed this way differ only by
    what they serve."""
    raise_priority()
    context = make_context()
    jobs = collections.deque(index for _round in range(total) for index in range(len(urls)))
    answers = [[] for _url in urls]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                index = jobs.popleft()
            answer = fetch(urls[index], timeout, context)
            with lock:
                answers[index].append(answer)

    threads = [threading.Thread(target=worker) for _index in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def release_of(answer):
    """The release an answer names (X-Release header or JSON key `release`), or None."""
    release = answer.headers.get("X-Release")
    if release is None:
        try:
            release = json.loads(answer.body).get("release")
        except (ValueError, AttributeError, TypeError):
            release = None
    return release


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))], 1)


def measure(latencies, errors):
    """The numbers a judge and a later baseline need, from one probe."""
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
    }


def usable_baseline(baseline):
    """Why a baseline cannot be judged against (None when it can)."""
    if not baseline or baseline.get("p95_ms") is None or not baseline.get("requests"):
        return "none was measured"
    ratio = float(baseline.get("errors") or 0) / baseline["requests"]
    if ratio > BASELINE_MAX_ERROR_RATIO:
        return "it failed %d of %d requests (an outage)" % (
            baseline["errors"],
            baseline["requests"],
        )
    return None


def judge(
    p95_ms,
    baseline=None,
    label="the baseline",
    tolerance=TOLERANCE,
    min_delta_ms=MIN_DELTA_MS,
    cap_ms=0,
):
    """Latency verdict: {held, judged, p95_ms, baseline_p95_ms, limit_ms, cap_ms, detail}.

    Fails a p95 more than `tolerance` above the baseline's and also more than the larger of
    `min_delta_ms` and the baseline's own spread (p95 - p50) above it: a rise inside the
    noise the baseline itself showed is not a regression. With no usable baseline the
    latency is not judged ("no baseline"); errors and content still are, by the caller. A
    cap (the operator's SLO, 0 = off) fails on its own."""
    verdict = {
        "held": True,
        "judged": "no baseline",
        "p95_ms": p95_ms,
        "baseline_p95_ms": None,
        "limit_ms": None,
        "cap_ms": float(cap_ms) if cap_ms else None,
        "baseline": label,
    }
    reasons = []
    if p95_ms is None:
        verdict["detail"] = "no answers to judge"
        return verdict
    if cap_ms and p95_ms > float(cap_ms):
        verdict["held"] = False
        reasons.append("p95 %.1f ms > cap %.1f ms (the SLO)" % (p95_ms, float(cap_ms)))
    why_not = usable_baseline(baseline)
    if why_not:
        reasons.append(
            "p95 %.1f ms; latency not judged: no baseline (%s, %s)" % (p95_ms, label, why_not)
        )
        verdict["detail"] = "; ".join(reasons)
        return verdict
    base = float(baseline["p95_ms"])
    spread = max(0.0, base - float(baseline.get("p50_ms") or base))
    delta = max(float(min_delta_ms), spread)
    limit = max(base * (1.0 + tolerance), base + delta)
    rise = (p95_ms - base) / base * 100.0 if base > 0 else 0.0
    verdict.update(judged="baseline", baseline_p95_ms=base, limit_ms=round(limit, 1))
    within = p95_ms <= limit
    verdict["held"] = verdict["held"] and within
    reasons.append(
        "p95 %.1f ms %s %s %.1f ms (%+.0f%%; tolerance %.0f%% or %.0f ms, limit %.1f ms)"
        % (
            p95_ms,
            "vs" if within else "exceeds",
            label,
            base,
            rise,
            tolerance * 100.0,
            delta,
            limit,
        )
    )
    verdict["detail"] = "; ".join(reasons)
    return verdict


def latency_only(breaches, verdict):
    """Whether `verdict` (judge's) is the only breach: the one a second probe may clear."""
    return breaches == [verdict["detail"]]


# A breach that one probe saw is confirmed by the majority of this many later probes.
CONFIRM_ROUNDS = 3
# Pause between them, so one stall of a busy machine cannot land in two of them.
CONFIRM_PAUSE_S = 0.3


def confirmed(probe_once, requests, confirm=True, rounds=CONFIRM_ROUNDS, pause=CONFIRM_PAUSE_S):
    """One probe, and a majority of `rounds` later ones when latency alone failed the first.

    `probe_once(requests)` returns (outcome, breaches, latency verdict). One slow moment on a
    busy machine is not a regression: a stall of a second makes every request in flight slow
    together, and four concurrent ones are the whole 5 % tail of an 80-request probe. So when
    the latency verdict is the only breach and `confirm` is set, up to `rounds` more probes
    follow, `pause` seconds apart, and the latency breach holds only when most of them see it
    (a real regression is seen by every one). A later probe with any other breach (errors,
    a wrong release) decides at once. Returns (outcome, breaches, verdict, first) of the probe
    that decides, whose verdict lists every later probe's detail under `confirmations`;
    `first` is the first probe's latency verdict when there were later ones, else None."""
    outcome, breaches, verdict = probe_once(requests)
    if not (confirm and latency_only(breaches, verdict)):
        return outcome, breaches, verdict, None
    first = verdict
    need = rounds // 2 + 1
    held = slow = 0
    seen = []
    while held < need and slow < need:
        time.sleep(pause)
        outcome, breaches, verdict = probe_once(requests)
        seen.append(
            ("held: " if not breaches else "breached: ")
            + "; ".join(breaches or [verdict["detail"]])
        )
        if not breaches:
            held += 1
        elif latency_only(breaches, verdict):
            slow += 1
        else:
            break
    verdict["confirmations"] = seen
    return outcome, breaches, verdict, first

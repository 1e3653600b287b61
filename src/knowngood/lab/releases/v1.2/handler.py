"""Release v1.2: v1.1 with a slower orders page (150 ms more, no errors).

No errors, and the lab sets no absolute latency cap: only the comparison with the release it
replaces (the deploy gate's rollback_decision, a rollback's probe) catches it."""

import time


def handle(ctx):
    if ctx["path"] == "/health":
        return 200, {"status": "ok"}
    if ctx["path"] == "/db":
        (count,) = ctx["db"]("SELECT count(*) FROM orders")[0]
        return 200, {"orders": count}
    time.sleep(0.15)
    return 200, {"page": "orders", "checkout": "classic", "paging": True}

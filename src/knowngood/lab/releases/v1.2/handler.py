"""Release v1.2: v1.1 with a slower orders page (150 ms more, no errors).

Inside the lab's absolute p95 limit (400 ms, loose because the lab shares two cores): only the
comparison with the release it replaces (the deploy gate's rollback_decision) catches it."""

import time


def handle(ctx):
    if ctx["path"] == "/health":
        return 200, {"status": "ok"}
    if ctx["path"] == "/db":
        (count,) = ctx["db"]("SELECT count(*) FROM orders")[0]
        return 200, {"orders": count}
    time.sleep(0.15)
    return 200, {"page": "orders", "checkout": "classic", "paging": True}

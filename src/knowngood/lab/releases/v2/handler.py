"""Release v2: adds order notes, and a regression that slows and breaks the orders page."""

import random
import time


def handle(ctx):
    if ctx["path"] == "/health":
        return 200, {"status": "ok"}  # the process is up; the regression is in the page
    if ctx["path"] == "/db":
        (count,) = ctx["db"]("SELECT count(*) FROM orders WHERE note IS NOT NULL OR true")[0]
        return 200, {"orders": count}
    time.sleep(0.12)
    if random.random() < 0.4:
        return 500, {"error": "order note lookup failed"}
    return 200, {"page": "orders", "notes": True}

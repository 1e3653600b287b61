"""Release v1.1: v1 plus paging."""


def handle(ctx):
    if ctx["path"] == "/health":
        return 200, {"status": "ok"}
    if ctx["path"] == "/db":
        (count,) = ctx["db"]("SELECT count(*) FROM orders")[0]
        return 200, {"orders": count}
    if ctx["flags"].get("new_checkout"):
        # The risky path behind the flag: fails one request in three.
        import random

        if random.random() < 0.34:
            return 500, {"error": "new checkout path failed"}
        return 200, {"page": "orders", "checkout": "new"}
    return 200, {"page": "orders", "checkout": "classic", "paging": True}

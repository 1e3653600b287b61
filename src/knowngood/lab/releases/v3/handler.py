"""Release v3: orders carry a currency; the migration drops data, so it has no way down."""


def handle(ctx):
    if ctx["path"] == "/health":
        return 200, {"status": "ok"}
    if ctx["path"] == "/db":
        (count,) = ctx["db"]("SELECT count(*) FROM orders")[0]
        return 200, {"orders": count}
    return 200, {"page": "orders", "currency": True}

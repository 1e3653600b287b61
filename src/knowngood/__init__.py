"""knowngood: rollback runbooks you can trust, and the CLI that runs them."""

"""The mutation gate: `make mutate` (see __main__.py)."""

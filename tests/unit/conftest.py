"""Hypothesis without its per-example deadline: a deadline is a wall-time assertion, and the suite
asserts behaviour, not speed (a loaded 2-core CI machine would fail examples that are correct)."""

from hypothesis import settings

settings.register_profile("behaviour-not-speed", deadline=None)
settings.load_profile("behaviour-not-speed")

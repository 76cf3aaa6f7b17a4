"""A hang guard for tests of operations that must fail rather than block."""
from __future__ import annotations

import threading


def error_of(operation, guard_s: float = 30.0) -> BaseException | None:
    """What `operation()` raised (None if it returned), run in a thread; a hang guard
    fails the test if it has not ended after `guard_s` (generous: no timing claim)."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            operation()
        except BaseException as e:
            outcome.append(e)
        else:
            outcome.append(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(guard_s)
    assert not t.is_alive(), f"{getattr(operation, '__name__', operation)} still running after {guard_s} s: a hang"
    return outcome[0]

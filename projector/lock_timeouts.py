"""PostgreSQL ``lock_timeout`` for the projector's statements that must give way rather than queue.

Retention's partition DDL and the outbox's fast path both bound how long they wait for a lock and
treat the timeout as "try again later". ``set_local`` bounds the rest of the current transaction,
``for_session`` the statements run inside it outside any transaction (``DETACH … CONCURRENTLY``
cannot run in one), and ``is_lock_timeout`` recognises the error either raises.
"""

from __future__ import annotations

from contextlib import contextmanager


def set_local(cursor, milliseconds: int) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = {int(milliseconds)}")


@contextmanager
def for_session(cursor, milliseconds: int):
    cursor.execute(f"SET lock_timeout = {int(milliseconds)}")
    try:
        yield
    finally:
        cursor.execute("RESET lock_timeout")


def is_lock_timeout(exc: BaseException) -> bool:
    """True for the error ``lock_timeout`` raises (SQLSTATE 55P03, lock_not_available), as Django
    wraps it (the driver's error is the cause)."""
    return getattr(getattr(exc, "__cause__", None), "sqlstate", None) == "55P03"

"""The consumer's errors (the tree is listed in `consumer/__init__.py`), the one place that maps
the database driver's failures onto them, and the backoff used to retry the retriable ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc


class ConsumerError(Exception):
    """Base of the consumer's errors. `retriable` says whether trying again can help."""

    retriable: bool = False


class BadMessage(ConsumerError):
    """A Kafka message that can never be ingested: dead-lettered with its reason, then committed
    past."""

    retriable = False


class LedgerUnavailable(ConsumerError):
    """The database cannot be reached or is busy: back off and retry, commit no offsets."""

    retriable = True


class DeadLetterUnavailable(ConsumerError):
    """The dead-letter topic refused a message: retry the batch, commit no offsets."""

    retriable = True


class BadBatch(ConsumerError):
    """The database refused a batch's data (a constraint or type error that validation missed):
    ingest its messages in halves, down to the bad ones."""

    retriable = False


class LeaseLost(ConsumerError):
    """Another learner extended the reward chain (or took the lease): this learner's model is
    stale. Drop it, take the lease again and catch up from the newest snapshot."""

    retriable = True


@contextmanager
def ledger_errors() -> Iterator[None]:
    """Turn the driver's connectivity failures (and SQLite's "database is locked") into
    `LedgerUnavailable`, so that callers branch on `retriable`, not on SQLAlchemy's exceptions."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        raise LedgerUnavailable(f"ledger unavailable: {_first_line(exc)}") from exc
    except sa_exc.DisconnectionError as exc:
        raise LedgerUnavailable(f"ledger connection lost: {_first_line(exc)}") from exc


class Backoff:
    """Exponential delays for retrying retriable errors: `first_s`, doubled up to `cap_s`."""

    def __init__(self, cap_s: float, first_s: float = 0.1) -> None:
        self._cap, self._first, self._next = cap_s, first_s, first_s

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

"""A daemon thread that runs one step every few seconds until closed: the catalog refresh and the
model reloader. A failed step is logged and the previous state kept; the next step tries again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


class Periodic:
    """Calls `step()` every `interval_s` seconds on its own thread, from `start()` to `close()`.

    `keeping()` says what is served meanwhile when a step fails (for the log line). Database and
    file errors are expected (a warning); anything else is logged with its traceback.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        step: Callable[[], object],
        keeping: Callable[[], str],
    ) -> None:
        self.interval_s = interval_s
        self._step = step
        self._keeping = keeping
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("%s failed (%s); %s", self._thread.name, exc, self._keeping())
            except Exception:
                log.exception("%s failed; %s", self._thread.name, self._keeping())
            self._stop.wait(self.interval_s)

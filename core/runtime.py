"""Process-wide settings of the long-running services (the consumer, the API's workers).

    tune_gc()      # once start-up has loaded what the process keeps

CPython's cyclic garbage collector runs a young collection every 700 net allocations and a
full one every 100 of those, and a full one walks every tracked object of the process: the
modules, SQLAlchemy's metadata, the catalog, the learner's caches. The consumer allocates a
few objects per row it reads or writes, so at its default thresholds the collector took about
a third of the closer's time (`bench/learn.py`: 9.6k vs 13.8k decisions/s closing a 50,000-
decision backlog on PostgreSQL). Almost nothing these processes allocate forms cycles: their
garbage is freed by reference counting as it goes, and the collector only has to catch the rare
cycle, which a higher threshold still does.
"""

from __future__ import annotations

import gc

#: Net allocations between young collections, and young (then middle) collections between
#: older ones. CPython's defaults: (700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Collect once, move every object alive now out of the collector's sight for good
    (`gc.freeze`: start-up state is never garbage), and collect less often from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


__all__ = ["GC_THRESHOLDS", "tune_gc"]

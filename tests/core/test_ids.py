"""`core.ids.new_id`: UUIDv7 hex, its random bits from a pool."""

from __future__ import annotations

import os
import time
import uuid

from core.ids import new_id


def test_ids_are_uuid7_hex_and_distinct_across_pool_refills() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(15_000)]  # more than two pools of 6,554
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for value in ids[:50] + ids[-50:]:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before_ms <= int(value[:12], 16) <= after_ms  # the Unix time in milliseconds


def test_ids_minted_later_sort_later() -> None:
    first = new_id()
    time.sleep(0.002)  # a later millisecond
    later = [new_id() for _ in range(100)]
    assert all(first < value for value in later)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the parent's pool holds unused bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the test session's code
        os.write(write, "".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        child = fh.read()
    parent = [new_id() for _ in range(100)]
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    assert len(child_ids) == 100
    assert not child_ids & set(parent)

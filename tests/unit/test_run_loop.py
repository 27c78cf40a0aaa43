"""run_loop settles the heap before the relay starts: what startup made is frozen out of the
cyclic collector's scans, and garbage made while running is still collected."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from relay.daemon import GC_YOUNG_THRESHOLD, run_loop


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    """A cycle-capable object that weakrefs can watch."""

    def __init__(self) -> None:
        self.me = self


def test_startup_objects_are_frozen_and_later_cycles_still_collected(restored_gc: None) -> None:
    startup = Node()

    async def main() -> tuple[bool, bool, tuple[int, int, int]]:
        frozen = gc.get_freeze_count() > 0 and not any(o is startup for o in gc.get_objects())
        later = Node()
        watch = weakref.ref(later)
        del later  # a cycle: only the collector frees it
        gc.collect()
        return frozen, watch() is None, gc.get_threshold()

    frozen, collected, threshold = run_loop(main())
    assert frozen, "an object made before run_loop is still scanned by every full collection"
    assert collected, "a cycle made while running was not collected"
    assert threshold[0] == GC_YOUNG_THRESHOLD


def test_what_a_run_froze_is_collected_once_dropped_after_it(restored_gc: None) -> None:
    """A process that runs the loop more than once (the benchmarks, one run per scenario):
    an object alive during one run and dropped in a cycle after it is still collected."""

    async def main() -> None:
        return None

    holder = {"x": Node()}
    watch = weakref.ref(holder["x"])
    threshold = gc.get_threshold()
    run_loop(main())
    holder.clear()  # now cyclic garbage
    gc.collect()
    assert watch() is None, "frozen cyclic garbage is never collected: it leaks once per run"
    assert gc.get_threshold() == threshold

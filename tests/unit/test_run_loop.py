"""run_loop settles the heap before the relay starts: what startup made is frozen out of the
cyclic collector's scans, and garbage made while running is still collected."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from relay.service import GC_YOUNG_THRESHOLD, run_loop


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

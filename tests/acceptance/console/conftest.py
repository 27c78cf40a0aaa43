"""The browser the console's acceptance tests drive."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import chromium


@pytest.fixture
def browser() -> Iterator[Any]:
    yield from chromium()

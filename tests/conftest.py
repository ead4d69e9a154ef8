"""Shared pytest configuration: fixtures live in small plugin modules, one per server family."""

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures_emulators",
    "tests.fixtures_gke",
    "tests.fixtures_kube",
    "tests.fixtures_stack",
]


def pytest_collection_modifyitems(config, items):
    """Mark every test that reaches Google's emulators (directly or through a stack) `emulator`,
    so `make unit` (`-m "not emulator and not e2e"`) is exactly the tests that start neither."""
    for item in items:
        if "emulators" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulator)


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Each test gets the process environment back as it found it. In-process CLI calls with
    `--sandbox ENV_FILE` load a stack's variables into `os.environ` (as the command does for a
    user's shell), and a later test in the same worker must not inherit them (a demo started from
    that worker read another stack's collection prefix). Fixtures of a wider scope set up before
    the test are part of what is kept."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


"""Shared pytest configuration: fixtures live in small plugin modules, one per server family."""

pytest_plugins = [
    "tests.fixtures_emulators",
    "tests.fixtures_gke",
    "tests.fixtures_kube",
    "tests.fixtures_stack",
]


def pytest_collection_modifyitems(config, items):
    """Mark every test that reaches Google's emulators (directly or through a stack) `emulator`,
    so `make unit` (`-m "not emulator and not e2e"`) is exactly the tests that start neither."""
    import pytest

    for item in items:
        if "emulators" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulator)

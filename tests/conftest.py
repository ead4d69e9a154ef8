"""Shared pytest configuration: fixtures live in small plugin modules, one per server family."""

pytest_plugins = [
    "tests.fixtures_emulators",
    "tests.fixtures_gke",
    "tests.fixtures_kube",
    "tests.fixtures_stack",
]

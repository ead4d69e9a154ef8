"""Fixtures for the emulators servers (filled in by its issue)."""

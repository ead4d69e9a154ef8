"""Fixtures for the gke servers (filled in by its issue)."""

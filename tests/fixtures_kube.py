"""Fixtures for the kube servers (filled in by its issue)."""

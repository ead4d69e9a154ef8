"""A sandbox Kubernetes API server (HTTPS, token auth, discovery, server-side apply, a simulated cluster).

Import `KubeApiServer` from here; see docs/SANDBOX_KUBE.md for what it simulates and its limits.
"""

from sandbox.kube.server import KubeApiServer

__all__ = ["KubeApiServer"]

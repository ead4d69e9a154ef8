"""`shared` is the deployed controller: the pure core, the ports, the adapters behind them and the
flows that the Cloud Functions of `functions/main.py` run (with main.py, all that `make package` ships).

Modules are small and named after one concept each; heavy Google and Kubernetes SDKs are
imported lazily inside the adapters (`gke`, `kube`, `store`) so that a function's cold start
pays only for what the event it handles needs.
"""

__version__ = "0.1.0"

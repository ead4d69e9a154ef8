"""multus-provisioner: the controller library deployed with the Cloud Functions.

Modules are small and named after one concept each; heavy Google and Kubernetes SDKs are
imported lazily inside the adapters (`gke`, `kube`, `store`) so that a function's cold start
pays only for what the event it handles needs.
"""

__version__ = "0.1.0"

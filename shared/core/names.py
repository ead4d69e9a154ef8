"""The naming rules of Kubernetes and Compute Engine, each written once.

Every string that reaches a cluster or an API is checked against one of these: namespaces and
NAD names (DNS-1123 labels), object names (DNS-1123 subdomains), label keys and values, and
Compute Engine resource names and paths (RFC 1035, as Compute Engine documents them).
"""

from __future__ import annotations

import re

# Kubernetes: namespaces and most names are DNS-1123 labels; other object names are subdomains.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Compute Engine: resource names (RFC 1035 labels) and the paths of networks and subnetworks.
GCE_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
NETWORK_PATH = re.compile(r"^projects/[a-z][-a-z0-9.:]{0,90}/global/networks/[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
SUBNET_PATH = re.compile(r"^projects/(?P<p>[a-z][-a-z0-9.:]{0,90})/regions/(?P<r>[a-z]+-[a-z]+[0-9]+)"
                         r"/subnetworks/(?P<s>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)$")
MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+){1,4}$")
_COMPUTE_PREFIXES = ("https://www.googleapis.com/compute/v1/", "https://compute.googleapis.com/compute/v1/",
                     "//compute.googleapis.com/")


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and bool(DNS_LABEL.fullmatch(value))


def is_object_name(value: object) -> bool:
    return isinstance(value, str) and bool(DNS_SUBDOMAIN.fullmatch(value))


def compute_ref(value: str) -> str:
    """A Compute Engine reference without its URL prefix (`projects/P/regions/R/subnetworks/S`)."""
    for prefix in _COMPUTE_PREFIXES:
        if value.startswith(prefix):
            return value[len(prefix):]
    return value

"""The Multus + Whereabouts install bundle: the seed's manifest, ordered, versioned, overridable.

The objects live as YAML under `shared/manifests/` (one file per object, apply order = file name
order) so that a reviewer can diff them against the procedure's manifest. This module reads them
once per process (the functions build a bundle on every install, and a cold start should parse
YAML at most once), applies the few options an operator may change (images, Multus log level)
on a deep copy, and stamps the result with a content hash. The hash is the bundle *version*:
equal content gives an equal version on every machine, any change gives a new one, which is how
the controller tells an up-to-date cluster from a drifted or outdated one.

Regenerate the golden files used by the tests with `python -m shared.core.multus --write-golden`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from shared.core.errors import Problem, Rejected

# The images of the seed manifest, pinned by digest (GKE-validated Multus v4.2.1).
DEFAULT_MULTUS_IMAGE = (
    "gcr.io/gke-release/multus-cni:v4.2.1-gke.6"
    "@sha256:25b48b8dbbf6c78a10452836f52dee456514783565b70633a168a39e6d322310"
)
DEFAULT_WHEREABOUTS_IMAGE = (
    "gcr.io/gke-release/whereabouts:v0.7.0-gke.3"
    "@sha256:2bb8450a99d86c73b262f5ccd8c433d3e3abf17d36ee5c3bf1056a1fe479e8c2"
)
DEFAULT_LOG_LEVEL = "verbose"
# The levels Multus understands (pkg/logging): anything else is silently treated as a default.
LOG_LEVELS = ("debug", "verbose", "error", "panic")

MULTUS_CONFIGMAP = ("kube-system", "multus-cni-config")
MULTUS_CONF_KEY = "cni-conf.json"
LOG_LEVEL_ARG = "--multus-log-level="

# Apply order by kind: definitions before anything that may name them, the workload last.
KIND_ORDER = {
    "CustomResourceDefinition": 0,
    "ConfigMap": 1,
    "ClusterRole": 2,
    "ClusterRoleBinding": 3,
    "ServiceAccount": 4,
    "DaemonSet": 5,
}

# Distribution reference grammar (github.com/distribution/reference), without IPv6 hosts.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?)"
_IMAGE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[^@]*))?$"
)
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_IMAGE = 512


@dataclass(frozen=True)
class Bundle:
    """The objects to apply, in order, with the version that identifies their content.

    `objects` belong to this instance (deep copies of the cached manifests): callers may
    mutate them, but then `version` no longer describes them; build a new bundle instead.
    """

    objects: tuple[dict[str, Any], ...]
    version: str
    multus_image: str
    whereabouts_image: str
    log_level: str = DEFAULT_LOG_LEVEL

    @property
    def crd_names(self) -> tuple[str, ...]:
        return tuple(o["metadata"]["name"] for o in self.objects if o["kind"] == "CustomResourceDefinition")

    @property
    def daemonset(self) -> tuple[str, str]:
        """(namespace, name) of the DaemonSet whose rollout says the install is done."""
        for o in self.objects:
            if o["kind"] == "DaemonSet":
                return o["metadata"]["namespace"], o["metadata"]["name"]
        raise LookupError("the bundle has no DaemonSet")  # impossible for a bundle from load_bundle

    def crd_schema(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The `openAPIV3Schema` of CRD `name` (e.g. `network-attachment-definitions.k8s.cni.cncf.io`).

        Lets callers check a custom object (a rendered NAD, an IPPool) against the very schema
        the cluster will enforce. `version` defaults to the storage version.
        """
        for o in self.objects:
            if o["kind"] == "CustomResourceDefinition" and o["metadata"]["name"] == name:
                for v in o["spec"]["versions"]:
                    if (version is None and v.get("storage")) or v["name"] == version:
                        return copy.deepcopy(v["schema"]["openAPIV3Schema"])
                raise LookupError(f"CRD {name} has no version {version!r}")
        raise LookupError(f"the bundle has no CRD named {name!r}")

    def to_yaml(self) -> str:
        """A multi-document YAML stream, as `kubectl apply -f -` takes it."""
        import yaml

        return yaml.dump_all(
            list(self.objects), Dumper=_dumper(), explicit_start=True, sort_keys=False,
            default_flow_style=False, allow_unicode=True, width=1 << 16,
        )

    def to_list(self) -> dict[str, Any]:
        """A `v1` List holding (copies of) the objects, the JSON form kubectl also accepts."""
        items = copy.deepcopy(list(self.objects))
        return {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}

    def to_json(self) -> str:
        """`to_list()` as indented JSON text (what `render-bundle --output json` prints)."""
        return json.dumps(self.to_list(), indent=2, ensure_ascii=False) + "\n"


def object_key(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace or "", name): the identity of an object for drift checks."""
    if not isinstance(obj, dict):
        raise Rejected("invalid object", [Problem("object", f"expected a mapping, got {type(obj).__name__}")])
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    values = (obj.get("apiVersion"), obj.get("kind"), meta.get("namespace") or "", meta.get("name"))
    fields = ("apiVersion", "kind", "metadata.namespace", "metadata.name")
    problems = [Problem(f, "missing or not a string")
                for f, v in zip(fields, values, strict=True)
                if not isinstance(v, str) or (not v and f != "metadata.namespace")]
    if problems:
        raise Rejected("invalid object", problems)
    return values  # type: ignore[return-value]


def version_of(objects: Sequence[dict[str, Any]]) -> str:
    """A short content hash of the canonical JSON of `objects` (order matters: it is apply order)."""
    canonical = json.dumps(list(objects), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def check_image(value: object, *, field: str, allow_unpinned: bool = False) -> list[Problem]:
    """Problems with an image reference: syntax, and a sha256 digest unless unpinned is allowed."""
    if not isinstance(value, str):
        return [Problem(field, f"expected an image reference string, got {type(value).__name__}")]
    if not value or len(value) > _MAX_IMAGE:
        return [Problem(field, f"an image reference has 1..{_MAX_IMAGE} characters")]
    m = _IMAGE.fullmatch(value)
    if not m:
        return [Problem(field, f"{value[:200]!r} is not an image reference like "
                               "registry/repo[:tag]@sha256:<64 hex digits>")]
    digest = m["digest"]
    if digest is not None and not _SHA256.fullmatch(digest):
        return [Problem(field, f"digest {digest[:100]!r} must be sha256: followed by "
                               "64 lowercase hex digits")]
    if digest is None and not allow_unpinned:
        return [Problem(field, f"{value!r} is not pinned: append @sha256:<digest> "
                               "(or allow unpinned images explicitly)")]
    return []


# The seed's registry: GKE's own release images (the bundle's defaults). A policy may ship an image
# only from here or from a registry configured at deploy time (`MULTUS_PROVISIONER_ALLOWED_REGISTRIES`,
# Terraform's `allowed_image_registries`), never from one named in Firestore: whoever can write
# `config/policy` must not be able to run code of their choosing as a privileged DaemonSet.
SEED_REGISTRY = "gcr.io/gke-release"
_REGISTRY = re.compile(rf"^{_DOMAIN}(?:/{_COMPONENT})*$")


def registry_syntax_problem(value: object) -> str | None:
    """Why `value` is not a registry prefix like `us-docker.pkg.dev/my-project/mirror`, or None."""
    if not isinstance(value, str) or not value or len(value) > 255 or not _REGISTRY.fullmatch(value):
        return f"{str(value)[:100]!r} is not a registry prefix like host[:port][/path]"
    host = value.split("/", 1)[0]
    if "." not in host and ":" not in host and host != "localhost":
        return f"{value!r}: the first part must be a registry host (it has no dot), not a Docker Hub user"
    return None


def registry_problem(image: str, allowed: Iterable[str] = ()) -> str | None:
    """Why `image` may not be shipped (the registry allowlist), or None: it must come from the
    seed's registry or one of `allowed`, compared as whole path segments (`gcr.io/gke-release-x/`
    is not `gcr.io/gke-release/`)."""
    registries = (SEED_REGISTRY, *[r for r in allowed if r != SEED_REGISTRY])
    name = image.split("@", 1)[0]
    if any(name.startswith(r.rstrip("/") + "/") for r in registries):
        return None
    return (f"{image[:200]!r} is not from an allowed registry ({', '.join(registries)}); "
            "add a registry at deploy time (MULTUS_PROVISIONER_ALLOWED_REGISTRIES), not in config/policy")


def check_log_level(value: object, *, field: str = "log_level") -> tuple[str | None, list[Problem]]:
    """The normalised Multus log level, or the problem with it."""
    if not isinstance(value, str) or value.strip().lower() not in LOG_LEVELS:
        choices = ", ".join(LOG_LEVELS)
        return None, [Problem(field, f"{value!r} is not a Multus log level; use one of {choices}")]
    return value.strip().lower(), []


def load_bundle(*, multus_image: str | None = None, whereabouts_image: str | None = None,
                allow_unpinned: bool = False, log_level: str | None = None) -> Bundle:
    """The bundle to install, with the operator's options applied.

    Raises `Rejected` naming every bad option (`multus_image`, `whereabouts_image`, `log_level`).
    """
    problems: list[Problem] = []
    for name, value in (("multus_image", multus_image), ("whereabouts_image", whereabouts_image)):
        if value is not None:
            problems += check_image(value, field=name, allow_unpinned=allow_unpinned)
    level = DEFAULT_LOG_LEVEL
    if log_level is not None:
        normalised, more = check_log_level(log_level)
        problems += more
        level = normalised or level
    if problems:
        raise Rejected("invalid bundle option", problems)

    objects = copy.deepcopy(_manifests())
    images = {DEFAULT_MULTUS_IMAGE: multus_image or DEFAULT_MULTUS_IMAGE,
              DEFAULT_WHEREABOUTS_IMAGE: whereabouts_image or DEFAULT_WHEREABOUTS_IMAGE}
    for obj in objects:
        if obj["kind"] == "DaemonSet":
            _set_images(obj, images)
            _set_log_level_arg(obj, level)
        elif obj["kind"] == "ConfigMap" and _ns_name(obj) == MULTUS_CONFIGMAP:
            _set_conf_log_level(obj, level)
    return Bundle(objects=objects, version=version_of(objects),
                  multus_image=images[DEFAULT_MULTUS_IMAGE],
                  whereabouts_image=images[DEFAULT_WHEREABOUTS_IMAGE], log_level=level)


def _ns_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@lru_cache(maxsize=1)
def _manifests() -> tuple[dict[str, Any], ...]:
    """Parse `manifests/*.yaml` once; never hand these out without a deep copy."""
    import yaml

    folder = resources.files("shared").joinpath("manifests")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    objects: list[dict[str, Any]] = []
    for f in files:
        objects += [d for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d is not None]
    ranks = [KIND_ORDER.get(str(o.get("kind")), -1) for o in objects]
    if -1 in ranks or ranks != sorted(ranks):  # a packaging mistake, caught at first use
        kinds = [o.get("kind") for o in objects]
        raise RuntimeError(f"manifests out of apply order or of unknown kind: {kinds}")
    return tuple(objects)


def _pod_spec_containers(ds: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ds["spec"]["template"]["spec"]
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _set_images(ds: dict[str, Any], images: dict[str, str]) -> None:
    seen = set()
    for c in _pod_spec_containers(ds):
        if c.get("image") in images:
            seen.add(c["image"])
            c["image"] = images[c["image"]]
    if seen != set(images):  # the manifests and the defaults above disagree: a code defect
        raise RuntimeError(f"DaemonSet does not use the default images {sorted(set(images) - seen)}")


def _set_log_level_arg(ds: dict[str, Any], level: str) -> None:
    """Keep the init container's `--multus-log-level` equal to the conf's `logLevel`.

    With an explicit `--multus-conf-file` Multus ignores this flag, but the conf is copied to
    the node only when the pod starts: changing the flag together with the ConfigMap changes
    the pod template, so the DaemonSet rolls and the new level actually takes effect.
    """
    for c in _pod_spec_containers(ds):
        args = c.get("args") or []
        for i, arg in enumerate(args):
            if isinstance(arg, str) and arg.startswith(LOG_LEVEL_ARG):
                args[i] = LOG_LEVEL_ARG + level


def _set_conf_log_level(cm: dict[str, Any], level: str) -> None:
    """Set `logLevel` in the Multus conf: decode, change, re-encode (never text substitution).

    `json.dumps(indent=2)` reproduces the seed's text byte for byte, so the default bundle keeps
    the seed's ConfigMap exactly (a test holds this).
    """
    conf = json.loads(cm["data"][MULTUS_CONF_KEY])
    conf["logLevel"] = level
    cm["data"][MULTUS_CONF_KEY] = json.dumps(conf, indent=2) + "\n"


@lru_cache(maxsize=1)
def _dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Block literals for multi-line strings (readable ConfigMap), no anchors/aliases."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    def str_presenter(dumper: yaml.SafeDumper, data: str) -> Any:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, str_presenter)
    return Dumper


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m shared.core.multus [--output yaml|json] [--write-golden [DIR]]`."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m shared.core.multus", description="Print the default bundle.")
    parser.add_argument("--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--write-golden", nargs="?", const="tests/golden", metavar="DIR",
                        help="write DIR/bundle.yaml and DIR/bundle.json (default DIR: tests/golden)")
    args = parser.parse_args(argv)
    bundle = load_bundle()
    if args.write_golden:
        out = Path(args.write_golden)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bundle.yaml").write_text(bundle.to_yaml(), encoding="utf-8")
        (out / "bundle.json").write_text(bundle.to_json(), encoding="utf-8")
        print(f"wrote {out}/bundle.yaml and {out}/bundle.json (version {bundle.version})", file=sys.stderr)
        return 0
    sys.stdout.write(bundle.to_yaml() if args.output == "yaml" else bundle.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

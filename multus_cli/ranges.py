"""`multus-provisioner ranges CLUSTER`: the secondary range, each NAD's slice and how full it is.

Reads the cluster as `verify` does (the GKE API for the endpoint and credentials, then the
cluster API through `shared.adapters.kube`): the managed NADs, Whereabouts' IPPool objects and
the pods, and reports with `shared.core.ranges`. In a terminal the range is drawn as a bar with
each slice on it, because people would rather look than read; `--json` (or a pipe) gets figures.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any, TextIO

from multus_cli.online import (
    EXIT_OK,
    UsageError,
    _common,
    _guard,
    _load_sandbox,
    _print_json,
    _resolve_cluster,
    _settings,
    _store,
)

BAR_WIDTH = 64
MARKS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ranges", help="the secondary range, each NAD's slice, addresses handed out and free",
                              description="Read the cluster's NADs and Whereabouts IPPools; report each slice's "
                                          "use, free addresses, stale allocations and overlaps.")
    p.add_argument("cluster", help="a cluster name or projects/P/locations/L/clusters/C")
    _common(p)
    p.set_defaults(handler=_guard(cmd_ranges))


def cmd_ranges(args: argparse.Namespace) -> int:
    from shared.app import Controller
    from shared.core import prechecks
    from shared.core import ranges as rangelib

    _load_sandbox(args)
    settings = _settings()
    store = _store(settings)
    ref = _resolve_cluster(store, args.cluster)
    ctl = Controller(settings, store=store)
    rec = store.get_cluster(ref)
    cidr = rec.workflow.node_pool.cidr if rec and rec.workflow.node_pool else ""
    cluster = ctl.gke.get_cluster(ref)
    if not cidr:
        pools = prechecks.suitable_pools(list(cluster.node_pools))
        if pools:
            net = pools[0].pod_networks[0]
            cidr = ctl.gke.secondary_range_cidr(ref, net.subnetwork, net.secondary_pod_range)
    kube = ctl.ctx.kube_for(ref, cluster)
    nads = kube.list_managed_nads()
    pools_on_cluster = kube.list_ippools()
    pods = kube.list_pod_refs()
    try:
        rep = rangelib.report(cidr, nads, pools_on_cluster, pods)
    except ValueError as e:
        raise UsageError(f"{ref.path}: secondary range {cidr!r}: {e}") from None
    if args.json:
        _print_json({"cluster": ref.path, **rep.to_dict()})
        return EXIT_OK
    print_report(ref.path, rep, sys.stdout, bar=sys.stdout.isatty())
    return EXIT_OK


def print_report(cluster: str, rep: Any, out: TextIO, *, bar: bool) -> None:
    """The human report; with `bar`, the secondary range drawn with each slice on it."""
    print(f"cluster          {cluster}", file=out)
    print(f"secondary range  {rep.secondary_range or '(not known: no multi-network node pool)'}", file=out)
    if not rep.slices:
        print("no managed NADs on the cluster", file=out)
    if bar and rep.secondary_range:
        for line in draw(rep):
            print(line, file=out)
    rows = []
    for i, s in enumerate(rep.slices):
        mark = MARKS[i % len(MARKS)]
        if s.problem:
            rows.append([mark, s.nad, "-", "-", "-", "-", "-", s.problem])
            continue
        extra = []
        if s.exclude:
            extra.append("exclude " + ", ".join(s.exclude))
        if s.shared_with:
            extra.append("same pool as " + ", ".join(s.shared_with))
        if s.stale:
            extra.append(f"{s.stale} stale")
        rows.append([mark, s.nad, s.range, f"{s.start}-{s.end}", str(s.used), str(s.free), f"{s.percent:.0f}%",
                     "; ".join(extra)])
    if rows:
        header = ["", "NAD", "RANGE", "START-END", "USED", "FREE", "USE", "NOTES"]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        for r in [header, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip(), file=out)
    for s in rep.slices:
        for a in s.allocations:
            if a.stale:
                print(f"stale: {s.nad} {a.ip} held by {a.podref} (pod gone; Whereabouts' reconciler frees it)",
                      file=out)
    for text in rep.overlaps:
        print(f"overlap: {text}", file=out)
    for text in rep.outside:
        print(f"outside: {text}", file=out)
    for name in rep.unclaimed_pools:
        print(f"IPPool {name} belongs to no managed NAD", file=out)


def draw(rep: Any, width: int = BAR_WIDTH) -> list[str]:
    """A bar per range: `.` free space of the secondary range, a letter per slice (`#` where
    addresses are handed out), `!` where slices overlap."""
    outer = ipaddress.ip_network(rep.secondary_range, strict=False)
    size = outer.num_addresses
    cells = ["."] * width
    used = [False] * width
    for i, s in enumerate(rep.slices):
        if s.problem:
            continue
        lo, hi = int(ipaddress.ip_address(s.start)), int(ipaddress.ip_address(s.end))
        base = int(outer.network_address)
        a = max(0, (lo - base) * width // size)
        b = min(width - 1, (hi - base) * width // size)
        if hi < base or lo >= base + size:
            continue
        for c in range(a, b + 1):
            cells[c] = "!" if cells[c] not in (".", MARKS[i % len(MARKS)]) else MARKS[i % len(MARKS)]
        for al in s.allocations:
            c = (int(ipaddress.ip_address(al.ip)) - base) * width // size
            if 0 <= c < width:
                used[c] = True
    fill = "".join("#" if u and cells[c] not in (".", "!") else cells[c] for c, u in enumerate(used))
    return [f"  {outer.network_address}", f"  [{''.join(cells)}]", f"  [{fill}]  (# handed out)",
            f"  {' ' * (width - len(str(outer.broadcast_address)) + 2)}{outer.broadcast_address}"]

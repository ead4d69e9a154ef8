"""A User-Mode Linux guest for the real CNI data path, reached only through the sandbox's own namespace.

The VM kernel here has no IPVLAN; Debian's `user-mode-linux` (Linux 6.1 as an ordinary process)
has it as a module and boots with the host's file system as its root, so the real plugin binaries
run inside it straight from the host's disk (docs/SANDBOX_KUBE.md, "The real CNI path").

The route between the guest and the host, and why it keeps every packet where it may be:

    host netns (loopback)              sandbox netns mpcni-PID-N              UML guest
    kube API 127.0.0.1:P  <-- forwarder -- 169.254.77.1:P (tap mpcPIDtN) ==== vec0 169.254.77.2
                                            (route 10.0.1.0/24 via .2)        agent :7077, nodes' netns

- The sandbox creates a network namespace of its own and a tap device in it; `linux.uml` runs in
  that namespace with the vector transport on the tap (`vec0:transport=tap,ifname=...`). The
  guest's packets end in that namespace and go nowhere else: it has no other link.
- The forwarder is this process: a listening socket created inside the sandbox namespace (a
  thread `setns`es into it; a socket keeps the namespace it was made in) accepts the guest's
  connections to 169.254.77.1:P and pipes each to 127.0.0.1:P on the host's loopback, the API
  server's address. Only that port is forwarded.
- The host drives the guest through the agent (`uml_agent.py`, a JSON line per request) on the
  guest's end of the tap, connecting from a socket made in the sandbox namespace as well.

Names carry the owner's PID (`mpcni-PID-N`), so parallel test workers never collide, and
`sweep()` removes what a dead process left: its namespace (after killing the processes in it,
the guest among them) and its work directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sandbox.kube.reaper import alive

T = TypeVar("T")

PREFIX = "mpcni"
HOST_ADDR, GUEST_ADDR, LINK_PREFIX = "169.254.77.1", "169.254.77.2", 30
AGENT_PORT = 7077
UML = "/usr/bin/linux.uml"
INIT = Path(__file__).with_name("uml_init.sh")
AGENT = Path(__file__).with_name("uml_agent.py")
CLONE_NEWNET = 0x40000000
BOOT_TIMEOUT = 120.0
_counter = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


class GuestError(RuntimeError):
    """The guest or its namespace could not be made or driven; the message says what to do."""


def _run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode != 0:
        raise GuestError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a thread that joined network namespace `name` (sockets it makes stay there)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            with open(f"/run/netns/{name}", "rb") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=body, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def preflight() -> None:
    """Fail with what to do when this machine cannot run the real data path."""
    if os.geteuid() != 0:
        raise GuestError("the real CNI path needs root (network namespaces, tap devices)")
    missing = [b for b in ("ip", "modprobe", "ping", "arping") if shutil.which(b) is None]
    if not Path(UML).exists():
        missing.append("linux.uml")
    if missing:
        raise GuestError(f"missing {', '.join(missing)}: run `python -m scripts.syspkgs` (installs user-mode-linux, "
                         "kmod, iputils-ping, iputils-arping from Debian)")
    probe = f"{PREFIX}-{os.getpid()}-probe{next(_counter)}"
    proc = _run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        raise GuestError(f"cannot create a network namespace here ({proc.stderr.strip()}): the real CNI tests need "
                         "root with CAP_SYS_ADMIN and CAP_NET_ADMIN")
    _run(["ip", "netns", "del", probe], check=False)


def sweep() -> list[str]:
    """Remove namespaces and work directories named after a process that no longer exists."""
    removed = []
    listing = _run(["ip", "-j", "netns", "list"], check=False).stdout.strip() or "[]"
    for entry in json.loads(listing):
        name = entry.get("name", "")
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if not m or alive(int(m[1])):
            continue
        _kill_netns_processes(name)
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        m = re.match(rf"{PREFIX}-(\d+)-", path.name)
        if m and not alive(int(m[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _kill_netns_processes(name: str) -> None:
    for _ in range(50):
        pids = [int(p) for p in _run(["ip", "netns", "pids", name], check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


class Guest:
    """One UML guest in a sandbox namespace, with forwarders to API servers on the host's loopback."""

    def __init__(self, mem: str = "384M") -> None:
        n = next(_counter)
        self.id = f"{os.getpid()}-{n}"
        self.netns = f"{PREFIX}-{self.id}"
        self.tap = f"mpc{os.getpid()}t{n}"[:15]
        self.mem = mem
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.id}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._listeners: list[socket.socket] = []
        self._stopping = threading.Event()
        self.boot_seconds = 0.0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Guest:
        from sandbox.kube.reaper import ensure_reaper

        preflight()
        sweep()
        ensure_reaper()  # a guest outliving a killed owner is removed by the reaper
        started = time.monotonic()
        try:
            _run(["ip", "netns", "add", self.netns])
            ns = ["ip", "netns", "exec", self.netns]
            _run([*ns, "ip", "link", "set", "lo", "up"])
            _run([*ns, "ip", "tuntap", "add", self.tap, "mode", "tap"])
            _run([*ns, "ip", "addr", "add", f"{HOST_ADDR}/{LINK_PREFIX}", "dev", self.tap])
            _run([*ns, "ip", "link", "set", self.tap, "up"])
            log = open(self.workdir / "guest.log", "wb")  # noqa: SIM115 - the child keeps it
            argv = [*ns, UML, f"mem={self.mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw",
                    f"init={INIT}", f"uml_dir={self.workdir}", f"umid={self.netns}", "con=null",
                    "con0=fd:0,fd:1", f"vec0:transport=tap,ifname={self.tap}",
                    f"MPCNI_GUEST_ADDR={GUEST_ADDR}/{LINK_PREFIX}", f"MPCNI_AGENT={AGENT}",
                    f"MPCNI_AGENT_PORT={AGENT_PORT}"]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            log.close()
            self._wait_agent()
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _wait_agent(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise GuestError(f"the UML guest exited ({self.proc.returncode}) while booting: {self.log_tail()}")
            try:
                if self.exec(["true"], timeout=10).get("rc") == 0:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise GuestError(f"the UML guest's agent did not answer within {BOOT_TIMEOUT:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / "guest.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        self._stopping.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        self._listeners.clear()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._request({"halt": True}, timeout=5)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if Path(f"/run/netns/{self.netns}").exists():
            _kill_netns_processes(self.netns)
            _run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ the agent
    def _request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        def connect() -> socket.socket:
            return socket.create_connection((GUEST_ADDR, AGENT_PORT), timeout=timeout)
        sock = in_netns(self.netns, connect)
        with sock, sock.makefile("rwb") as stream:
            stream.write(json.dumps(body).encode() + b"\n")
            stream.flush()
            line = stream.readline()
        if not line:
            raise ConnectionError("the guest's agent closed the connection")
        return json.loads(line)

    def exec(self, argv: Sequence[str], env: dict[str, str] | None = None, stdin: str = "",
             timeout: float = 60.0) -> dict[str, Any]:
        """Run `argv` in the guest (its root namespace); `{"rc", "stdout", "stderr"}`."""
        return self._request({"argv": list(argv), "env": env or {}, "stdin": stdin, "timeout": timeout},
                             timeout=timeout + 10)

    def write(self, files: dict[str, str]) -> None:
        """Write text files inside the guest (its tmpfs and overlays; the host's files stay as they are)."""
        out = self._request({"files": files}, timeout=30)
        if out.get("rc") != 0:
            raise GuestError(f"guest: writing {', '.join(files)}: {out.get('stderr', '').strip()}")

    def check(self, argv: Sequence[str], **kw: Any) -> str:
        """`exec` that raises `GuestError` on a non-zero exit; the standard output."""
        out = self.exec(argv, **kw)
        if out.get("rc") != 0:
            raise GuestError(f"guest: {' '.join(argv)}: exit {out.get('rc')}: {out.get('stderr', '').strip()}")
        return str(out.get("stdout", ""))

    # ------------------------------------------------------------ the API route
    def forward(self, port: int, route: str | None = None) -> str:
        """Forward HOST_ADDR:port in the sandbox namespace to 127.0.0.1:port; the guest-side URL host.

        `route` (a CIDR inside the guest, e.g. the nodes' primary network) gets a route back
        through the guest, so the nodes' own namespaces reach the forwarder too."""
        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST_ADDR, port))
            s.listen(64)
            return s
        listener = in_netns(self.netns, listen)
        self._listeners.append(listener)
        if route:
            _run(["ip", "netns", "exec", self.netns, "ip", "route", "replace", route, "via", GUEST_ADDR])
        threading.Thread(target=self._accept, args=(listener, port), daemon=True,
                         name=f"uml-forward-{port}").start()
        return HOST_ADDR

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        # The other direction's thread ends on its next read or write; each closes what it read.
        with contextlib.suppress(OSError):
            src.close()

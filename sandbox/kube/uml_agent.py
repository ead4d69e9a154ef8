"""The agent inside a sandbox UML guest: runs argv lists for the host, one JSON line per request.

Started by `uml_init.sh` as the guest's PID 1 (with the guest's `/usr/bin/python3`, standard
library only: the guest's root is the host's file system, not the project's virtualenv). It
listens on the guest's end of the tap link (`ADDR PORT`), which only the sandbox's own host-side
network namespace can reach. A request is `{"argv": [...], "env": {...}, "stdin": "...",
"timeout": s, "files": {path: text}}` (files are written first, in the guest); the answer is
`{"rc": n, "stdout": "...", "stderr": "..."}`. `{"halt": true}` powers the guest off.
"""

import json
import os
import socketserver
import subprocess
import sys

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/run"}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            if req.get("halt"):
                self.wfile.write(b'{"rc": 0, "stdout": "", "stderr": ""}\n')
                self.wfile.flush()
                os.sync()
                subprocess.run(["halt", "-f"], check=False)
                return
            for path, content in (req.get("files") or {}).items():  # written in the guest's own tmpfs/overlays
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(content)
            if not req.get("argv"):
                answer = {"rc": 0, "stdout": "", "stderr": ""}
                self.wfile.write(json.dumps(answer).encode() + b"\n")
                self.wfile.flush()
                return
            env = dict(BASE_ENV)
            env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
            proc = subprocess.run([str(a) for a in req["argv"]], input=req.get("stdin") or "", env=env,
                                  capture_output=True, text=True, timeout=float(req.get("timeout") or 60),
                                  check=False)
            answer = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        except subprocess.TimeoutExpired as e:
            answer = {"rc": -1, "stdout": "", "stderr": f"timed out after {e.timeout} s"}
        except Exception as e:
            answer = {"rc": -2, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")
        self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    server = Server((addr, port), Handler)
    print(f"mpcni: agent listening on {addr}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

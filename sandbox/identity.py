"""The sandbox's identity server: Google-style ID tokens and the certificates that verify them.

In production a requester's ID token is signed by Google (`gcloud auth print-identity-token`,
`google.oauth2.id_token.fetch_id_token`) and the functions verify it against Google's published
x509 certificates. The sandbox cannot sign as Google, so it plays both parts on 127.0.0.1:

- `GET /certs`: its certificates, in Google's format (`{"kid": "-----BEGIN CERTIFICATE-----..."}`);
- `GET /identity?audience=A[&email=E]`: a token for E (default: the sandbox user), as the metadata
  server's `identity` endpoint answers a workload (header `Metadata-Flavor: Google` required).

Tokens carry Google's issuer (`https://accounts.google.com`), RS256, `aud`, `exp`, `email`,
`email_verified`: the functions' verifier is the production one; only the certificates' URL
differs, given by MULTUS_PROVISIONER_SANDBOX_ID_URL, which only the sandbox sets.

This is the outside world: nothing of the controller is imported here.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ISSUER = "https://accounts.google.com"
SANDBOX_USER = "sandbox-user@multus-sandbox.iam.gserviceaccount.com"


class Issuer:
    """An RSA key pair, its self-signed certificate, and tokens signed with it."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.kid = uuid.uuid4().hex
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "multus-sandbox identity")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=7)).sign(self._key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.key_pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()).decode()

    def certs(self) -> dict[str, str]:
        return {self.kid: self.cert_pem}

    def token(self, audience: str, email: str = SANDBOX_USER, *, lifetime: int = 3600, issuer: str = ISSUER,
              now: float | None = None, **claims: Any) -> str:
        """A signed ID token; the keyword arguments override or add claims (tests forge with them)."""
        from google.auth import crypt, jwt

        issued = int(time.time() if now is None else now)
        payload = {"iss": issuer, "aud": audience, "sub": f"sandbox-{abs(hash(email)) % 10**12}", "email": email,
                   "email_verified": True, "iat": issued, "exp": issued + lifetime, **claims}
        signer = crypt.RSASigner.from_string(self.key_pem, key_id=self.kid)
        return jwt.encode(signer, payload).decode()


class IdentityServer:
    """`Issuer` over HTTP on 127.0.0.1 (a free port), in a daemon thread; `stop()` ends it."""

    def __init__(self, issuer: Issuer | None = None) -> None:
        self.issuer = issuer or Issuer()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Cache-Control", "public, max-age=300")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/certs":
                    self._send(200, owner.issuer.certs())
                elif url.path == "/identity":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        self._send(403, {"error": "missing Metadata-Flavor: Google"})
                    elif not query.get("audience"):
                        self._send(400, {"error": "audience is required"})
                    else:
                        token = owner.issuer.token(query["audience"], query.get("email") or SANDBOX_USER)
                        self._send(200, token, "text/plain")
                else:
                    self._send(404, {"error": "not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-identity", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""Verifying a requester's ID token: RS256 signature against the issuer's certificates.

Google signs ID tokens (`gcloud auth print-identity-token`, `google.oauth2.id_token.fetch_id_token`,
the metadata server's `identity` endpoint) with keys it publishes as x509 certificates at
`GOOGLE_CERTS_URL`. The certificates are fetched once and kept for their `Cache-Control` max-age
(a key the token names but the cache lacks makes one early re-fetch: Google rotates keys), so a
warm function verifies a token without a network call. A token whose signature verified is kept
(its whole text is the key, so only the very same signed bytes match) while the key that signed
it is still published: a requester sends the same token for an hour, and an RSA verification on
every request was a measurable part of a NAD request's CPU. Its claims (expiry, audience, issuer,
email) are checked again on every use.

The sandbox serves its own certificates on 127.0.0.1 (`MULTUS_PROVISIONER_SANDBOX_ID_URL`, see
sandbox/identity.py); that is the only difference, and only the sandbox sets that variable.

google-auth is imported on the first token (cold start: functions/main.py imports nothing of it).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from typing import Any

from shared.core.errors import Problem, Rejected, RejectionKind, Transient
from shared.core.requesters import GOOGLE_ISSUERS, Requester, claims_problems

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
DEFAULT_MAX_AGE = 300.0
MIN_REFETCH_SECONDS = 30.0
CLOCK_SKEW_SECONDS = 10
MAX_TOKEN_CHARS = 8000
VERIFIED_TOKENS_KEPT = 256
FIELD = "attributes.idToken"


def unauthenticated(message: str) -> Rejected:
    return Rejected("request not authenticated", [Problem(FIELD, message)], kind=RejectionKind.UNAUTHENTICATED)


class IdTokenVerifier:
    """Verifies ID tokens for one deployment's audiences; one per function instance."""

    def __init__(self, audiences: tuple[str, ...], *, certs_url: str | None = None, timeout: float = 10.0,
                 clock: Any = time.time) -> None:
        self.audiences = audiences
        self.certs_url = certs_url or GOOGLE_CERTS_URL
        self.timeout = timeout
        self.clock = clock
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = threading.Lock()
        self._verified: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()  # token -> (kid, claims)

    def _fetch(self) -> None:
        try:
            with urllib.request.urlopen(self.certs_url, timeout=self.timeout) as resp:
                body = resp.read(1024 * 1024)
                control = resp.headers.get("Cache-Control") or ""
        except (urllib.error.URLError, OSError) as e:
            raise Transient(f"ID token certificates unavailable ({self.certs_url}): {e}", code="UNAVAILABLE",
                            api="oauth2") from None
        try:
            certs = json.loads(body)
        except ValueError:
            raise Transient(f"ID token certificates at {self.certs_url} are not JSON", api="oauth2") from None
        if not isinstance(certs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items()):
            raise Transient(f"ID token certificates at {self.certs_url} are not a map of key id to PEM", api="oauth2")
        m = re.search(r"max-age=(\d+)", control)
        now = self.clock()
        self._certs = certs
        self._fetched = now
        self._expires = now + (float(m.group(1)) if m else DEFAULT_MAX_AGE)

    def _certs_for(self, kid: str | None) -> dict[str, str]:
        with self._lock:
            now = self.clock()
            stale = now >= self._expires
            unknown = kid is not None and kid not in self._certs and now - self._fetched >= MIN_REFETCH_SECONDS
            if stale or unknown or not self._certs:
                self._fetch()
            return dict(self._certs)

    def verify(self, token: str | None) -> Requester:
        """The requester a token names, or `Rejected` (kind "unauthenticated") saying why not:
        missing, malformed, wrongly signed, expired, for another audience or issuer, no email."""
        if not token:
            raise unauthenticated("no ID token: the request must carry the requester's Google ID token in the "
                                  "idToken message attribute (multus-provisioner request-nad attaches it)")
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise unauthenticated("the idToken attribute is not a JWT")
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
        except (ValueError, exceptions.GoogleAuthError) as e:
            raise unauthenticated(f"the idToken attribute is not a JWT ({_short(e)})") from None
        if header.get("alg") != "RS256":
            raise unauthenticated(f"the token is signed with {str(header.get('alg'))[:20]!r}, not RS256")
        kid = header.get("kid")
        certs = self._certs_for(kid)
        if kid not in certs:
            raise unauthenticated("the token is signed by a key the issuer does not publish")
        claims = self._already_verified(token, str(kid))
        if claims is None:
            try:
                claims = jwt.decode(token, certs=certs, verify=True,  # type: ignore[no-untyped-call]
                                    clock_skew_in_seconds=CLOCK_SKEW_SECONDS)
            except (ValueError, exceptions.GoogleAuthError) as e:
                raise unauthenticated(f"the token does not verify: {_short(e)}") from None
            self._keep(token, str(kid), claims)
        problems = claims_problems(claims, audiences=self.audiences, issuers=GOOGLE_ISSUERS,
                                   now=self.clock() - CLOCK_SKEW_SECONDS)
        if problems:
            raise Rejected("request not authenticated", problems, kind=RejectionKind.UNAUTHENTICATED)
        return Requester(email=str(claims["email"]).lower(), subject=str(claims.get("sub") or ""))


    def _already_verified(self, token: str, kid: str) -> dict[str, Any] | None:
        """The claims of this very token if its signature verified before with a key still published."""
        with self._lock:
            kept = self._verified.get(token)
            if kept is None or kept[0] != kid or kid not in self._certs:
                return None
            self._verified.move_to_end(token)
            return kept[1]

    def _keep(self, token: str, kid: str, claims: Any) -> None:
        if not isinstance(claims, dict):
            return
        with self._lock:
            self._verified[token] = (kid, claims)
            while len(self._verified) > VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)


def _short(err: Exception) -> str:
    """An error of google-auth without the token it may quote."""
    text = re.sub(r"eyJ[A-Za-z0-9_.-]+", "<token>", str(err))
    return text[:200]


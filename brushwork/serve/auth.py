"""Who is calling: HTTP basic (A1111's --api-auth) and API keys (`Authorization: Bearer KEY` or `X-API-Key`).

Authentication is an ASGI middleware rather than a route dependency so it covers every path the app
serves, the OpenAPI schema, the docs pages and a mounted web UI included. The caller's identity is put
in `request.state.user`; it is the owner of the jobs they submit, which the queue's fairness uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from brushwork.serve.settings import Settings

ANONYMOUS = "anonymous"  # the owner of every job when no auth is configured
REALM = "brushwork"


class Authenticator:
    """Checks credentials against the configured users and keys, in constant time."""

    def __init__(self, basic_auth: dict[str, str], api_keys: tuple[str, ...]):
        self._users = {user: password.encode() for user, password in basic_auth.items()}
        self._keys = tuple(key.encode() for key in api_keys)

    @property
    def enabled(self) -> bool:
        return bool(self._users or self._keys)

    def identify(self, headers: dict[str, str]) -> str | None:
        """The caller's name (a user, or "key-" and a digest of the key: keys are never stored), or None."""
        if not self.enabled:
            return ANONYMOUS
        key = headers.get("x-api-key")
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if key is None and scheme.lower() == "bearer":
            key = credentials.strip()
        if key is not None:
            return self._key_owner(key.encode())
        if scheme.lower() == "basic":
            return self._basic_user(credentials.strip())
        return None

    def _key_owner(self, key: bytes) -> str | None:
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matched = [known for known in self._keys if hmac.compare_digest(known, key)]
        return "key-" + hashlib.sha256(matched[0]).hexdigest()[:12] if matched else None

    def _basic_user(self, credentials: str) -> str | None:
        try:
            user, colon, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, ValueError):
            return None
        known = self._users.get(user)
        # A missing user still costs one comparison, so user names cannot be probed by timing.
        matches = hmac.compare_digest(known if known is not None else b"\0", password.encode())
        return user if colon and known is not None and matches else None

    def challenges(self) -> list[str]:
        """WWW-Authenticate values telling a client which schemes work."""
        found = [f'Basic realm="{REALM}"'] if self._users else []
        return found + ([f'Bearer realm="{REALM}"'] if self._keys else [])


class AuthMiddleware:
    """Answers 401 to any HTTP or WebSocket request without valid credentials when auth is configured."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator):
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        user = self.authenticator.identify(headers)
        if user is None:
            await self._refuse(scope, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": "authentication required: HTTP basic (--api-auth) or an API key "
                                     "(Authorization: Bearer KEY, or X-API-Key: KEY)"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(b"www-authenticate", challenge.encode()) for challenge in self.authenticator.challenges()]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_authenticator(settings: Settings) -> Authenticator:
    return Authenticator(settings.basic_auth, settings.api_keys)

"""Who is calling: the owner behind a bearer token, a JWT, or open mode.

Use as a FastAPI dependency: ``owner: str = Depends(app.state.auth)`` — routes get
it through `api.deps.Owner`. Credentials come from ``Authorization: Bearer`` or,
for a browser EventSource that cannot set headers, ``?access_token=``.
"""

from __future__ import annotations

import hmac

import jwt
from fastapi import Request

from api.errors import Unauthorized
from api.headers import header
from shared.settings import Settings

ANONYMOUS = "anonymous"


class Authenticator:
    """Resolves a request to its owner; raise `Unauthorized` (401) otherwise."""

    def __init__(self, settings: Settings, *, allow_open: bool) -> None:
        self._tokens = [(t.encode(), owner) for t, owner in settings.token_owners().items()]
        self._jwt_secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.open = not self._tokens and self._jwt_secret is None
        self._allow_open = allow_open

    def owner_of(self, request: Request) -> str:
        if self.open:
            if self._allow_open:
                return ANONYMOUS
            raise Unauthorized("authentication is not configured and anonymous access is off")
        token = _credentials(request)
        if token is None:
            raise Unauthorized("missing credentials: send Authorization: Bearer <token>")
        owner = self._static_owner(token)
        if owner is None and self._jwt_secret is not None:
            owner = self._jwt_owner(token, self._jwt_secret)
        if owner is None:
            raise Unauthorized("invalid credentials")
        return owner

    async def __call__(self, request: Request) -> str:
        return self.owner_of(request)

    def _static_owner(self, token: str) -> str | None:
        given = token.encode()
        found: str | None = None
        # Compare against every token, no early exit: timing says nothing about which matched.
        for candidate, owner in self._tokens:
            if hmac.compare_digest(candidate, given):
                found = owner
        return found

    @staticmethod
    def _jwt_owner(token: str, secret: str) -> str | None:
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub"]})
        except jwt.PyJWTError:
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) and sub else None


def _credentials(request: Request) -> str | None:
    given = header(request, b"authorization")
    if given:
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    token = request.query_params.get("access_token")
    return token or None

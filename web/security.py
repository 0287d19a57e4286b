"""Who may read and who may write: tokens, the Origin check, read-only mode.

- With tokens, every request needs one: ``Authorization: Bearer SECRET``
  (scripts), or the cookie a browser gets by opening ``/?token=SECRET`` once.
  Secrets are compared in constant time.
- A request that changes something (any method but GET/HEAD/OPTIONS) is
  refused when its ``Origin`` is another site's (a cross-site form post);
  without an ``Origin`` (curl, scripts) it is accepted.
- Unless writes are allowed, such a request is refused with 403.
"""

from __future__ import annotations

import getpass
import hmac
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

COOKIE = "obsarch_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Policy:
    """``tokens`` maps each secret to the name flags are recorded under."""

    allow_write: bool = False
    tokens: dict[str, str] = field(default_factory=dict)
    user: str = field(default_factory=getpass.getuser)


def parse_tokens(values: list[str] | None, user: str) -> dict[str, str]:
    """``NAME:SECRET`` or a bare ``SECRET`` (named after ``user``) -> {secret: name}."""
    tokens = {}
    for value in values or []:
        name, sep, secret = value.partition(":")
        if not sep:
            name, secret = user, value
        if not secret or not name:
            raise ValueError(f"token {value!r}: give SECRET or NAME:SECRET")
        tokens[secret] = name
    return tokens


def token_name(presented: str | None, tokens: dict[str, str]) -> str | None:
    """The name of the token presented, compared with every secret in constant time."""
    if not presented:
        return None
    found = None
    for secret, name in tokens.items():
        if hmac.compare_digest(presented.encode(), secret.encode()):
            found = name
    return found


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


class Guard(BaseHTTPMiddleware):
    """Applies a :class:`Policy`; sets ``request.state.who`` and ``request.state.can_write``."""

    def __init__(self, app, policy: Policy):
        super().__init__(app)
        self.policy = policy

    async def dispatch(self, request: Request, call_next) -> Response:
        who = self.policy.user
        if self.policy.tokens:
            who, refusal = self._authenticate(request)
            if refusal is not None:
                return refusal
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and origin != own_origin(request):
                return PlainTextResponse(f"refused: a request from {origin} may not change this catalog\n", 403)
            if not self.policy.allow_write:
                return PlainTextResponse("refused: read-only; start `obsarch serve --allow-write` to grade\n", 403)
        request.state.who = who
        request.state.can_write = self.policy.allow_write
        return await call_next(request)

    def _authenticate(self, request: Request) -> tuple[str | None, Response | None]:
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        in_url = request.query_params.get("token")
        name = token_name(bearer or in_url or request.cookies.get(COOKIE), self.policy.tokens)
        if name is None:
            return None, PlainTextResponse(
                "refused: this server needs a token (Authorization: Bearer TOKEN, or open /?token=TOKEN once)\n", 401,
                headers={"WWW-Authenticate": "Bearer"})
        if in_url and request.method == "GET":  # a browser's first visit: keep it in a cookie, not in the URL
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            target = request.url.path + (f"?{rest}" if rest else "")
            response = RedirectResponse(target, 303)
            response.set_cookie(COOKIE, in_url, httponly=True, samesite="strict")
            return name, response
        return name, None

"""The aiohttp serving helper every HTTP endpoint of the project uses (viewer, shim control, WebRTC),
and the one rule for who may use them (:class:`RequestGuard`, see docs/security.md).

Why the rule looks as it does: a web page in the user's browser can send requests to any
address (``127.0.0.1`` included), and a "simple" cross-site POST (``text/plain``, a form) needs no
permission from the server.  So a state change must be JSON (a cross-site page cannot send that
without a CORS preflight we never grant) and must come from our own origin or carry the token;
a server without a token must be named by a loopback Host (a DNS-rebound name is refused)."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

__all__ = ["serve_app", "RequestGuard", "json_error", "loopback_hostname", "token_cookie"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Start ``app`` on host:port (0 = any free port); returns the runner and the bound address.
    Raises OSError (runner cleaned up) when the address cannot be bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site._server.sockets[0].getsockname()[:2]  # the real port when 0 was asked


def json_error(status: int, message: str) -> web.Response:
    """The one-line JSON error every endpoint answers with."""
    return web.json_response({"error": message}, status=status)


def token_cookie(request: web.Request) -> str:
    """The cookie a page's requests carry its token in: one per port, as browsers send a host's
    cookies to all its ports (two viewers on one machine must not overwrite each other's)."""
    return f"jscc_token_{request.url.port}"


def loopback_hostname(name: str | None) -> bool:
    """True for a literal loopback address or ``localhost`` (never resolved: a rebound name is not)."""
    if not name:
        return False
    name = name.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RequestGuard:
    """Who may use an endpoint: ``token`` (header ``Authorization: Bearer T`` or ``X-Jscc-Token``,
    or the :func:`token_cookie` when ``cookie`` is on) is needed for everything when set; a
    state-changing request also needs ``Content-Type: application/json`` and, unless it carries
    the token in a header, an Origin that is the server's own or one of ``origins`` (a request
    without Origin comes from no browser); so does a WebSocket.  Without a token and with
    ``check_host`` (the server is bound to loopback) the Host must name loopback too.

    With ``cookie``, ``GET ...?token=T`` sets the cookie and redirects to the URL without it:
    the link a daemon prints opens the page, whose own requests then carry the cookie."""

    token: str | None = None
    origins: frozenset[str] = frozenset()
    cookie: bool = False
    check_host: bool = True

    def header_token_ok(self, request: web.Request) -> bool:
        given = request.headers.get("X-Jscc-Token", "")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return self.token is not None and _same(given, self.token)

    def cookie_token_ok(self, request: web.Request) -> bool:
        return (self.cookie and self.token is not None
                and _same(request.cookies.get(token_cookie(request), ""), self.token))

    def origin_ok(self, request: web.Request) -> bool:
        """No Origin (not a browser), our own, or one allowed."""
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}" or origin in self.origins

    def refusal(self, request: web.Request) -> web.Response | None:
        """None when ``request`` may go on, else the error response."""
        if self.token is None and self.check_host and not loopback_hostname(request.url.host):
            return json_error(403, "this server answers only to a loopback address (Host refused)")
        header_ok = self.header_token_ok(request)
        if self.token is not None and not (header_ok or self.cookie_token_ok(request)):
            return json_error(401, "missing or wrong token")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method in SAFE_METHODS and not websocket:
            return None
        if request.method not in SAFE_METHODS and request.content_type != "application/json":
            return json_error(415, "the body must be JSON (Content-Type: application/json)")
        if not header_ok and not self.origin_ok(request):
            return json_error(403, "cross-origin request refused")
        return None

    def login(self, request: web.Request) -> web.Response:
        """``?token=T``: set the cookie and redirect to the same URL without the token."""
        if self.token is None or not _same(request.query.get("token", ""), self.token):
            return json_error(401, "wrong token in the URL")
        query = {k: v for k, v in request.query.items() if k != "token"}
        resp = web.Response(status=303, headers={"Location": str(request.rel_url.with_query(query))})
        resp.set_cookie(token_cookie(request), self.token, httponly=True, samesite="Strict", path="/")
        return resp

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.cookie and self.token is not None and request.method == "GET" and "token" in request.query:
            return self.login(request)
        return self.refusal(request) or await handler(request)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())

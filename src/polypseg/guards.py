"""The guards in front of `polypseg serve`, as ASGI middlewares: the bearer token and upload sizes
(``Guard``), the Host header and WebSocket origins (``HostGuard``, against DNS rebinding and cross-site
WebSockets), and the one JSON error shape they and the app answer with.

Pure request checks: no model, no app state. ``serve`` adds both middlewares to its app.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .errors import PolypsegError, one_line

TOKEN_COOKIE = "polypseg_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host names always answered (IPv6 as Host carries it)



def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Every error's shape: ``{"error": "one line"}``."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------------
# the guard: bearer token and upload size, for every HTTP request and WebSocket, static files included


class Guard:
    """ASGI middleware. A token comes as ``Authorization: Bearer``, as the ``polypseg_token`` cookie, or as
    ``?token=`` (how a browser opens the page; the answer then sets the cookie, so the page's assets,
    fetches, video and WebSocket carry it without the page handling it). Uploads must say their size
    (Content-Length) and stay under the limit; uvicorn holds a body to its declared length."""

    def __init__(self, app, token: str | None, max_bytes: int, max_video_bytes: int):
        self.app, self.token = app, token
        self.max_bytes, self.max_video_bytes = max_bytes, max_video_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        from_query = False
        if self.token is not None:
            given, from_query = _given_token(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await error_response(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                                    {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            refused = self._check_size(scope["path"], headers)
            if refused is not None:
                return await refused(scope, receive, send)
        if from_query and scope["type"] == "http":
            send = self._with_cookie(send)
        await self.app(scope, receive, send)

    def _check_size(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        # videos, and a site's polyp-free clip (POST /api/v1/sites), get the video limit
        limit = self.max_video_bytes if path.rstrip("/").endswith(("/videos", "/sites")) else self.max_bytes
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return error_response(411, "uploads must give their size (Content-Length)")
        if int(length) > limit:
            return error_response(413, f"the upload is {int(length) / 2**20:.1f} MB, over the {limit / 2**20:g} MB limit")
        return None

    def _with_cookie(self, send):
        cookie = SimpleCookie()
        cookie[TOKEN_COOKIE] = self.token
        cookie[TOKEN_COOKIE].update({"httponly": True, "samesite": "Strict", "path": "/"})

        async def sending(message):
            if message["type"] == "http.response.start":
                header = cookie.output(header="").strip().encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        return sending


def _given_token(scope, headers: dict[str, str]) -> tuple[str | None, bool]:
    """(the token the request carries, whether it came in the query string)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    cookie = SimpleCookie(headers.get("cookie", ""))
    if TOKEN_COOKIE in cookie:
        return cookie[TOKEN_COOKIE].value, False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return (query[0], True) if query else (None, False)


# ---------------------------------------------------------------------------------------------------
# the host guard: the Host header must name this server, a WebSocket's page must come from it


class HostGuard:
    """ASGI middleware against DNS rebinding and cross-site WebSockets. Starlette's TrustedHostMiddleware
    decides whether the Host header names this server; its refusal is answered in the app's JSON shape
    (400), a WebSocket is closed with 1008 instead. A WebSocket opened by a web page (it carries an Origin
    header) must come from a page of an allowed host; clients that are not browsers send no Origin."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        passed = False

        async def allowed(scope, receive, _):
            nonlocal passed
            passed = True
            await self._check_origin(scope, receive, send)

        async def starlettes_answer(message):  # its plain-text 400, replaced by the JSON one below
            pass

        await TrustedHostMiddleware(allowed, self.allowed_hosts, www_redirect=False)(scope, receive, starlettes_answer)
        if passed:
            return
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
        host = one_line(Headers(scope=scope).get("host", ""))[:100]
        await error_response(400, f"this server does not answer to the host '{host}' (a guard against DNS rebinding); if "
                          f"that is its real name, start polypseg serve with --allowed-host NAME")(scope, receive, send)

    async def _check_origin(self, scope, receive, send):
        if scope["type"] == "websocket":
            origin = Headers(scope=scope).get("origin")
            if origin is not None and not origin_allowed(origin, self.allowed_hosts):
                return await send({"type": "websocket.close", "code": 1008,
                                   "reason": "the page's origin is not an allowed host (--allowed-host)"})
        await self.app(scope, receive, send)


def _host_name(name: str) -> str:
    """One --allowed-host value as the Host header carries it (lower case, IPv6 in brackets)."""
    text = name.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    except ValueError:
        pass
    wildcard = text.startswith("*.") or text == "*"
    label = "[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
    if not (text == "*" or re.fullmatch(rf"(\*\.)?{label}(\.{label})*\.?", text)):
        hint = ("wildcards must be like '*.example.org'" if "*" in text and not wildcard else
                "give one name per --allowed-host, without scheme, port or path (e.g. --allowed-host endo.example.org)")
        raise PolypsegError(f"--allowed-host '{one_line(name)}' is not a host name: {hint}")
    return text


def allowed_hosts(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Host names the app answers to: LOOPBACK_HOSTS and ``extra`` (checked; PolypsegError if one is
    not a host name), without repeats."""
    return list(dict.fromkeys([*LOOPBACK_HOSTS, *(_host_name(name) for name in extra)]))


def origin_allowed(origin: str, hosts: list[str]) -> bool:
    """Whether a WebSocket's Origin (``http://host:port``) is a page of an allowed host, by the rule that
    TrustedHostMiddleware applies to the Host header (exact name, or '*.example.org' for names under it)."""
    try:
        parts = urlsplit(origin.strip())
        name = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not name:
        return False  # 'null' (a sandboxed page, a file) and anything that is no web page
    name = f"[{name}]" if ":" in name else name
    return any(name == p or p == "*" or (p.startswith("*.") and name.endswith(p[1:])) for p in hosts)


def bind_names(host: str) -> list[str]:
    """The names a server bound to ``host`` is reached by: that address, or for every address (0.0.0.0,
    ::) the machine's name; other names and IPs need --allowed-host."""
    if host in ("", "0.0.0.0", "::"):
        try:
            return [_host_name(socket.gethostname())]
        except PolypsegError:
            return []
    return [host]

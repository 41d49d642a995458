"""HTTP control API of the userspace shim: read its counters, change loss, rate and delay live.

The demo page's controls go through it (proxied by ``jscc-recv --web``), so the network can be
made worse while a stream plays.  It listens on 127.0.0.1 by default; bound anywhere else it
refuses to start without a token, and then every request must carry ``Authorization: Bearer
TOKEN`` (or ``X-Jscc-Token``): anyone who can reach it could otherwise reshape the link.  Every
POST must be ``Content-Type: application/json`` and come from no other web origin
(``jscc_stream.web.RequestGuard``; docs/security.md).  A loss trace is named only from the
directory of ``--trace-dir`` or sent as content: never a path (``netem/traces.py``).

Routes (JSON in, JSON out)::

    GET  /stats                      the shim's per-class counters and current settings
    POST /loss   {"spec": "uniform:0.2", "direction": "forward"}   or "trace:NAME" (in --trace-dir)
    POST /loss   {"trace": "0 0 1 0 ..." | [0, 0, 1, 0, ...]}       a trace uploaded as content
    POST /rate   {"rate": "2mbit" | bits/s | null, "direction": "forward"}
    POST /delay  {"delay_ms": 40, "jitter_ms": 5, "direction": "forward"}
    POST /rate-schedule  {"schedule": "0:2mbit,20:500kbit" | [[0, "2mbit"], [20, 500000]],
                          "direction": "forward"}   times count from this request; POST /rate ends it
    POST /reorder    {"probability": 0.05, "delay_ms": 10, "direction": "forward"}  (delay_ms optional)
    POST /duplicate  {"probability": 0.01, "direction": "forward"}
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from jscc_stream.netem.loss import parse_loss_spec
from jscc_stream.netem.rates import parse_rate
from jscc_stream.netem.shim import Shim, ShimConfig, run_shim
from jscc_stream.netem.traces import TraceDir, trace_from_upload
from jscc_stream.udp import is_loopback
from jscc_stream.web import RequestGuard, json_error, serve_app

__all__ = ["ControlConfig", "ControlServer", "ControlError", "is_loopback", "run_shim_with_control"]

log = logging.getLogger("jscc_stream.netem.control")

_MAX_BODY = 512 << 10  # room for an uploaded trace


class ControlError(ValueError):
    """A control-API setup mistake (bad address, missing token)."""


@dataclass
class ControlConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    token: str | None = None
    trace_dir: Path | None = None  # where POST /loss may name traces from (trace:NAME)

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ControlError(f"control port out of range: {self.port}")
        if self.token is not None and not self.token.strip():
            raise ControlError("the control token is empty")
        if self.token is None and not is_loopback(self.host):
            raise ControlError(f"--control on {self.host} (not loopback) needs --control-token or "
                               "JSCC_CONTROL_TOKEN: anyone reaching it could reshape the link")
        if self.trace_dir is not None and not self.trace_dir.is_dir():
            raise ControlError(f"--trace-dir {self.trace_dir} is not a directory")


class ControlServer:
    """The aiohttp app around a :class:`Shim`.  ``await start()`` binds; ``attach(shim)`` arms it."""

    def __init__(self, config: ControlConfig, shim: Shim | None = None) -> None:
        config.check()
        self.config = config
        self.shim = shim
        self.traces = TraceDir(config.trace_dir)
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self.app = web.Application(client_max_size=_MAX_BODY, middlewares=[RequestGuard(token=config.token).middleware, self._ready])
        self.app.add_routes([web.get("/stats", self._stats), web.post("/loss", self._loss),
                             web.post("/rate", self._rate), web.post("/delay", self._delay),
                             web.post("/rate-schedule", self._rate_schedule),
                             web.post("/reorder", self._reorder), web.post("/duplicate", self._duplicate)])

    def attach(self, shim: Shim) -> None:
        self.shim = shim

    async def start(self) -> tuple[str, int]:
        try:
            self._runner, self.address = await serve_app(self.app, self.config.host, self.config.port)
        except OSError as exc:
            raise ControlError(f"cannot serve the control API on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror or exc}") from None
        log.info("control API on http://%s:%d%s", self.address[0], self.address[1],
                 " (token required)" if self.config.token else "")
        return self.address

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- middleware and handlers ------------------------------------------------------------------
    @web.middleware
    async def _ready(self, request: web.Request, handler):
        if self.shim is None or self.shim.forward_link is None:
            return json_error(503, "the shim is not running yet")
        return await handler(request)

    async def _stats(self, request: web.Request) -> web.Response:
        assert self.shim is not None
        return web.json_response(self.shim.stats())

    async def _loss(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        spec, upload = body.get("spec"), body.get("trace")
        if upload is not None:
            if spec is not None:
                raise _bad("send either 'spec' or 'trace', not both")
            return self._apply(lambda d: self.shim.set_loss(trace_from_upload(upload), d), body)
        if not isinstance(spec, str) or not spec.strip():
            raise _bad("'spec' must be a loss spec string, e.g. \"uniform:0.2\" or \"ge10\" (or send 'trace')")
        # trace:NAME only from --trace-dir: a path from the network is never opened
        return self._apply(lambda d: self.shim.set_loss(parse_loss_spec(spec, open_trace=self.traces.open), d),
                           body)

    async def _rate(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        rate = body.get("rate")
        if isinstance(rate, str) and rate.strip().lower() in ("", "none", "off", "unlimited"):
            rate = None
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (str, int, float))):
            raise _bad("'rate' must be e.g. \"2mbit\", a number of bit/s, or null")
        if isinstance(rate, (int, float)):
            try:
                rate = _number(rate)  # finite: an infinite or huge one broke the link (500s after)
            except TypeError:
                raise _bad("'rate' must be a finite number of bit/s") from None
            if not rate > 0:
                raise _bad("'rate' must be positive (null removes the bottleneck)")
        return self._apply(lambda d: self.shim.set_rate(rate, d), body)

    async def _delay(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            delay = float(body.get("delay_ms", 0.0))
            jitter = float(body.get("jitter_ms", 0.0))
        except (TypeError, ValueError, OverflowError):
            raise _bad("'delay_ms' and 'jitter_ms' must be numbers") from None
        if not (0 <= delay <= 10_000 and 0 <= jitter <= 10_000):
            raise _bad("'delay_ms' and 'jitter_ms' must be in [0, 10000]")
        return self._apply(lambda d: self.shim.set_delay(delay, jitter, d), body)

    async def _rate_schedule(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        sched = body.get("schedule")
        if isinstance(sched, list):
            try:
                sched = tuple((_number(t), parse_rate(r) if isinstance(r, str) else _number(r))
                              for t, r in sched)
            except (TypeError, ValueError):
                raise _bad("'schedule' entries must be [seconds, rate] pairs, e.g. [20, \"500kbit\"]"
                           ) from None
        elif not isinstance(sched, str):
            raise _bad("'schedule' must be e.g. \"0:2mbit,20:500kbit\" or [[0, \"2mbit\"], ...]")
        return self._apply(lambda d: self.shim.set_rate_schedule(sched, d), body)

    async def _reorder(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        p = _probability(body)
        delay = body.get("delay_ms")
        if delay is not None:
            try:
                delay = _number(delay)
            except (TypeError, ValueError):
                raise _bad("'delay_ms' must be a number") from None
            if not 0 <= delay <= 10_000:
                raise _bad("'delay_ms' must be in [0, 10000]")
        return self._apply(lambda d: self.shim.set_impairments(reorder=p, reorder_delay_ms=delay,
                                                               direction=d), body)

    async def _duplicate(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        p = _probability(body)
        return self._apply(lambda d: self.shim.set_impairments(duplicate=p, direction=d), body)

    def _apply(self, change, body: dict[str, Any]) -> web.Response:
        assert self.shim is not None
        direction = body.get("direction", "forward")
        if direction not in ("forward", "reverse"):
            raise _bad("'direction' must be 'forward' or 'reverse'")
        try:
            change(direction)
        except ValueError as exc:  # LossSpecError, bad rate text, negative delay
            raise _bad(str(exc)) from None
        return web.json_response(self.shim.stats())


def _number(v: Any) -> float:
    """A JSON number (not a bool), finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"not a number: {v!r}")
    try:
        f = float(v)  # a JSON integer may be too large for a float
    except OverflowError:
        raise TypeError(f"not a finite number: {v!r}") from None
    if not math.isfinite(f):
        raise TypeError(f"not a finite number: {v!r}")
    return f


def _probability(body: dict[str, Any]) -> float:
    p = body.get("probability")
    try:
        p = _number(p)
    except TypeError:
        raise _bad("'probability' must be a number in [0, 1]") from None
    if not 0 <= p <= 1:
        raise _bad("'probability' must be in [0, 1]")
    return p


def _bad(message: str) -> web.HTTPBadRequest:
    import json

    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


async def run_shim_with_control(config: ShimConfig, control: ControlConfig,
                                stats_json: Path | None = None) -> dict[str, Any]:
    """:func:`run_shim` plus the control API; the API binds first so a bad address fails early."""
    server = ControlServer(control)
    await server.start()
    try:
        return await run_shim(config, stats_json, on_ready=server.attach)
    finally:
        await asyncio.shield(server.close())

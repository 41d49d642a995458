"""The browser viewer of ``jscc-recv --web HOST:PORT``: live video, the original, charts, controls.

One WebSocket per page (``/ws``) carries everything the page shows: a JSON message of
per-frame statistics (blocks received, byte loss, PSNR, latency, decode time) for every frame
the receiver releases, and the newest decoded frame (and its original) as JPEG.  Statistics
are never dropped; pictures are: a page that draws slowly gets the newest picture, not a
backlog, so what it shows stays live.

The original beside the received video comes from one of two places:

* ``--web-original SPEC``: the receiver regenerates the sender's deterministic source
  (``synthetic[:SEED]``, or an image folder/glob slideshow) for each frame id, so the page shows
  the exact frame that was sent and a per-frame PSNR.  SPEC must match the sender's ``--source``
  (and ``--seed`` for a slideshow); the stream description gives size and fps.
* the browser's own camera: when the page sends its camera to ``jscc-send --source webrtc``, it
  shows its local preview as the original (no PSNR: the receiver never sees those pixels).

The page's loss and rate controls go to the shim's control API (``--web-shim URL``, with the
token from ``--web-shim-token`` or ``JSCC_CONTROL_TOKEN``) through this server, so the shim stays
on localhost (or behind its token) and the browser never holds the shim's token.

Who may use the viewer (docs/security.md): bound to loopback, the browsers of this machine, with
every POST JSON and from the page's own origin; bound anywhere else, only with the viewer's own
token (``--web-token``, ``$JSCC_WEB_TOKEN``, or one generated and printed at start): the printed
URL carries it once, the server turns it into a cookie the page's requests then carry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout, WSMsgType, web

from jscc_stream.errors import UserError
from jscc_stream.metrics import psnr
from jscc_stream.proto.seq import frame_diff
from jscc_stream.sources import open_source
from jscc_stream.udp import is_loopback, parse_hostport
from jscc_stream.web import RequestGuard, serve_app

from .outputs import FrameRecord

__all__ = ["WebConfig", "WebViewer", "add_web_args", "viewer_from_args", "STATIC_DIR"]

log = logging.getLogger("jscc.recv.web")

STATIC_DIR = Path(__file__).with_name("static")
KIND_RECEIVED, KIND_ORIGINAL = 0, 1
_FRAME_HDR = struct.Struct("!BI")  # kind, frame id (low 32 bits), then the JPEG
_MAX_PENDING_STATS = 600


def _hostport(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text, default_host="127.0.0.1")
    except ValueError:
        raise UserError(f"--web must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}") from None


def add_web_args(parser: argparse.ArgumentParser) -> None:
    """The viewer's options, in their own group of ``jscc-recv --help``."""
    g = parser.add_argument_group("web viewer")
    g.add_argument("--web", metavar="HOST:PORT",
                   help="serve the live viewer page here (video, original, charts, loss/rate controls), e.g. "
                        "127.0.0.1:8080. Any address but loopback (e.g. 0.0.0.0:8080, reachable from other "
                        "machines) requires a token: --web-token, or one generated and printed at start in "
                        "the page's URL (?token=...); see docs/security.md")
    g.add_argument("--web-token", metavar="TOKEN", default=None,
                   help="token the viewer requires (open the page as /?token=TOKEN once; the page then "
                        "keeps it in a cookie; scripts send Authorization: Bearer TOKEN); default "
                        "$JSCC_WEB_TOKEN, else none on loopback and a random one elsewhere")
    g.add_argument("--web-original", metavar="SPEC",
                   help="regenerate the sender's deterministic source (synthetic[:SEED], image folder or glob) "
                        "to show the original beside the received video and chart PSNR")
    g.add_argument("--web-seed", type=int, default=0,
                   help="the sender's --seed, for a --web-original slideshow")
    g.add_argument("--web-shim", metavar="URL",
                   help="the shim's control API (jscc-netem --control), e.g. http://127.0.0.1:8090; enables "
                        "the page's loss and rate controls")
    g.add_argument("--web-shim-token", metavar="TOKEN", default=None,
                   help="token for --web-shim (default: $JSCC_CONTROL_TOKEN)")
    g.add_argument("--web-sender", metavar="URL",
                   help="the WebRTC signalling address of 'jscc-send --source webrtc' as the browser reaches it "
                        "(default: http://<the page's host>:8081)")
    g.add_argument("--web-jpeg-quality", type=int, default=80, help="JPEG quality of the pictures sent to the page")


@dataclass
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    original: str | None = None
    seed: int = 0
    shim_url: str | None = None
    shim_token: str | None = None
    token: str | None = None  # the viewer's own (None: loopback, no token)
    sender_url: str | None = None
    jpeg_quality: int = 80


def viewer_from_args(args: argparse.Namespace) -> "WebViewer | None":
    """A viewer for ``jscc-recv`` when ``--web`` was given, else None (user errors raise)."""
    if not getattr(args, "web", None):
        return None
    host, port = _hostport(args.web)
    if not 1 <= args.web_jpeg_quality <= 100:
        raise UserError("--web-jpeg-quality must be in [1, 100]")
    for name in ("web_shim", "web_sender"):
        url = getattr(args, name)
        if url and not url.startswith(("http://", "https://")):
            raise UserError(f"--{name.replace('_', '-')} must be an http:// or https:// URL, got {url!r}")
    if args.web_original:
        _check_original(args.web_original)
    token = args.web_shim_token if args.web_shim_token is not None else os.environ.get("JSCC_CONTROL_TOKEN")
    return WebViewer(WebConfig(host=host, port=port, original=args.web_original, seed=args.web_seed,
                               shim_url=args.web_shim.rstrip("/") if args.web_shim else None,
                               shim_token=token or None, token=_viewer_token(args.web_token, host),
                               sender_url=args.web_sender.rstrip("/") if args.web_sender else None,
                               jpeg_quality=args.web_jpeg_quality))


def _viewer_token(given: str | None, host: str) -> str | None:
    """--web-token, else $JSCC_WEB_TOKEN, else a random one off loopback (None on loopback)."""
    token = given if given is not None else os.environ.get("JSCC_WEB_TOKEN")
    if token is not None:
        if not token.strip() or any(c.isspace() or c in ";,\"" for c in token):
            raise UserError("--web-token must be non-empty, without spaces, ';', ',' or quotes")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(18)


def _check_original(spec: str) -> None:
    if spec.startswith(("webcam", "webrtc")):
        raise UserError("--web-original must be a deterministic source (synthetic[:SEED], an image folder or "
                        "glob); a camera's frames cannot be regenerated at the receiver")
    if not (spec == "synthetic" or spec.startswith("synthetic:") or Path(spec).is_dir()
            or any(c in spec for c in "*?[") or Path(spec).is_file()):
        raise UserError(f"--web-original {spec!r} is not synthetic[:SEED], an image folder, file or glob")


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    stats: deque = field(default_factory=lambda: deque(maxlen=_MAX_PENDING_STATS))
    pictures: dict[int, bytes] = field(default_factory=dict)  # kind -> newest message
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class _Originals:
    """The sender's source, regenerated per frame id (opened once the stream's size and fps are known)."""

    def __init__(self, spec: str, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self._key: tuple[int, int, float] | None = None
        self._source = None

    def frame(self, frame_id: int, width: int, height: int, fps: float) -> np.ndarray | None:
        key = (width, height, fps)
        if key != self._key:
            if self._source is not None:
                self._source.close()
            self._source = open_source(self.spec, width, height, fps, seed=self.seed)
            self._key = key
        return self._source.read(frame_id)


class WebViewer:
    """aiohttp server of the viewer page.  ``on_frame`` is the receiver's per-frame callback."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._clients: set[_Client] = set()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._receiver = None
        self._originals = _Originals(config.original, config.seed) if config.original else None
        self._recent: deque[dict[str, Any]] = deque(maxlen=300)
        self._out_times: deque[float] = deque(maxlen=512)
        self.frames_seen = 0
        self._newest: dict[int, int] = {}  # ssrc -> newest frame id pictured
        self.address: tuple[str, int] | None = None
        self.guard = RequestGuard(token=config.token, cookie=True)
        self.app = web.Application(client_max_size=16 << 10, middlewares=[self.guard.middleware])
        self.app.add_routes([
            web.get("/", self._index), web.get("/ws", self._ws), web.get("/api/config", self._api_config),
            web.get("/api/stats", self._api_stats), web.get("/api/shim/stats", self._shim_stats),
            web.post("/api/shim/{what:loss|rate|rate-schedule|delay|reorder|duplicate}", self._shim_post),
            web.static("/static", STATIC_DIR, follow_symlinks=False),
        ])

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, receiver=None) -> tuple[str, int]:
        """Bind; ``receiver`` (a :class:`Receiver`) lends its stream descriptions (size, fps)."""
        self._receiver = receiver
        try:
            self._runner, self.address = await serve_app(self.app, self.config.host, self.config.port)
        except OSError as exc:
            raise UserError(f"cannot serve the viewer on {self.config.host}:{self.config.port}: "
                            f"{exc.strerror or exc}") from None
        if self.config.token is None:
            log.info("viewer page on http://%s:%d/", *self.address)
        else:  # the one place the token is shown: whoever opens this URL can use the viewer
            log.info("viewer page on http://%s:%d/?token=%s (token required)", *self.address, self.config.token)
        return self.address

    async def close(self) -> None:
        for c in list(self._clients):
            await c.ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- frames in -------------------------------------------------------------------------------
    def _stream_fps(self, ssrc: int) -> float:
        rx = self._receiver
        stream = rx.reasm.streams.get(ssrc) if rx is not None else None
        return stream.info.fps if stream is not None else 30.0

    def on_frame(self, rec: FrameRecord, frame: np.ndarray | None) -> None:
        """Called on the event loop for every frame the receiver releases."""
        now = time.monotonic()
        self.frames_seen += 1
        if frame is not None:
            self._out_times.append(now)
        stat: dict[str, Any] = {
            "frame_id": rec.frame_id, "decoded": rec.decoded, "reason": rec.reason,
            "blocks": rec.blocks_received, "partial": rec.blocks_partial, "blocks_expected": rec.blocks_expected,
            "loss": round(1.0 - rec.bytes_received / max(1, rec.bytes_expected), 4),
            "latency_ms": rec.capture_to_display_ms, "decode_ms": rec.decode_ms, "psnr": None,
            "t": round(time.time(), 3),
            # video codec: I or P, and how many frames back its reference is
            "frame_type": rec.extra.get("frame_type"), "ref_back": rec.extra.get("ref_back"),
        }
        original = None
        if self._clients and frame is not None and self._originals is not None:
            h, w = frame.shape[:2]
            try:
                original = self._originals.frame(rec.frame_id, w, h, self._stream_fps(rec.ssrc))
            except (UserError, OSError, ValueError) as exc:
                log.warning("cannot regenerate the original (%s): showing none", exc)
                self._originals = None
            if original is not None and original.shape == frame.shape:
                stat["psnr"] = round(psnr(frame, original), 2)
        self._recent.append(stat)
        if not self._clients:
            return
        # decoders may finish out of order: never replace a newer picture with an older one
        newest = self._newest.get(rec.ssrc)
        if newest is not None and frame_diff(rec.frame_id, newest) <= 0:
            frame = original = None
        elif frame is not None:
            self._newest[rec.ssrc] = rec.frame_id
            if len(self._newest) > 8:
                self._newest.pop(next(iter(self._newest)))
        pictures: dict[int, bytes] = {}
        q = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        for kind, img in ((KIND_RECEIVED, frame), (KIND_ORIGINAL, original)):
            if img is not None:
                ok, jpg = cv2.imencode(".jpg", img, q)
                if ok:
                    pictures[kind] = _FRAME_HDR.pack(kind, rec.frame_id & 0xFFFFFFFF) + jpg.tobytes()
        for c in self._clients:
            c.stats.append(stat)
            c.pictures.update(pictures)
            c.wake.set()

    def server_fps(self) -> float:
        now = time.monotonic()
        return float(sum(1 for t in self._out_times if now - t <= 1.0))

    # -- HTTP ------------------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _api_config(self, request: web.Request) -> web.Response:
        sender = self.config.sender_url or f"http://{request.url.host or '127.0.0.1'}:8081"
        return web.json_response({"sender_url": sender, "shim": self.config.shim_url is not None,
                                  "original": self.config.original})

    async def _api_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"frames_seen": self.frames_seen, "server_fps": self.server_fps(),
                                  "clients": len(self._clients), "recent": list(self._recent)[-60:]})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
        await ws.prepare(request)
        client = _Client(ws)
        client.stats.extend(self._recent)  # the charts start with recent history
        client.wake.set()
        self._clients.add(client)
        pump = asyncio.create_task(self._pump(client))
        try:
            async for msg in ws:  # the page sends nothing we need; reading keeps pings flowing
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(client)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        return ws

    async def _pump(self, c: _Client) -> None:
        """Per page: statistics in order, then only the newest pictures (a slow page skips pictures)."""
        while not c.ws.closed:
            await c.wake.wait()
            c.wake.clear()
            try:
                if c.stats:
                    batch = list(c.stats)
                    c.stats.clear()
                    await c.ws.send_str(json.dumps({"type": "stats", "frames": batch,
                                                    "server_fps": self.server_fps()}))
                for kind in (KIND_ORIGINAL, KIND_RECEIVED):
                    data = c.pictures.pop(kind, None)
                    if data is not None:
                        await c.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return

    # -- shim control proxy ----------------------------------------------------------------------
    def _shim_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.shim_token}"} if self.config.shim_token else {}

    async def _shim_call(self, method: str, path: str, body: Any = None) -> web.Response:
        if self.config.shim_url is None:
            return web.json_response({"error": "no shim control API configured (jscc-recv --web-shim URL)"},
                                     status=404)
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=3))
        try:
            async with self._session.request(method, self.config.shim_url + path, json=body,
                                             headers=self._shim_headers()) as resp:
                text = await resp.text()
                return web.Response(text=text, status=resp.status, content_type="application/json")
        except (ClientError, asyncio.TimeoutError) as exc:
            return web.json_response({"error": f"shim control API unreachable: {exc or type(exc).__name__}"},
                                     status=502)

    async def _shim_stats(self, request: web.Request) -> web.Response:
        return await self._shim_call("GET", "/stats")

    async def _shim_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "the body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        return await self._shim_call("POST", "/" + request.match_info["what"], body)

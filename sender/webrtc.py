"""A browser's camera as a jscc-send source, over WebRTC (aiortc).

The demo page captures the camera with ``getUserMedia`` and sends it as an ordinary WebRTC
video track; this module answers its offer (``POST /offer`` with ``{"sdp", "type"}``) and keeps
the newest decoded picture, which the send loop reads like any other source.  So no camera
device has to be passed into a container: the browser owns the camera.

The signalling server and the peer connections run on their own thread and event loop, so the
send loop (and its encoder thread) never waits on WebRTC.  One browser at a time: a new offer
closes the previous peer.  Until the first picture arrives (and after the browser leaves) the
source shows a grey "waiting for camera" frame, so the stream, and the viewer, keep running.

Only the viewer's page may offer (``jscc-send --webrtc-origin``, default the viewer's default
address ``http://127.0.0.1:8080`` and ``http://localhost:8080``): an offer must be JSON and its
Origin one of those, or it is refused (403) and answered without CORS permission, so no other web
page in the user's browser can replace the camera.  A request without Origin comes from no
browser (a local tool); bound off loopback, the network can send those: docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
from aiohttp import web

from jscc_stream.errors import UserError
from jscc_stream.sources import fit_frame
from jscc_stream.udp import is_loopback, parse_hostport
from jscc_stream.web import RequestGuard, json_error, serve_app

__all__ = ["WebRtcSourceConfig", "WebRtcSource", "parse_webrtc_spec", "parse_origin", "waiting_frame",
           "open_webrtc_source", "DEFAULT_ORIGINS"]

log = logging.getLogger("jscc.send.webrtc")

DEFAULT_SIGNAL = ("127.0.0.1", 8081)  # loopback: anyone who reaches it can feed the stream
_MAX_OFFER = 64 << 10
#: the viewer's page at its default address (jscc-recv --web 127.0.0.1:8080), by either name
DEFAULT_ORIGINS = ("http://127.0.0.1:8080", "http://localhost:8080")
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?", re.IGNORECASE)


def parse_origin(text: str) -> str:
    """``http[s]://HOST[:PORT]`` as a browser writes it in Origin (no path, no trailing slash)."""
    origin = text.strip().rstrip("/")
    if not _ORIGIN.fullmatch(origin):
        raise UserError(f"--webrtc-origin must be http[s]://HOST[:PORT], the viewer page's address as the "
                        f"browser shows it (e.g. http://127.0.0.1:8080), got {text!r}")
    return origin.lower()


def parse_webrtc_spec(spec: str) -> tuple[str, int]:
    """``webrtc`` | ``webrtc:PORT`` | ``webrtc:HOST:PORT`` -> where the signalling server listens."""
    if spec == "webrtc":
        return DEFAULT_SIGNAL
    if not spec.startswith("webrtc:"):
        raise UserError(f"not a webrtc source: {spec!r}")
    rest = spec[len("webrtc:"):]
    try:
        return parse_hostport(rest if ":" in rest else f":{rest}", default_host=DEFAULT_SIGNAL[0])
    except ValueError:
        raise UserError(f"bad port in {spec!r}: write webrtc[:HOST]:PORT, e.g. webrtc:127.0.0.1:8081") from None


def waiting_frame(width: int, height: int, text: str = "waiting for camera") -> np.ndarray:
    frame = np.full((height, width, 3), 96, np.uint8)
    scale = max(0.4, width / 640)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(frame, text, ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (230, 230, 230), 1, cv2.LINE_AA)
    return frame


@dataclass
class WebRtcSourceConfig:
    host: str = DEFAULT_SIGNAL[0]
    port: int = DEFAULT_SIGNAL[1]
    width: int = 320
    height: int = 240
    start_timeout: float = 10.0
    origins: tuple[str, ...] = DEFAULT_ORIGINS  # the viewer page's origins: the only ones that may offer


class WebRtcSource:
    """Source protocol (``read(index)``, ``close()``) fed by a browser's WebRTC video track."""

    def __init__(self, config: WebRtcSourceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._waiting = waiting_frame(config.width, config.height)
        self.frames_received = 0
        self.peers_connected = 0
        self.last_frame_at = 0.0
        self.address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._pcs: set = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="jscc-webrtc", daemon=True)
        self._thread.start()
        if not self._ready.wait(config.start_timeout):
            raise UserError("the WebRTC signalling server did not start in time")
        if self._error is not None:
            raise UserError(str(self._error))

    # -- Source protocol -------------------------------------------------------------------------
    def read(self, index: int) -> np.ndarray:
        with self._lock:
            latest = self._latest
        return self._waiting if latest is None else latest

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already gone
                pass
        self._thread.join(timeout=5)

    # -- the WebRTC thread -----------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor or logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.error("WebRTC thread failed: %s", exc)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        origins = frozenset(self.config.origins)
        guard = RequestGuard(origins=origins, check_host=is_loopback(self.config.host))
        app = web.Application(client_max_size=_MAX_OFFER, middlewares=[_cors(origins), guard.middleware])
        app.add_routes([web.post("/offer", self._on_offer), web.get("/status", self._on_status),
                        web.get("/", self._on_index)])
        try:
            runner, self.address = await serve_app(app, self.config.host, self.config.port)
        except OSError as exc:
            raise OSError(f"cannot serve WebRTC signalling on {self.config.host}:{self.config.port}: "
                          f"{exc.strerror or exc}") from None
        log.info("WebRTC source: browsers post offers to http://%s:%d/offer (pages from %s only)", *self.address,
                 ", ".join(self.config.origins))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await asyncio.gather(*(pc.close() for pc in list(self._pcs)), return_exceptions=True)
            await runner.cleanup()

    async def _on_index(self, request):
        return web.Response(text="jscc-send WebRTC source: open the viewer page (jscc-recv --web) and press "
                                 "'Start camera'; it posts its offer to /offer here.\n")

    async def _on_status(self, request):
        return web.json_response({"frames_received": self.frames_received, "peers": len(self._pcs),
                                  "peers_connected": self.peers_connected,
                                  "last_frame_age_s": round(time.monotonic() - self.last_frame_at, 3)
                                  if self.last_frame_at else None})

    async def _on_offer(self, request):
        from aiortc import RTCPeerConnection, RTCSessionDescription

        try:
            params = await request.json()
            offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
            if offer.type != "offer" or not isinstance(offer.sdp, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "POST {\"sdp\": ..., \"type\": \"offer\"}"}, status=400)
        if "\nm=video " not in offer.sdp.replace("\r\n", "\n"):
            return web.json_response({"error": "the offer carries no video track"}, status=400)
        for old in list(self._pcs):  # one browser at a time
            await old.close()
            self._pcs.discard(old)
        pc = RTCPeerConnection()
        self._pcs.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("WebRTC peer %s", pc.connectionState)
            if pc.connectionState == "connected":
                self.peers_connected += 1
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                self._pcs.discard(pc)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                asyncio.ensure_future(self._consume(track))

        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, RuntimeError) as exc:  # an offer aiortc cannot answer
            await pc.close()
            self._pcs.discard(pc)
            return web.json_response({"error": f"cannot answer this offer: {exc}"}, status=400)
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def _consume(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        w, h = self.config.width, self.config.height
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            img = fit_frame(frame.to_ndarray(format="bgr24"), w, h)
            with self._lock:
                self._latest = img
            self.frames_received += 1
            self.last_frame_at = time.monotonic()
        log.info("browser video track ended after %d frames", self.frames_received)
        with self._lock:
            self._latest = None


def _cors_headers(origin: str) -> dict[str, str]:
    # The viewer page is served by jscc-recv (another origin): it alone is let in, never "*".
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600",
            # Chrome's Private Network Access preflight (a public page calling localhost)
            "Access-Control-Allow-Private-Network": "true"}


def _cors(origins: frozenset[str]):
    """CORS for the allowed origins only; a preflight from any other origin is refused."""

    @web.middleware
    async def cors(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        headers = _cors_headers(origin) if origin in origins else {"Vary": "Origin"}
        if request.method == "OPTIONS":
            if origin not in origins:
                return json_error(403, "this page's origin may not use the WebRTC source (jscc-send --webrtc-origin)")
            return web.Response(status=204, headers=headers)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        resp.headers.update(headers)
        return resp

    return cors


def open_webrtc_source(spec: str, width: int, height: int,
                       origins: tuple[str, ...] = DEFAULT_ORIGINS) -> WebRtcSource:
    host, port = parse_webrtc_spec(spec)
    return WebRtcSource(WebRtcSourceConfig(host=host, port=port, width=width, height=height, origins=origins))


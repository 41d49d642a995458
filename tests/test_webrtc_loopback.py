"""The browser-camera source without a browser: an aiortc peer offers a video track of real
photographs to jscc-send's WebRTC source, which must hand the send loop those pictures; then the
whole path (WebRTC in -> jscc-send -> jscc-recv) decodes frames."""

from __future__ import annotations

import asyncio
import fractions
import socket
import time

import aiohttp
import numpy as np
import pytest

av = pytest.importorskip("av")
aiortc = pytest.importorskip("aiortc")

from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack  # noqa: E402

from jscc_stream.errors import UserError  # noqa: E402
from jscc_stream.metrics import psnr  # noqa: E402
from jscc_stream.sender.webrtc import (WebRtcSource, WebRtcSourceConfig,  # noqa: E402
                                       parse_origin, parse_webrtc_spec, waiting_frame)
from jscc_stream.sources import SyntheticSource, fit_frame  # noqa: E402

W, H = 320, 240


class PhotoTrack(VideoStreamTrack):
    """A camera stand-in: scikit-image photographs under a slow pan, 30 fps."""

    def __init__(self) -> None:
        super().__init__()
        self.src = SyntheticSource(W, H, 30.0, seed=2)
        self.sent: list[np.ndarray] = []
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        img = self.src.read(self.n)
        self.n += 1
        self.sent.append(img)
        del self.sent[:-90]
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90000)
        return frame


VIEWER = "http://127.0.0.1:8080"  # the default viewer origin, allowed by default


async def _connect(url: str, track: PhotoTrack) -> RTCPeerConnection:
    pc = RTCPeerConnection()
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers before returning
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp,
                                                   "type": pc.localDescription.type},
                             headers={"Origin": VIEWER}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Access-Control-Allow-Origin"] == VIEWER
            answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    return pc


async def _wait(pred, timeout: float) -> None:
    async def loop():
        while not pred():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(loop(), timeout)


@pytest.fixture
def source():
    src = WebRtcSource(WebRtcSourceConfig(host="127.0.0.1", port=0, width=W, height=H))
    yield src
    src.close()


def test_spec_parsing():
    assert parse_webrtc_spec("webrtc") == ("127.0.0.1", 8081)
    assert parse_webrtc_spec("webrtc:9000") == ("127.0.0.1", 9000)
    assert parse_webrtc_spec("webrtc:0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_webrtc_spec("webrtc:[::1]:9000") == ("::1", 9000)
    for bad in ("webrtc:", "webrtc:host:port", "webrtc:99999", "webcam"):
        with pytest.raises(UserError):
            parse_webrtc_spec(bad)


def test_fit_frame_crops_to_aspect_without_stretching():
    wide = np.zeros((480, 960, 3), np.uint8)
    wide[:, 160:800] = 255  # the centre 4:3 part (640x480) is white
    out = fit_frame(wide, W, H)
    assert out.shape == (H, W, 3) and out.mean() > 250
    tall = np.zeros((640, 240, 3), np.uint8)
    assert fit_frame(tall, W, H).shape == (H, W, 3)
    same = np.ones((H, W, 3), np.uint8)
    assert fit_frame(same, W, H) is same


def test_waiting_frame_before_any_camera(source):
    frame = source.read(0)
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, waiting_frame(W, H))


def test_port_in_use_is_a_user_error(source):
    with pytest.raises(UserError, match="cannot serve"):
        WebRtcSource(WebRtcSourceConfig(host="127.0.0.1", port=source.address[1]))


async def test_bad_offers_and_cors_preflight(source):
    url = f"http://127.0.0.1:{source.address[1]}"
    async with aiohttp.ClientSession() as http:
        async with http.options(url + "/offer", headers={"Origin": VIEWER,
                                                         "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == VIEWER
        for body in (b"{", b'{"sdp": "x"}', b'{"sdp": "v=0", "type": "answer"}', b"[]"):
            async with http.post(url + "/offer", data=body,
                                 headers={"Origin": VIEWER, "Content-Type": "application/json"}) as r:
                assert r.status == 400
                assert r.headers["Access-Control-Allow-Origin"] == VIEWER
        async with http.post(url + "/offer", json={"sdp": "garbage", "type": "offer"}) as r:
            assert r.status == 400
        async with http.get(url + "/status") as r:
            assert (await r.json())["frames_received"] == 0


async def test_only_the_viewer_origin_may_offer(source):
    """Issue 16: the signalling answered Access-Control-Allow-Origin: *, so any web page could
    replace the camera feed."""
    url = f"http://127.0.0.1:{source.address[1]}"
    offer = b'{"sdp": "v=0", "type": "offer"}'
    async with aiohttp.ClientSession() as http:
        async with http.options(url + "/offer", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        for headers, status in (({"Origin": "http://evil.example", "Content-Type": "application/json"}, 403),
                                ({"Origin": VIEWER, "Content-Type": "text/plain"}, 415)):
            async with http.post(url + "/offer", data=offer, headers=headers) as r:
                assert r.status == status and "error" in await r.json()
                assert r.headers.get("Access-Control-Allow-Origin") in (None, VIEWER)
        async with http.get(url + "/status", headers={"Origin": "http://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers  # another page cannot read it
    assert source.peers_connected == 0 and not source._pcs


async def test_the_allowed_origins_are_configured():
    src = WebRtcSource(WebRtcSourceConfig(host="127.0.0.1", port=0, width=W, height=H,
                                          origins=(parse_origin("HTTP://Viewer.Example:9000/"),)))
    url = f"http://127.0.0.1:{src.address[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            for origin, status in ((VIEWER, 403), ("http://viewer.example:9000", 204)):
                async with http.options(url + "/offer", headers={"Origin": origin,
                                                                 "Access-Control-Request-Method": "POST"}) as r:
                    assert r.status == status, origin
    finally:
        src.close()
    for bad in ("viewer.example", "http://a/b", "ftp://x", "http://", "*"):
        with pytest.raises(UserError, match="--webrtc-origin"):
            parse_origin(bad)


async def test_aiortc_peer_feeds_the_source(source):
    track = PhotoTrack()
    pc = await _connect(f"http://127.0.0.1:{source.address[1]}", track)
    try:
        await _wait(lambda: source.frames_received >= 20, 30)
        got = source.read(123)  # any index: the newest picture
        assert got.shape == (H, W, 3) and not np.array_equal(got, waiting_frame(W, H))
        # VP8 at WebRTC's start-up bitrate is lossy, but it is the photograph that was sent
        best = max(psnr(got, sent) for sent in list(track.sent))
        assert best > 18, best
        assert source.peers_connected == 1
    finally:
        await pc.close()
    await _wait(lambda: np.array_equal(source.read(0), waiting_frame(W, H)), 10)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_webrtc_camera_through_sender_and_receiver(source, tiny_codec):
    """Browser stand-in -> WebRTC -> Sender (encode, packetize) -> Receiver (decode)."""
    from jscc_stream.receiver.outputs import Outputs
    from jscc_stream.receiver.receiver import Receiver, ReceiverConfig, open_listen_socket
    from jscc_stream.sender.sender import Sender, SenderConfig

    track = PhotoTrack()
    pc = await _connect(f"http://127.0.0.1:{source.address[1]}", track)
    port = _free_udp_port()
    sock = open_listen_socket(f"127.0.0.1:{port}")
    got: list = []
    receiver = Receiver(sock, lambda info: tiny_codec, Outputs(), ReceiverConfig(latency=0.2),
                        on_frame=lambda rec, frame: got.append((rec, frame)))
    rx_task = asyncio.create_task(receiver.run())
    try:
        await _wait(lambda: source.frames_received >= 1, 30)
        sender = Sender(tiny_codec, source, SenderConfig(width=W, height=H, fps=15, dests=[f"127.0.0.1:{port}"],
                                                         frames=12))
        t0 = time.monotonic()
        stats = await asyncio.wait_for(sender.run(), 60)
        assert stats.frames_sent == 12 and time.monotonic() - t0 < 60
        await _wait(lambda: len(got) >= 6, 20)
    finally:
        receiver.stop_event.set()
        await asyncio.gather(rx_task, return_exceptions=True)
        sock.close()
        await pc.close()
    decoded = [(r, f) for r, f in got if r.decoded]
    assert decoded and all(f.shape == (H, W, 3) for _, f in decoded)
    assert all(r.blocks_received == r.blocks_expected for r, _ in decoded)  # loopback: nothing lost

"""The viewer server of jscc-recv --web: page and assets, WebSocket push of statistics and
pictures (with the regenerated original and PSNR), the shim-control proxy, and its CLI errors."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import cv2
import numpy as np
import pytest

from jscc_stream.netem.control import ControlConfig, ControlServer
from jscc_stream.netem.shim import Shim, ShimConfig
from jscc_stream.receiver.outputs import FrameRecord
from jscc_stream.metrics import psnr
from jscc_stream.receiver.web import KIND_ORIGINAL, KIND_RECEIVED, WebConfig, WebViewer
from jscc_stream.sources import SyntheticSource

W, H = 320, 240


def _rec(fid: int, blocks: int = 8, bytes_received: int = 4800) -> FrameRecord:
    return FrameRecord(frame_id=fid, ssrc=1, reason="complete", decoded=True, blocks_expected=8,
                       blocks_received=blocks, blocks_partial=0, bytes_expected=4800, bytes_received=bytes_received,
                       missing=[], dscp=[-1] * 8, wait_ms=1.0, decode_ms=2.0, capture_to_display_ms=42.0)


@pytest.fixture
async def viewer():
    v = WebViewer(WebConfig(host="127.0.0.1", port=0, original="synthetic:1"))
    host, port = await v.start()
    v.url = f"http://{host}:{port}"
    yield v
    await v.close()


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == 99.0
    b = a.copy()
    b[0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / (255 ** 2 / 48)))


async def test_page_and_assets_are_served(viewer):
    async with aiohttp.ClientSession() as http:
        async with http.get(viewer.url + "/") as r:
            html = await r.text()
            assert r.status == 200 and "jscc-stream" in html
        for asset in ("app.js", "style.css"):
            async with http.get(viewer.url + "/static/" + asset) as r:
                assert r.status == 200
        assert "cdn" not in html.lower() and "https://" not in html  # works offline
        async with http.get(viewer.url + "/static/../web.py") as r:
            assert r.status in (403, 404)
        async with http.get(viewer.url + "/api/config") as r:
            cfg = await r.json()
        assert cfg["original"] == "synthetic:1" and cfg["shim"] is False
        assert cfg["sender_url"] == "http://127.0.0.1:8081"  # the page's host, default port


async def test_websocket_pushes_stats_pictures_and_psnr(viewer):
    src = SyntheticSource(W, H, 30.0, seed=1)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(viewer.url + "/ws") as ws:
            await asyncio.wait_for(_until(lambda: viewer._clients), 5)
            exact = src.read(7)
            noisy = np.clip(exact.astype(np.int16) + np.random.default_rng(0).integers(-20, 21, exact.shape),
                            0, 255).astype(np.uint8)
            viewer.on_frame(_rec(7), exact)
            predicted = _rec(8, blocks=5, bytes_received=3000)
            predicted.extra = {"frame_type": "P", "ref_back": 3}  # what the receiver records of a video codec's frame
            viewer.on_frame(predicted, noisy)
            viewer.on_frame(_rec(9, blocks=0, bytes_received=0), None)  # undecodable: stats only
            viewer.on_frame(_rec(6), exact)  # a decoder finishing late: stats, but no older picture
            stats: list[dict] = []
            pictures: dict[int, tuple[int, np.ndarray]] = {}
            while len(stats) < 4 or len(pictures) < 2:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    body = json.loads(msg.data)
                    assert body["type"] == "stats"
                    stats += body["frames"]
                else:
                    kind, fid = struct.unpack("!BI", msg.data[:5])
                    pictures[kind] = (fid, cv2.imdecode(np.frombuffer(msg.data[5:], np.uint8), cv2.IMREAD_COLOR))
    by_id = {s["frame_id"]: s for s in stats}
    assert by_id[7]["psnr"] == 99.0 and by_id[7]["blocks"] == 8 and by_id[7]["loss"] == 0
    assert 20 < by_id[8]["psnr"] < 40 and by_id[8]["blocks"] == 5 and by_id[8]["loss"] == pytest.approx(0.375)
    assert by_id[9]["psnr"] is None and by_id[9]["decoded"] is True
    assert by_id[6]["blocks"] == 8
    assert (by_id[8]["frame_type"], by_id[8]["ref_back"]) == ("P", 3) and by_id[7]["frame_type"] is None
    # only the newest pictures are kept (frame 8's, not the late frame 6's); the original is the exact source
    fid, received = pictures[KIND_RECEIVED]
    ofid, original = pictures[KIND_ORIGINAL]
    assert fid == ofid == 8
    assert received.shape == original.shape == (H, W, 3)
    assert psnr(original, src.read(8)) > 30


async def test_stats_are_kept_without_clients(viewer):
    for i in range(5):
        viewer.on_frame(_rec(i), np.zeros((H, W, 3), np.uint8))
    async with aiohttp.ClientSession() as http:
        async with http.get(viewer.url + "/api/stats") as r:
            st = await r.json()
    assert st["frames_seen"] == 5 and [f["frame_id"] for f in st["recent"]] == list(range(5))
    assert st["recent"][0]["psnr"] is None  # no page open: no original regenerated


async def _until(pred, poll: float = 0.01):
    while not pred():
        await asyncio.sleep(poll)


async def test_shim_proxy_with_token():
    shim = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=("127.0.0.1", 9), stats_interval=0))
    await shim.start()
    ctl = ControlServer(ControlConfig(host="127.0.0.1", port=0, token="tok"), shim)
    chost, cport = await ctl.start()
    v = WebViewer(WebConfig(port=0, shim_url=f"http://{chost}:{cport}", shim_token="tok"))
    host, port = await v.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://{host}:{port}"
            async with http.post(base + "/api/shim/loss", json={"spec": "uniform:0.2"}) as r:
                assert r.status == 200
            assert shim.forward_link.config.loss.mean_loss == pytest.approx(0.2)
            async with http.post(base + "/api/shim/rate", json={"rate": "1mbit"}) as r:
                assert r.status == 200
            assert shim.forward_link.config.rate_bps == 1e6
            async with http.get(base + "/api/shim/stats") as r:
                assert (await r.json())["forward"]["rate_bps"] == 1e6
            async with http.post(base + "/api/shim/loss", json={"spec": "nope"}) as r:
                assert r.status == 400  # the shim's own message comes through
                assert "unknown loss" in (await r.json())["error"]
            async with http.post(base + "/api/shim/loss", data=b"{", headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
            async with http.post(base + "/api/shim/shutdown", json={}) as r:
                assert r.status in (404, 405)
        v.config.shim_token = "wrong"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/api/shim/stats") as r:
                assert r.status == 401
    finally:
        await v.close()
        await ctl.close()
        shim.close()


async def test_shim_proxy_without_shim_or_unreachable():
    v = WebViewer(WebConfig(port=0))
    host, port = await v.start()
    dead = WebViewer(WebConfig(port=0, shim_url="http://127.0.0.1:9"))
    dhost, dport = await dead.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/api/shim/stats") as r:
                assert r.status == 404
            async with http.get(f"http://{dhost}:{dport}/api/shim/stats") as r:
                assert r.status == 502
    finally:
        await v.close()
        await dead.close()


@pytest.fixture
async def shim_behind_viewer(request):
    """A shim with its control API (token "tok") and a viewer proxying it with ``WebConfig(**param)``."""
    shim = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=("127.0.0.1", 9), stats_interval=0))
    await shim.start()
    ctl = ControlServer(ControlConfig(host="127.0.0.1", port=0, token="tok"), shim)
    chost, cport = await ctl.start()
    v = WebViewer(WebConfig(port=0, shim_url=f"http://{chost}:{cport}", shim_token="tok", **request.param))
    host, port = await v.start()
    v.url = f"http://{host}:{port}"
    yield shim, v
    await v.close()
    await ctl.close()
    shim.close()


JSON = {"Content-Type": "application/json"}
LOSS = b'{"spec": "uniform:0.5"}'


@pytest.mark.parametrize("shim_behind_viewer", [{}], indirect=True)
async def test_viewer_refuses_cross_site_changes_and_websockets(shim_behind_viewer):
    """Issue 16: any web page could POST text/plain to the viewer and reshape the link through it."""
    shim, v = shim_behind_viewer
    port = v.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for headers, status in (({"Content-Type": "text/plain"}, 415),
                                ({**JSON, "Origin": "http://evil.example"}, 403),
                                ({**JSON, "Host": f"rebound.example:{port}"}, 403)):
            async with http.post(v.url + "/api/shim/loss", data=LOSS, headers=headers) as r:
                assert r.status == status and "error" in await r.json()
        assert shim.forward_link.config.loss.mean_loss == 0
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:  # another site reading the video
            await http.ws_connect(v.url + "/ws", headers={"Origin": "http://evil.example"})
        assert exc.value.status == 403
        async with http.ws_connect(v.url + "/ws", headers={"Origin": v.url}):
            pass
        async with http.post(v.url + "/api/shim/loss", data=LOSS, headers={**JSON, "Origin": v.url}) as r:
            assert r.status == 200  # the page itself
        async with http.get(v.url + "/?token=whatever") as r:
            assert r.status == 200  # no token on loopback: a token in the URL is ignored
    assert shim.forward_link.config.loss.mean_loss == 0.5


@pytest.mark.parametrize("shim_behind_viewer", [{"token": "vt0k"}], indirect=True)
async def test_viewer_token_protects_page_api_and_shim_proxy(shim_behind_viewer):
    """Issue 16: the viewer proxied the shim (with the shim's token) to anyone who reached it."""
    shim, v = shim_behind_viewer
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/api/config", "/api/shim/stats", "/static/app.js"):
            async with http.get(v.url + path) as r:
                assert r.status == 401, path
        async with http.post(v.url + "/api/shim/loss", data=LOSS, headers={**JSON, "Origin": v.url}) as r:
            assert r.status == 401
        async with http.get(v.url + "/?token=wrong") as r:
            assert r.status == 401
        assert shim.forward_link.config.loss.mean_loss == 0
        async with http.get(v.url + "/api/shim/stats", headers={"Authorization": "Bearer vt0k"}) as r:
            assert r.status == 200  # scripts send the header
    # a browser: the printed URL once, then the cookie (aiohttp keeps cookies of IP hosts only when unsafe)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as page:
        async with page.get(v.url + "/?camera=1&token=vt0k", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/?camera=1"
            assert "httponly" in r.headers["Set-Cookie"].lower() and "samesite=strict" in r.headers["Set-Cookie"].lower()
        async with page.get(v.url + "/") as r:
            assert r.status == 200 and "app.js" in await r.text()
        async with page.ws_connect(v.url + "/ws", headers={"Origin": v.url}):
            pass
        async with page.post(v.url + "/api/shim/loss", data=LOSS, headers={**JSON, "Origin": "http://evil.example"}) as r:
            assert r.status == 403  # the cookie alone does not let another site in
        async with page.post(v.url + "/api/shim/loss", data=LOSS, headers={**JSON, "Origin": v.url}) as r:
            assert r.status == 200
    assert shim.forward_link.config.loss.mean_loss == 0.5


def test_viewer_token_from_the_command_line(monkeypatch):
    from jscc_stream.receiver.cli import build_parser
    from jscc_stream.receiver.web import viewer_from_args

    monkeypatch.delenv("JSCC_WEB_TOKEN", raising=False)
    parse = build_parser().parse_args
    assert viewer_from_args(parse(["--web", "127.0.0.1:0"])).config.token is None
    generated = viewer_from_args(parse(["--web", "0.0.0.0:0"])).config.token
    assert generated and len(generated) >= 20 and generated != viewer_from_args(parse(["--web", "0.0.0.0:0"])).config.token
    assert viewer_from_args(parse(["--web", "0.0.0.0:0", "--web-token", "mine"])).config.token == "mine"
    assert viewer_from_args(parse(["--web", "127.0.0.1:0", "--web-token", "mine"])).config.token == "mine"
    monkeypatch.setenv("JSCC_WEB_TOKEN", "env")
    assert viewer_from_args(parse(["--web", "0.0.0.0:0"])).config.token == "env"


async def test_the_token_url_is_printed_at_start(caplog):
    v = WebViewer(WebConfig(host="127.0.0.1", port=0, token="printed-token"))
    with caplog.at_level("INFO", logger="jscc.recv.web"):
        host, port = await v.start()
    await v.close()
    assert f"http://{host}:{port}/?token=printed-token" in caplog.text


@pytest.mark.parametrize("argv,fragment", [
    (["--web", "nonsense"], "--web must be HOST:PORT"),
    (["--web", "127.0.0.1:0", "--web-original", "webcam:0"], "deterministic"),
    (["--web", "127.0.0.1:0", "--web-original", "/no/such/folder"], "not synthetic"),
    (["--web", "127.0.0.1:0", "--web-shim", "127.0.0.1:8090"], "URL"),
    (["--web", "127.0.0.1:0", "--web-jpeg-quality", "0"], "quality"),
    (["--web", "0.0.0.0:0", "--web-token", " "], "--web-token"),
])
def test_cli_web_errors_are_one_line(capsys, argv, fragment):
    from jscc_stream.receiver.cli import main

    assert main(["--listen", "127.0.0.1:0", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_cli_help_lists_the_web_options(capsys):
    from jscc_stream.receiver.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--web ", "--web-original", "--web-shim", "--web-sender", "--web-token"):
        assert opt in out
    web_help = " ".join(out.split("--web HOST:PORT", 1)[1].split("--web-original")[0].split())
    assert "0.0.0.0" not in web_help or "requires a token" in web_help


def test_every_daemon_listens_on_loopback_by_default():
    """Issue 16: the README's commands stay on this machine unless told otherwise: the
    receiver's and the relay's UDP sockets default to loopback like the HTTP servers."""
    from jscc_stream.receiver.cli import build_parser as recv_parser
    from jscc_stream.relay.cli import build_parser as relay_parser

    assert recv_parser().parse_args([]).listen.startswith("127.0.0.1:")
    relay = relay_parser().parse_args([])
    assert relay.listen.startswith("127.0.0.1:") and relay.listen_receivers.startswith("127.0.0.1:")

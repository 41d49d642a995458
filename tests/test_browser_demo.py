"""The demo as a person meets it, in headless Chromium with a fake camera playing real photographs:
camera -> WebRTC -> jscc-send -> jscc-netem -> jscc-recv --web -> the page.  The page must show
decoded frames and moving charts; raising the loss from the page's own controls must lower the
blocks received while the video keeps playing.  A screenshot is kept for people to look at.

Skips (with the reason) when no Chromium is installed: ``.ci/run`` installs Debian's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fixtures.cdp import FAKE_CAMERA_FLAGS, Browser, find_chromium
from fixtures.y4m import photo_frames, read_y4m_header, write_y4m

ROOT = Path(__file__).resolve().parents[1]
W, H = 320, 240

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _codec(tmp: Path) -> str:
    """$JSCC_DEMO_CODEC, else the shipped 'uniform' weights when present (a real picture), else a tiny
    untrained codec."""
    from jscc_stream.models.zoo import resolve_weights

    if os.environ.get("JSCC_DEMO_CODEC"):
        return os.environ["JSCC_DEMO_CODEC"]
    try:
        return str(resolve_weights("uniform"))
    except Exception:  # noqa: BLE001 - not trained/shipped yet
        import torch

        from jscc_stream.models.codec import CodecConfig, JSCCCodec
        from jscc_stream.models.zoo import save_codec

        torch.manual_seed(0)
        cfg = CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1), mca_width=8)
        return str(save_codec(JSCCCodec(cfg), tmp / "w", "tiny", {"note": "untrained, tests only"}))


def _script(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


class Services:
    """jscc-recv --web, jscc-netem --control and jscc-send --source webrtc as real processes."""

    def __init__(self, tmp: Path, codec: str) -> None:
        self.tmp = tmp
        self.ports = {"recv": _free_port(socket.SOCK_DGRAM), "shim": _free_port(socket.SOCK_DGRAM),
                      "web": _free_port(), "control": _free_port(), "signal": _free_port()}
        p = self.ports
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs: dict[str, subprocess.Popen] = {}
        cmds = {
            "receiver": [_script("jscc-recv"), "--listen", f"127.0.0.1:{p['recv']}", "--codec", codec,
                         "--latency-ms", "80", "--web", f"127.0.0.1:{p['web']}",
                         "--web-shim", f"http://127.0.0.1:{p['control']}",
                         "--web-sender", f"http://127.0.0.1:{p['signal']}"],
            "shim": [_script("jscc-netem"), "--listen", f"127.0.0.1:{p['shim']}",
                     "--forward", f"127.0.0.1:{p['recv']}", "--loss", "none", "--seed", "3",
                     "--control", f"127.0.0.1:{p['control']}", "--stats-interval", "0"],
            "sender": [_script("jscc-send"), "--source", f"webrtc:127.0.0.1:{p['signal']}",
                       "--webrtc-origin", f"http://127.0.0.1:{p['web']}",
                       "--dest", f"127.0.0.1:{p['shim']}", "--codec", codec, "--size", f"{W}x{H}",
                       "--fps", "30"],
        }
        for name, cmd in cmds.items():
            self.procs[name] = subprocess.Popen(cmd, stdout=open(tmp / f"{name}.log", "wb"),
                                                stderr=subprocess.STDOUT, env=env)
        self.page = f"http://127.0.0.1:{p['web']}/"

    async def ready(self, timeout: float = 120) -> None:
        urls = [self.page, f"http://127.0.0.1:{self.ports['signal']}/status",
                f"http://127.0.0.1:{self.ports['control']}/stats"]
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for url in urls:
                while True:
                    self.check_alive()
                    try:
                        async with http.get(url) as r:
                            if r.status == 200:
                                break
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                    if time.monotonic() > end:
                        raise TimeoutError(f"{url} did not answer\n{self.logs()}")
                    await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n" + (self.tmp / f"{n}.log").read_text(errors="replace")[-2000:]
                         for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _artifacts() -> Path:
    out = Path(os.environ.get("JSCC_ARTIFACTS", ROOT / "out" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_y4m_fixture_is_what_chromium_reads(tmp_path):
    path = write_y4m(tmp_path / "cam.y4m", photo_frames(W, H, 3))
    head = read_y4m_header(path)
    assert head["magic"] == "YUV4MPEG2" and head["W"] == str(W) and head["H"] == str(H) and head["C"] == "420jpeg"
    header_len = len(path.read_bytes().split(b"\n", 1)[0]) + 1
    assert path.stat().st_size == header_len + 3 * (len(b"FRAME\n") + W * H * 3 // 2)


async def test_page_shows_live_video_charts_and_loss_control(tmp_path):
    y4m = write_y4m(tmp_path / "camera.y4m", photo_frames(W, H, 90))
    svc = Services(tmp_path, _codec(tmp_path))
    browser = None
    try:
        await svc.ready()
        browser = await Browser.launch(tmp_path / "profile",
                                       FAKE_CAMERA_FLAGS + [f"--use-file-for-fake-video-capture={y4m}"])
        await browser.navigate(svc.page + "?camera=1")
        try:
            await browser.wait_for("window.jscc && jscc.camera === 'connected'", 60)
            # frames decoded and drawn, charts redrawn with data
            await browser.wait_for("jscc.framesDrawn > 45 && jscc.statsFrames > 45 && jscc.chartDraws > 5", 90)
        except TimeoutError:
            state = await browser.evaluate("JSON.stringify({...window.jscc, series: null})")
            raise AssertionError(f"page never got going: {state}\n{svc.logs()}") from None
        assert await browser.evaluate("document.getElementById('conn').textContent") == "live"
        assert await browser.evaluate("document.getElementById('received').width") == W
        # the camera's own frames reached the sender (not its 'waiting for camera' picture)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{svc.ports['signal']}/status") as r:
                assert (await r.json())["frames_received"] > 10

        before = await browser.evaluate("jscc.series.blocks.slice(-30)")
        assert statistics.mean(before) > 6.5, before  # no loss yet (a loaded machine may miss a deadline)

        # raise the loss from the page's own controls
        await browser.evaluate("""(() => {
            const sel = document.getElementById('loss-preset');
            sel.value = 'uniform:0.5'; sel.dispatchEvent(new Event('change'));
            document.getElementById('loss-apply').click(); })()""")
        await browser.wait_for("jscc.lastControl && jscc.shim && jscc.shim.forward.loss === 'uniform:0.5'", 20)
        drawn0, stats0 = await browser.evaluate("[jscc.framesDrawn, jscc.statsFrames]")
        await browser.wait_for(f"jscc.statsFrames > {stats0} + 45 && jscc.framesDrawn > {drawn0} + 30", 90)
        after = await browser.evaluate("jscc.series.blocks.slice(-35)")
        assert statistics.mean(after) < statistics.mean(before) - 1.5, (before, after)  # 50 %: ~4 of 8
        assert await browser.evaluate("jscc.fps") > 0  # still playing
        shot = await browser.screenshot(tmp_path / "demo.png")
        shutil.copy(shot, _artifacts() / "browser-demo.png")

        # measurement for the report (not asserted): displayed fps at 20 % loss
        await browser.evaluate("""(() => {
            const sel = document.getElementById('loss-preset');
            sel.value = 'uniform:0.2'; sel.dispatchEvent(new Event('change'));
            document.getElementById('loss-apply').click(); })()""")
        await browser.wait_for("jscc.shim && jscc.shim.forward.loss === 'uniform:0.2'", 20)
        samples = []
        for _ in range(int(os.environ.get("JSCC_FPS_SECONDS", "8"))):
            await asyncio.sleep(1.0)
            samples.append(await browser.evaluate("[jscc.fps, jscc.serverFps]"))
        blocks = await browser.evaluate("jscc.series.blocks.slice(-60)")
        result = {"loss": "uniform:0.2", "size": f"{W}x{H}", "page_fps": [s[0] for s in samples],
                  "receiver_fps": [s[1] for s in samples], "page_fps_median": statistics.median(s[0] for s in samples),
                  "mean_blocks": statistics.mean(blocks), "codec": Path(_codec(tmp_path)).name}
        (_artifacts() / "browser-demo-fps.json").write_text(json.dumps(result, indent=2) + "\n")
        print("browser demo at 20 % loss:", json.dumps(result))
        assert min(s[0] for s in samples[-3:]) > 0  # video keeps playing under loss
        svc.check_alive()
    finally:
        if browser is not None:
            await browser.close()
        svc.stop()


async def test_page_works_with_the_viewer_token(tmp_path):
    """A viewer with a token (as off loopback): the printed URL opens the page, which then talks to
    its server (WebSocket, API) with the cookie its script cannot read; without the token, nothing."""
    from jscc_stream.receiver.web import WebConfig, WebViewer

    viewer = WebViewer(WebConfig(host="127.0.0.1", port=0, token="page-token"))
    host, port = await viewer.start()
    browser = None
    try:
        browser = await Browser.launch(tmp_path / "profile")
        await browser.navigate(f"http://{host}:{port}/")
        await asyncio.sleep(1.0)
        assert await browser.evaluate("typeof window.jscc") == "undefined"  # refused: no page, no script
        await browser.navigate(f"http://{host}:{port}/?token=page-token")
        await browser.wait_for("window.jscc && jscc.ws === true", 30)
        assert await browser.evaluate("location.search") == ""  # the token left the address bar
        assert await browser.evaluate("document.cookie") == ""  # HttpOnly: not for scripts
        await browser.wait_for("document.getElementById('shim-state').textContent.includes('controls off')", 10)
    finally:
        if browser is not None:
            await browser.close()
        await viewer.close()

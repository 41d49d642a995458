"""The shim's HTTP control API: stats, live loss/rate/delay changes, bad input, the token."""

from __future__ import annotations

import aiohttp
import pytest

from jscc_stream.netem.control import ControlConfig, ControlError, ControlServer, is_loopback

JSON = {"Content-Type": "application/json"}


async def _serve(shim, token=None) -> tuple[ControlServer, str]:
    server = ControlServer(ControlConfig(host="127.0.0.1", port=0, token=token), shim)
    host, port = await server.start()
    return server, f"http://{host}:{port}"


async def test_stats_and_live_changes(shim):
    server, url = await _serve(shim)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/stats") as r:
                assert r.status == 200
                st = await r.json()
            assert st["forward"]["loss"] == "none" and st["forward"]["rate_bps"] is None
            async with http.post(url + "/loss", json={"spec": "uniform:0.2"}) as r:
                assert r.status == 200
                assert (await r.json())["forward"]["loss"] == str(shim.forward_link.config.loss)
            assert shim.forward_link.config.loss.mean_loss == pytest.approx(0.2)
            async with http.post(url + "/rate", json={"rate": "2mbit"}) as r:
                assert r.status == 200
            assert shim.forward_link.config.rate_bps == 2e6
            async with http.post(url + "/rate", json={"rate": None}) as r:
                assert r.status == 200
            assert shim.forward_link.config.rate_bps is None
            async with http.post(url + "/delay", json={"delay_ms": 40, "jitter_ms": 5}) as r:
                assert r.status == 200
            assert shim.forward_link.config.delay_s == pytest.approx(0.04)
            async with http.post(url + "/loss", json={"spec": "ge10", "direction": "reverse"}) as r:
                assert r.status == 200
            assert shim.reverse_link.config.loss.mean_loss == pytest.approx(0.1, abs=0.03)
    finally:
        await server.close()


@pytest.mark.parametrize("path,body,fragment", [
    ("/loss", {"spec": "bogus"}, "unknown loss"),
    ("/loss", {}, "spec"),
    ("/loss", {"spec": "uniform:0.1", "direction": "sideways"}, "direction"),
    ("/rate", {"rate": "fast"}, ""),
    ("/rate", {"rate": -5}, "positive"),
    ("/rate", {"rate": True}, "rate"),
    ("/delay", {"delay_ms": "soon"}, "numbers"),
    ("/delay", {"delay_ms": -1}, "[0, 10000]"),
])
async def test_bad_requests_get_400_and_change_nothing(shim, path, body, fragment):
    server, url = await _serve(shim)
    before = shim.stats()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + path, json=body) as r:
                assert r.status == 400
                assert fragment in (await r.json())["error"]
            async with http.post(url + path, data=b"not json{", headers=JSON) as r:
                assert r.status == 400
            async with http.post(url + path, json=[1, 2]) as r:
                assert r.status == 400
    finally:
        await server.close()
    after = shim.stats()
    for key in ("loss", "rate_bps"):
        assert after["forward"][key] == before["forward"][key]


async def test_token_is_required_when_set(shim):
    server, url = await _serve(shim, token="s3cret")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/stats") as r:
                assert r.status == 401
            async with http.post(url + "/loss", json={"spec": "uniform:0.5"},
                                 headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            assert shim.forward_link.config.loss.mean_loss == 0
            async with http.get(url + "/stats", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with http.post(url + "/loss", json={"spec": "uniform:0.5"},
                                 headers={"X-Jscc-Token": "s3cret"}) as r:
                assert r.status == 200
            assert shim.forward_link.config.loss.mean_loss == pytest.approx(0.5)
    finally:
        await server.close()


async def test_not_attached_yet_is_503():
    server = ControlServer(ControlConfig(port=0))
    host, port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/stats") as r:
                assert r.status == 503
    finally:
        await server.close()


def test_non_loopback_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    with pytest.raises(ControlError, match="token"):
        ControlServer(ControlConfig(host="0.0.0.0", port=0))
    with pytest.raises(ControlError, match="empty"):
        ControlServer(ControlConfig(host="127.0.0.1", port=0, token="  "))
    ControlServer(ControlConfig(host="0.0.0.0", port=0, token="t"))  # fine with one


async def test_port_in_use_is_a_control_error(shim):
    server, url = await _serve(shim)
    try:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ControlError, match="cannot serve"):
            await ControlServer(ControlConfig(port=port), shim).start()
    finally:
        await server.close()


def test_cli_control_errors_are_one_line(capsys, monkeypatch):
    from jscc_stream.netem.cli import main

    monkeypatch.delenv("JSCC_CONTROL_TOKEN", raising=False)
    assert main(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--control", "0.0.0.0:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --control-token" in err
    assert main(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--control", "nonsense"]) == 2


@pytest.mark.parametrize("extra, msg", [(["--reverse-delay-ms", "-1"], "--reverse-delay-ms must be >= 0"),
                                        (["--reverse-delay-ms", "5", "--both-ways"], "choose one")])
def test_reverse_delay_errors_are_one_line(extra, msg, capsys):
    from jscc_stream.netem.cli import main

    assert main(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err

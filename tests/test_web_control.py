"""The shim's HTTP control API: stats, live loss/rate/delay changes, bad input, the token."""

from __future__ import annotations

import aiohttp
import pytest

from jscc_stream.netem.control import ControlConfig, ControlError, ControlServer, is_loopback

JSON = {"Content-Type": "application/json"}


async def _serve(shim, token=None, **config) -> tuple[ControlServer, str]:
    server = ControlServer(ControlConfig(host="127.0.0.1", port=0, token=token, **config), shim)
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


async def _post_error(http, url: str, body) -> tuple[int, str]:
    async with http.post(url + "/loss", json=body) as r:
        return r.status, (await r.json())["error"]


async def test_loss_traces_never_open_a_path_from_the_network(shim, tmp_path):
    """Issue 16: trace:/etc/passwd answered with the file's first line, and told which paths exist."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET\n")
    server, url = await _serve(shim)
    try:
        async with aiohttp.ClientSession() as http:
            answers = [await _post_error(http, url, {"spec": spec}) for spec in (
                f"trace:{secret}", f"TRACE: {secret}", f"trace:{tmp_path / 'missing.txt'}", "trace:/etc/passwd")]
    finally:
        await server.close()
    assert all(status == 400 for status, _ in answers)
    assert len({msg for _, msg in answers}) == 1, answers  # the same whether the file exists or not
    assert not any("SECRET" in msg or "root" in msg or str(tmp_path) in msg for _, msg in answers)
    assert shim.forward_link.config.loss.mean_loss == 0


async def test_loss_traces_by_name_from_the_trace_dir(shim, tmp_path):
    (tmp_path / "bursty.txt").write_text("0 1\n1 1\n")
    (tmp_path / "bad.txt").write_text("0 1 hunter2\n")
    server, url = await _serve(shim, trace_dir=tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/loss", json={"spec": "trace:bursty.txt"}) as r:
                assert r.status == 200 and (await r.json())["forward"]["loss"] == "trace:bursty.txt"
            assert shim.forward_link.config.loss.mean_loss == 0.75
            for name in ("../bursty.txt", "sub/bursty.txt", ".hidden", "nope.txt", str(tmp_path / "bursty.txt")):
                status, msg = await _post_error(http, url, {"spec": f"trace:{name}"})
                assert status == 400 and str(tmp_path) not in msg, (name, msg)
            status, msg = await _post_error(http, url, {"spec": "trace:bad.txt"})
            assert status == 400 and "hunter2" not in msg and "entry 3" in msg
    finally:
        await server.close()
    assert shim.forward_link.config.loss.mean_loss == 0.75  # the refused ones changed nothing


@pytest.mark.parametrize("upload,mean", [("0 1 1 1", 0.75), ("0,1", 0.5), ([0, 0, 0, 1], 0.25)])
async def test_uploaded_traces(shim, upload, mean):
    server, url = await _serve(shim)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/loss", json={"trace": upload}) as r:
                assert r.status == 200 and (await r.json())["forward"]["loss"] == "trace:uploaded"
            assert shim.forward_link.config.loss.mean_loss == mean
            for bad in ([0, 2], [True], "0 x", "", {"a": 1}, 5):
                assert (await _post_error(http, url, {"trace": bad}))[0] == 400, bad
            assert (await _post_error(http, url, {"trace": "1", "spec": "none"}))[0] == 400
    finally:
        await server.close()
    assert shim.forward_link.config.loss.mean_loss == mean


async def test_state_changes_need_json_from_no_other_origin(shim):
    """Issue 16: a text/plain POST (what any web page may send cross-site) changed the link."""
    server, url = await _serve(shim)
    port = url.rsplit(":", 1)[1]
    body = b'{"spec": "uniform:0.5"}'
    refused = [({"Content-Type": "text/plain"}, 415), ({}, 415),
               ({**JSON, "Origin": "http://evil.example"}, 403),
               ({**JSON, "Origin": "null"}, 403),
               ({**JSON, "Host": f"rebound.example:{port}"}, 403)]  # DNS rebinding: a name, not loopback
    try:
        async with aiohttp.ClientSession() as http:
            for headers, status in refused:
                async with http.post(url + "/loss", data=body, headers=headers) as r:
                    assert r.status == status, headers
                    assert set(await r.json()) == {"error"}
            assert shim.forward_link.config.loss.mean_loss == 0
            async with http.get(url + "/stats", headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
            async with http.post(url + "/loss", data=body, headers={**JSON, "Host": f"localhost:{port}"}) as r:
                assert r.status == 200  # curl, scripts, the viewer's proxy: no Origin, loopback Host
    finally:
        await server.close()
    assert shim.forward_link.config.loss.mean_loss == 0.5


async def test_with_a_token_any_origin_may_use_the_header(shim):
    server, url = await _serve(shim, token="s3cret")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/loss", json={"spec": "uniform:0.5"},
                                 headers={"Origin": "http://elsewhere.example"}) as r:
                assert r.status == 401
            async with http.post(url + "/loss", json={"spec": "uniform:0.5"},
                                 headers={"Origin": "http://elsewhere.example", "X-Jscc-Token": "s3cret"}) as r:
                assert r.status == 200
            async with http.post(url + "/loss", data=b"{}", headers={"X-Jscc-Token": "s3cret"}) as r:
                assert r.status == 415
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
    capsys.readouterr()
    for extra, msg in ((["--control", "127.0.0.1:0", "--trace-dir", "/no/such/dir"], "not a directory"),
                       (["--trace-dir", "/tmp"], "needs --control")):
        assert main(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err


@pytest.mark.parametrize("extra, msg", [(["--reverse-delay-ms", "-1"], "--reverse-delay-ms must be >= 0"),
                                        (["--reverse-delay-ms", "5", "--both-ways"], "choose one")])
def test_reverse_delay_errors_are_one_line(extra, msg, capsys):
    from jscc_stream.netem.cli import main

    assert main(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err

"""Property tests of the shim control API's JSON bodies (issue 16), through its public routes with
aiohttp's test client: any body gets 200 (a valid change, which the stats then show) or a 400 whose
JSON names the mistake in one line, never a 500.

Only the body parsing is under test here; the token is whatever the API needs today
(``HEADERS``), kept in this one place so that a change of its authentication is one edit.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ
from jscc_stream.netem.control import _MAX_BODY, ControlConfig, ControlServer
from jscc_stream.netem.loss import ErasureVector, GilbertElliott

TOKEN = "fuzz-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = ["/loss", "/rate", "/delay", "/rate-schedule", "/reorder", "/duplicate"]


class _Api:
    """A shim and its control API on an event loop of their own (a thread), so that the
    synchronous hypothesis tests can post to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.shim, self.client = self.call(self._start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self):
        from jscc_stream.netem.shim import Shim, ShimConfig

        shim = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=("127.0.0.1", 9), stats_interval=0))
        await shim.start()
        server = ControlServer(ControlConfig(host="127.0.0.1", port=0, token=TOKEN), shim)
        client = TestClient(TestServer(server.app))
        await client.start_server()
        return shim, client

    async def _post(self, route: str, data: bytes) -> tuple[int, bytes]:
        async with self.client.post(route, data=data, headers={**HEADERS, "Content-Type": "application/json"}) as r:
            return r.status, await r.read()

    def post(self, route: str, data: bytes) -> tuple[int, bytes]:
        return self.call(self._post(route, data))

    def close(self) -> None:
        self.call(self.client.close())
        self.shim.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def api():
    a = _Api()
    yield a
    a.close()


def _not_json(name: str):
    raise AssertionError(f"{name} is not JSON")


def _check(status: int, raw: bytes) -> dict:
    assert status in (200, 400), (status, raw[:300])
    body = json.loads(raw, parse_constant=_not_json)  # strict: a browser's JSON.parse reads it
    if status == 400:
        assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    return body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
field_values = st.one_of(json_values, st.sampled_from(
    ["uniform:0.2", "ge10", "2mbit", "1e400", "0:2mbit,20:500kbit", "forward", "reverse", "none", "-1", "nan"]),
    st.floats(-1e6, 1e6), st.just([[0, "2mbit"], [20, 500000]]),
    st.sampled_from([math.inf, -math.inf, math.nan, 10 ** 400, -10 ** 400, 1e308, 5e-324, 0.5]))
#: bodies that hold the routes' own keys (so the parsing gets past "not an object")
bodies = st.dictionaries(st.sampled_from(["spec", "rate", "delay_ms", "jitter_ms", "schedule", "probability",
                                          "direction"]), field_values, max_size=4)


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.one_of(bodies, json_values))
def test_any_json_body_is_applied_or_a_one_line_400(api, route, body):
    _check(*api.post(route, json.dumps(body).encode()))


@FUZZ
@given(route=st.sampled_from(ROUTES), raw=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)))
def test_any_bytes_are_a_one_line_400_or_applied(api, route, raw):
    _check(*api.post(route, raw))


def test_a_body_over_the_size_limit_is_refused(api):
    status, raw = api.post("/loss", json.dumps({"spec": "uniform:0.1", "pad": "x" * (_MAX_BODY + 1)}).encode())
    assert status == 413


loss_procs = st.one_of(st.floats(0, 1).map(lambda p: ErasureVector((p,))),
                       st.tuples(*[st.floats(0, 1)] * 4).filter(lambda t: t[0] + t[1] > 0).map(
                           lambda t: GilbertElliott(*t)))


@FUZZ
@given(proc=loss_procs, direction=st.sampled_from(["forward", "reverse"]))
def test_a_loss_set_is_the_loss_reported(api, proc, direction):
    body = _check(*api.post("/loss", json.dumps({"spec": str(proc), "direction": direction}).encode()))
    assert body[direction]["loss"] == str(proc)


@FUZZ
@given(rate=st.one_of(st.integers(1, 10 ** 12), st.floats(1e-3, 1e12)), direction=st.sampled_from(["forward", "reverse"]))
def test_a_rate_set_is_the_rate_reported(api, rate, direction):
    body = _check(*api.post("/rate", json.dumps({"rate": rate, "direction": direction}).encode()))
    assert body[direction]["rate_bps"] == rate


BIG = "1" + "0" * 400  # a JSON integer too large for a float


@pytest.mark.parametrize("route, raw", [
    ("/rate", '{"rate": Infinity}'), ("/rate", '{"rate": %s}' % BIG), ("/reorder", '{"probability": %s}' % BIG),
    ("/reorder", '{"probability": 0.5, "delay_ms": %s}' % BIG), ("/delay", '{"delay_ms": %s}' % BIG),
    ("/rate-schedule", '{"schedule": [[0, %s]]}' % BIG)])
def test_infinite_and_huge_numbers_are_a_400_and_break_nothing(api, route, raw):
    """Found by the fuzzing: each was a 500 (OverflowError), and a huge rate left the link
    half-changed, so that every later /rate was a 500 too."""
    status, body = api.post(route, raw.encode())
    assert status == 400 and "\n" not in json.loads(body)["error"]
    assert _check(*api.post("/rate", b'{"rate": 1000000}'))["forward"]["rate_bps"] == 1e6

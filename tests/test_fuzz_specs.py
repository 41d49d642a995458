"""Property tests of what users type (issue 16): loss specs, rates/sizes/rate schedules/probabilities,
the tc plan's inputs, HOST:PORT, WxH frame sizes, DSCP maps.  Valid values round-trip exactly;
any string either parses or raises the parser's documented error (a one-line message), never
another exception, never hangs."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fuzzing import FUZZ, no_hang
from jscc_stream.cli import parse_frame_size
from jscc_stream.errors import UserError
from jscc_stream.netem import tc
from jscc_stream.netem.loss import (ErasureVector, GilbertElliott, LossSpecError, NoLoss, TailDrop,
                                    parse_loss_spec)
from jscc_stream.netem.rates import (format_rate, parse_probability, parse_rate, parse_rate_schedule,
                                     parse_size)
from jscc_stream.sender.dscp import DscpMapError, parse_dscp_map
from jscc_stream.udp import parse_hostport

prob = st.floats(0.0, 1.0)
#: numbers as users (and typos) write them: huge, tiny, signed, non-finite, percentages
numbers = st.one_of(st.floats().map(repr), st.integers(-10 ** 25, 10 ** 25).map(str), st.sampled_from(
    ["1e400", "1e-400", "-0", ".5", "5.", "nan", "inf", "-inf", "0x10", "1_000", "10%", "150%", "", " 7 "]))
units = st.sampled_from(["", "bit", "kbit", "mbit", "gbit", "bps", "kbps", "kb", "mb", "b", "k", "%", "ms", "x"])
words = st.sampled_from(["none", "uniform", "ge", "ge10", "ge15", "eps", "ladder", "steep", "taildrop", "AF41",
                         "le", "be", "localhost", "::1", "[::1]", "x", "-", ":", ",", "[", "]", " "])
token = st.one_of(numbers, st.tuples(numbers, units).map("".join), words)
rates = st.tuples(numbers, units).map("".join)
levels_text = st.one_of(st.integers(0, 20).map(str), st.integers(2 ** 31, 10 ** 25).map(str), numbers)
dscp_entries = st.tuples(levels_text, st.sampled_from(["-", ""]), levels_text, st.sampled_from([":", ""]),
                         st.one_of(st.sampled_from(["af41", "LE", "be", "46", "0x10"]), numbers, words)).map("".join)
#: what users type: the parsers' vocabulary and numbers joined by their separators, or any text
spec_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.tuples(token, st.sampled_from([":", ",", "-", "x", "", " "])).map("".join),
             min_size=1, max_size=6).map("".join))


def _one_line(exc: Exception) -> None:
    assert str(exc) and "\n" not in str(exc)


# -- loss specs ------------------------------------------------------------------------------------

loss_processes = st.one_of(
    st.just(NoLoss()),
    st.lists(prob, min_size=1, max_size=16).map(lambda e: ErasureVector(tuple(e))),
    st.tuples(prob, prob, prob, prob).filter(lambda t: t[0] + t[1] > 0).map(lambda t: GilbertElliott(*t)),
    st.integers(0, 10 ** 6).map(TailDrop))


@FUZZ
@given(proc=loss_processes)
def test_loss_specs_round_trip(proc):
    """``str`` of a loss process is its spec: it is what a codec's card records as its training
    loss, read back by the evaluation."""
    assert parse_loss_spec(str(proc)) == proc


@FUZZ
@given(text=spec_text)
def test_any_loss_spec_parses_or_raises_loss_spec_error(text):
    assume(not text.strip().lower().startswith("trace:"))  # a file name: its reading is tested in test_loss
    try:
        with no_hang():
            parse_loss_spec(text)
    except LossSpecError as exc:
        _one_line(exc)


# -- rates, sizes, schedules, probabilities --------------------------------------------------------

@FUZZ
@given(bps=st.integers(1, 10 ** 15))
def test_rates_round_trip_through_tc_spelling(bps):
    assert parse_rate(format_rate(bps)) == bps


@FUZZ
@given(text=st.one_of(rates, spec_text))
def test_any_rate_size_schedule_or_probability_parses_or_raises_value_error(text):
    for parse, check in ((parse_rate, lambda v: math.isfinite(v) and v > 0),
                         (parse_size, lambda v: isinstance(v, int) and v > 0),
                         (parse_rate_schedule, lambda v: v and v[0][0] == 0),
                         (parse_probability, lambda v: 0 <= v <= 1)):
        try:
            with no_hang():
                value = parse(text)
        except ValueError as exc:
            _one_line(exc)
        else:
            assert check(value), (parse.__name__, text, value)


@FUZZ
@given(sched=st.lists(st.tuples(st.floats(0.001, 1e6), st.integers(1, 10 ** 12)), min_size=0, max_size=6))
def test_rate_schedules_round_trip(sched):
    times, t = [0.0], 0.0
    for dt, _ in sched[1:]:
        t += dt
        times.append(t)
    want = tuple((ti, float(r)) for ti, (_, r) in zip(times, sched))
    assume(want)
    assert parse_rate_schedule(",".join(f"{ti!r}:{format_rate(r)}" for ti, r in want)) == want


# -- the tc plan's inputs --------------------------------------------------------------------------

@FUZZ
@given(rate=st.one_of(rates, spec_text), loss=st.one_of(st.sampled_from(["none", "uniform:5%", "ge10"]), spec_text),
       delay=st.one_of(st.just(0.0), st.floats(allow_nan=True, allow_infinity=True)),
       queue=st.one_of(st.none(), st.integers(-5, 200_000)), priority=st.booleans(), reorder=prob)
def test_tc_configs_build_a_plan_or_raise_value_error(rate, loss, delay, queue, priority, reorder):
    """What ``jscc-netem tc`` does with its options: every config it accepts has a plan."""
    try:
        cfg = tc.TcConfig(dev="eth0", loss=parse_loss_spec(loss) if not loss.startswith("trace") else NoLoss(),
                          delay_ms=delay, rate_bps=parse_rate(rate), priority_dscp=priority, queue_packets=queue,
                          reorder=reorder)
    except ValueError as exc:
        _one_line(exc)
        return
    plan = tc.build_plan(cfg)
    assert plan.lines() and all("\n" not in line for line in plan.lines())


# -- addresses, frame sizes, DSCP maps -------------------------------------------------------------

hosts = st.one_of(st.sampled_from(["localhost", "example.org", "0.0.0.0", "rx-1.lan"]),
                  st.ip_addresses(v=4).map(str))


@FUZZ
@given(host=st.one_of(hosts, st.ip_addresses(v=6).map(str)), port=st.integers(0, 65535))
def test_host_port_round_trips(host, port):
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_hostport(text) == (host, port)
    assert parse_hostport(f":{port}") == ("0.0.0.0", port)


@FUZZ
@given(text=spec_text, default=st.sampled_from(["0.0.0.0", None]))
def test_any_host_port_parses_or_raises_value_error(text, default):
    try:
        host, port = parse_hostport(text, default)
    except ValueError as exc:
        _one_line(exc)
        return
    assert 0 <= port <= 65535 and isinstance(host, str)
    if host.startswith("["):
        ipaddress.ip_address(host)


@FUZZ
@given(w=st.integers(16, 10 ** 5), h=st.integers(16, 10 ** 5), upper=st.booleans())
def test_frame_sizes_round_trip(w, h, upper):
    assert parse_frame_size(f"{w}{'X' if upper else 'x'}{h}") == (w, h)


@FUZZ
@given(text=spec_text, multiple=st.sampled_from([1, 16]))
def test_any_frame_size_parses_or_raises_user_error(text, multiple):
    try:
        w, h = parse_frame_size(text, multiple_of=multiple)
    except UserError as exc:
        _one_line(exc)
        return
    assert w >= 16 and h >= 16 and w % multiple == 0 and h % multiple == 0


@FUZZ
@given(codes=st.lists(st.integers(0, 63), min_size=1, max_size=16))
def test_dscp_maps_round_trip(codes):
    spec = ",".join(f"{lv}:{code:#x}" for lv, code in enumerate(codes))
    assert parse_dscp_map(spec, len(codes)) == dict(enumerate(codes))


@FUZZ
@given(text=st.one_of(spec_text, st.lists(dscp_entries, min_size=1, max_size=4).map(",".join)),
       levels=st.integers(0, 16))
def test_any_dscp_map_parses_or_raises_dscp_map_error(text, levels):
    try:
        with no_hang():
            out = parse_dscp_map(text, levels)
    except DscpMapError as exc:
        _one_line(exc)
        return
    assert sorted(out) == list(range(levels)) and all(0 <= v <= 63 for v in out.values())


def test_a_huge_dscp_level_range_is_answered_at_once():
    """``0-99999999999999999999:AF41`` looped over every level of the range."""
    with no_hang():
        assert parse_dscp_map("0-99999999999999999999:af41", 2) == {0: 34, 1: 34}


# -- what the fuzzing (and, for taildrop, reading the parser) found: each failed before its fix ----

@pytest.mark.parametrize("parse", [parse_rate, parse_size])
def test_an_infinite_rate_or_size_is_a_value_error(parse):
    """``1e400`` read as infinity: ``parse_rate`` returned it (``jscc-netem tc --rate 1e400``
    then crashed in ``format_rate`` with OverflowError), ``parse_size`` raised OverflowError."""
    with pytest.raises(ValueError, match="finite"):
        parse("1e400kbit" if parse is parse_rate else "1e400")


@pytest.mark.parametrize("proc", [ErasureVector((0.001953125,)), ErasureVector((0.1, 0.1, 0.1, 0.1)),
                                  GilbertElliott(0.1234567, 0.5, 0.0, 1.0)])
def test_loss_specs_keep_every_digit_and_their_length(proc):
    """``str`` wrote 6 significant digits (0.001953125 -> 0.00195312) and K equal entries as
    ``uniform:`` (one entry), so a codec card's training loss read back differently."""
    assert parse_loss_spec(str(proc)) == proc


@pytest.mark.parametrize("spec", ["taildrop:x", "taildrop:-1", "taildrop:2.5", "taildrop:²"])
def test_a_bad_taildrop_count_is_a_loss_spec_error(spec):
    """``int()`` raised a bare ValueError, not the LossSpecError the parser promises."""
    with pytest.raises(LossSpecError, match="whole number"):
        parse_loss_spec(spec)

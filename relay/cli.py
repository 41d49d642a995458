"""jscc-relay: forward one jscc-stream to many receivers, each only the importance levels it asks for."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from collections.abc import Sequence

from jscc_stream.cli import add_common_args, entry_point, parse_args, run_async, write_json
from jscc_stream.errors import UserError
from jscc_stream.udp import parse_hostport, resolve, udp_socket

__all__ = ["main", "build_parser"]

log = logging.getLogger("jscc.relay")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-relay", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Receive one jscc-stream from jscc-send (--listen) and forward it to every receiver that "
                    "joined at --listen-receivers (jscc-recv --join HOST:PORT --levels N), each getting only the "
                    "importance levels 0..N-1 it subscribed to (receiver-specific importance). Receivers leave "
                    "with RTCP BYE or by falling silent for --timeout. The sender sees one receiver, the relay: "
                    "its reports for congestion control, and for the video codec's references the receipts of the "
                    "receiver with the fewest levels, whose levels every receiver keeps its references from "
                    "(docs/papers.md).")
    p.add_argument("--listen", default="127.0.0.1:5004", metavar="HOST:PORT",
                   help="where the sender sends (jscc-send --dest); loopback by default, 0.0.0.0:5004 for "
                        "senders on other machines")
    p.add_argument("--listen-receivers", default="127.0.0.1:5006", metavar="HOST:PORT",
                   help="where receivers subscribe; the relay sends to them from this address (loopback by "
                        "default, 0.0.0.0:5006 for receivers on other machines)")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="seconds of silence after which a receiver counts as gone (receivers send feedback every "
                        "50 ms and subscribe every 0.5 s)")
    p.add_argument("--max-receivers", type=int, default=32, help="receivers served at once; more are refused")
    p.add_argument("--adapt", action="store_true",
                   help="also cap each receiver's levels by the loss it reports on them: one level fewer when a "
                        "report shows more than 10%% loss, one more after 3 s below 2%% (never above its "
                        "subscription)")
    p.add_argument("--reference", choices=["least", "most"], default="least",
                   help="predicted frames (video codec): the sender's references follow the receiver with the least "
                        "levels, which every receiver then keeps its references from (no drift anywhere), or the one "
                        "with the most (the best picture there; receivers with fewer levels drift until an intra "
                        "frame, which the relay asks for at most every --intra-interval)")
    p.add_argument("--intra-interval", type=float, default=1.0,
                   help="at most one intra frame asked of the sender this often (s): after a change of the "
                        "reference receiver, or when another receiver lacks a reference payload")
    p.add_argument("--arrival-ms", type=float, default=50.0,
                   help="interval of the relay's own per-packet arrival reports to the sender's congestion "
                        "control (0: none)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--stats-json", metavar="FILE", help="write the relay's counters and receivers as JSON at exit")
    add_common_args(p)
    return p


def _socket(spec: str, flag: str) -> socket.socket:
    try:
        family, addr = resolve(*parse_hostport(spec))
        return udp_socket(family, addr, rcvbuf=4 << 20, recv_tos=True, dual_stack=True)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot listen on {spec}: {exc.strerror}") from None


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser, argv)
    if not 0 < args.timeout <= 60:
        raise UserError("--timeout must be in (0, 60] seconds")
    if args.max_receivers < 1:
        raise UserError("--max-receivers must be >= 1")
    if not 0 <= args.arrival_ms <= 10000:
        raise UserError("--arrival-ms must be in [0, 10000] (0: no arrival reports)")
    if not 0 <= args.intra_interval <= 3600:
        raise UserError("--intra-interval must be in [0, 3600] seconds")
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be positive")
    from .relay import Relay, RelayConfig

    up = _socket(args.listen, "--listen")
    down = _socket(args.listen_receivers, "--listen-receivers")
    cfg = RelayConfig(timeout=args.timeout, max_receivers=args.max_receivers, adapt=args.adapt,
                      arrival_interval=args.arrival_ms / 1000, duration=args.duration,
                      reference=args.reference, intra_interval=args.intra_interval)
    relay = Relay(up, down, cfg)
    log.info("listening on %s for the sender and on %s for receivers", args.listen, args.listen_receivers)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, relay.stop_event.set)
        return await relay.run()

    try:
        run_async(go())
    finally:
        up.close()
        down.close()
    summary = relay.summary()
    log.info("forwarded %d packets (%d bytes), %d filtered; receivers joined %d, left %d (bye) + %d (timeout)",
             relay.stats.forwarded_packets, relay.stats.forwarded_bytes, relay.stats.filtered_packets,
             relay.table.counters.joins, relay.table.counters.byes, relay.table.counters.timeouts)
    write_json(args.stats_json, summary)
    return 0


main = entry_point(_main, "jscc-relay")


if __name__ == "__main__":
    raise SystemExit(main())

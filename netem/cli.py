"""``jscc-netem``: the userspace impairment shim (default), ``tc`` for the kernel path, and
``probe`` for marked test traffic."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, entry_point, setup_logging

PROG = "jscc-netem"
SUBCOMMANDS = ("tc", "probe")

_LOSS_HELP = ("loss process: none | uniform:P (0.1 or 10%%) | ge:p,r,h,k (Gilbert-Elliott, netem "
              "convention: p=P(G->B), r=P(B->G), 1-h lost in Bad, 1-k lost in Good) | ge10 | ge15 "
              "(paper 001's ~10%% and ~15%%)")


def _add_control_args(p: argparse.ArgumentParser) -> None:
    """The HTTP control API and who may use the shim (docs/security.md)."""
    p.add_argument("--control", default=None, metavar="HOST:PORT",
                   help="serve the HTTP control API here (GET /stats, POST /loss /rate /rate-schedule /delay "
                        "/reorder /duplicate) to change "
                        "the link while it runs, e.g. 127.0.0.1:8090; off by default")
    p.add_argument("--control-token", default=None, metavar="TOKEN",
                   help="token the control API requires (Authorization: Bearer TOKEN); needed when "
                        "--control is not on loopback (default: $JSCC_CONTROL_TOKEN)")
    p.add_argument("--trace-dir", type=Path, default=None, metavar="DIR",
                   help="the control API's POST /loss may name loss traces in this directory "
                        "(\"trace:NAME\", a plain file name); without it only uploaded traces "
                        "({\"trace\": \"0 1 0 ...\"}). A path from the network is never opened; "
                        "--loss trace:FILE on this command line may name any file")
    p.add_argument("--client-timeout", type=float, default=10.0, metavar="S",
                   help="forget a sender silent for this long (its upstream socket closes; packets "
                        "still queued for it are counted as orphaned) (default 10)")
    p.add_argument("--max-clients", type=int, default=16, metavar="N",
                   help="senders relayed at once; a new source arriving when N are active is refused "
                        "(counted as clients_refused), never one of them evicted (default 16)")


def _shim_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Userspace network shim: relays UDP between senders (--listen) and a receiver "
                    "(--forward), both ways, applying loss, delay, reordering, duplication and a "
                    "bottleneck (fixed, or changing over time) to the sender->receiver direction. "
                    "Each datagram keeps its DSCP.",
        epilog="Other commands: 'jscc-netem tc apply|show|clear --dev IFACE' configures the same "
               "impairments in the Linux kernel (tc); 'jscc-netem probe send|recv' makes and counts "
               "DSCP-marked test traffic. See docs/netem.md.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="where senders send to ([::]:PORT for IPv6 and IPv4)")
    p.add_argument("--forward", required=True, metavar="HOST:PORT", help="the receiver's address")
    p.add_argument("--loss", default="none", metavar="SPEC", help=_LOSS_HELP + " (default none)")
    p.add_argument("--seed", type=int, default=None, help="seed of the loss/jitter draws")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay")
    p.add_argument("--jitter-ms", type=float, default=0.0,
                   help="uniform jitter +- this much around the delay (order is kept)")
    p.add_argument("--rate", default=None, metavar="RATE",
                   help="bottleneck rate, e.g. 2mbit, 500kbit, 250kbps (bytes/s); default none")
    p.add_argument("--rate-schedule", default=None, metavar="T:RATE,...",
                   help="bottleneck whose rate changes over time: T seconds since the shim started, "
                        "first at 0, times increasing, RATE as for --rate, e.g. 0:2mbit,20:500kbit,"
                        "40:2mbit (the rate holds until the next step; the last holds forever); "
                        "instead of --rate")
    p.add_argument("--burst", default=None, metavar="BYTES",
                   help="token-bucket depth (default: 2 datagrams or 5 ms at the rate)")
    p.add_argument("--queue-packets", type=int, default=64,
                   help="bottleneck buffer in packets, shared by the class queues (default 64)")
    p.add_argument("--queue-bytes", default=None, metavar="BYTES",
                   help="also cap the buffer in bytes (e.g. 64kb)")
    p.add_argument("--priority", action="store_true",
                   help="serve the buffer strictly by DSCP class (AF41 > AF42 > AF43 > default > "
                        "LE) with push-out; without it, one drop-tail FIFO")
    p.add_argument("--max-queue-delay-ms", type=float, default=None, metavar="MS",
                   help="drop a packet instead of sending it once it has waited longer than this in "
                        "the bottleneck buffer (counted as expired): it would miss the receiver's "
                        "playout deadline anyway. Off by default; pairs well with --priority")
    p.add_argument("--reorder", default="0", metavar="P",
                   help="probability (0.05 or 5%%) that a datagram is held back by --reorder-delay-ms "
                        "after the bottleneck, so datagrams behind it overtake it (default 0)")
    p.add_argument("--reorder-delay-ms", type=float, default=10.0, metavar="MS",
                   help="how long a reordered datagram is held back (default 10)")
    p.add_argument("--duplicate", default="0", metavar="P",
                   help="probability that a datagram is delivered twice (default 0)")
    p.add_argument("--overhead", type=int, default=28,
                   help="bytes added to each datagram by the bottleneck accounting (IP+UDP: 28)")
    p.add_argument("--awgn-snr-db", type=float, default=None, metavar="S",
                   help="a noisy radio link for analog streams (jscc-send --codec analog): add Gaussian noise at "
                        "S dB SNR to the float16 latent values of streams whose description says analog-f16; "
                        "every other packet passes untouched (paper 002)")
    p.add_argument("--reverse-delay-ms", type=float, default=0.0,
                   help="one-way delay of the return path alone (RTCP, receipts), lossless: a round trip of "
                        "--delay-ms + this without impairing the feedback")
    p.add_argument("--both-ways", action="store_true",
                   help="impair the receiver->sender direction (RTCP) the same way too")
    p.add_argument("--stats-interval", type=float, default=5.0,
                   help="seconds between counter log lines (0: never)")
    p.add_argument("--stats-json", type=Path, default=None, metavar="FILE",
                   help="write the final per-class counters here at exit, with a time series of the "
                        "forward link (see --series-interval)")
    p.add_argument("--series-interval", type=float, default=0.5, metavar="S",
                   help="seconds per record of the --stats-json time series (offered and delivered "
                        "bytes, losses, bottleneck rate, queue); the newest 1200 records are kept (10 "
                        "minutes at 0.5 s: a longer run wants a longer interval); 0: no series (default 0.5)")
    _add_control_args(p)
    add_common_args(p)
    return p


def _add_tc_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dev", required=True, metavar="IFACE", help="network device, e.g. eth0")
    add_common_args(p)


def _tc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} tc",
        description="Kernel impairments with tc: netem loss/delay, an HTB bottleneck and DSCP "
                    "priority classes. Needs root or CAP_NET_ADMIN (not for --dry-run or show).")
    sub = p.add_subparsers(dest="action", required=True, metavar="apply|show|clear")
    a = sub.add_parser("apply", help="replace the device's qdiscs with the impairments asked for",
                       description="Replace IFACE's root (or, with --ingress, ingress) qdiscs.")
    _add_tc_common(a)
    a.add_argument("--loss", default="none", metavar="SPEC",
                   help="none | uniform:P | ge:p,r,h,k | ge10 | ge15 (netem 'loss gemodel p r 1-h 1-k')")
    a.add_argument("--delay-ms", type=float, default=0.0)
    a.add_argument("--jitter-ms", type=float, default=0.0)
    a.add_argument("--rate", default=None, metavar="RATE", help="bottleneck rate (HTB), e.g. 2mbit")
    a.add_argument("--rate-schedule", default=None, help=argparse.SUPPRESS)  # refused, see _tc_main
    a.add_argument("--duplicate", default="0", metavar="P",
                   help="netem duplicate: probability (0.01 or 1%%) a packet is sent twice")
    a.add_argument("--reorder", default="0", metavar="P",
                   help="netem reorder: a fraction P of packets is sent without --delay-ms (needed) "
                        "and so overtakes the packets before it; unlike the shim's --reorder, which "
                        "holds packets back")
    a.add_argument("--priority-dscp", action="store_true",
                   help="one HTB class per importance level (AF41, AF42, AF43, default, LE) with "
                        "strict priority and short per-class queues; needs --rate")
    a.add_argument("--queue-packets", type=int, default=None,
                   help="packets per class queue (default 10 with --priority-dscp, else 50)")
    a.add_argument("--ingress", action="store_true",
                   help="impair traffic arriving on IFACE (through an ifb device) instead of leaving")
    a.add_argument("--dry-run", action="store_true", help="print the exact commands, change nothing")
    s = sub.add_parser("show", help="print qdiscs, classes (with counters) and filters")
    _add_tc_common(s)
    c = sub.add_parser("clear", help="remove the root and ingress qdiscs and the ifb device")
    _add_tc_common(c)
    c.add_argument("--dry-run", action="store_true", help="print the commands, change nothing")
    return p


def _probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} probe",
                                description="DSCP-marked UDP test traffic and a per-DSCP counter.")
    sub = p.add_subparsers(dest="action", required=True, metavar="send|recv")
    s = sub.add_parser("send", help="send paced datagrams cycling through DSCPs; print counts")
    s.add_argument("--dest", required=True, metavar="HOST:PORT")
    s.add_argument("--rate", default="1mbit", help="offered rate incl. IP/UDP headers (default 1mbit)")
    s.add_argument("--duration", type=float, default=2.0, help="seconds (default 2)")
    s.add_argument("--size", type=int, default=500, help="UDP payload bytes (default 500)")
    s.add_argument("--dscp", default="af41,af42,af43,le",
                   help="comma-separated DSCPs, equal shares (default af41,af42,af43,le)")
    add_common_args(s)
    r = sub.add_parser("recv", help="count datagrams per DSCP until idle; print JSON")
    r.add_argument("--listen", required=True, metavar="HOST:PORT")
    r.add_argument("--idle", type=float, default=1.0, help="stop after this many idle seconds")
    r.add_argument("--max-seconds", type=float, default=60.0, help="stop after this long anyway")
    add_common_args(r)
    return p


def _forward_link(args: argparse.Namespace):
    """(listen, forward, the forward link's LinkConfig) from the shim's flags."""
    from jscc_stream.netem.link import LinkConfig
    from jscc_stream.netem.loss import parse_loss_spec
    from jscc_stream.netem.rates import parse_probability, parse_rate, parse_rate_schedule, parse_size
    from jscc_stream.udp import parse_hostport

    try:
        listen = parse_hostport(args.listen)
        forward = parse_hostport(args.forward, default_host="127.0.0.1")
        if args.rate and args.rate_schedule is not None:
            raise ValueError("--rate and --rate-schedule both set the bottleneck: choose one")
        rate = parse_rate(args.rate) if args.rate else None
        schedule = parse_rate_schedule(args.rate_schedule) if args.rate_schedule is not None else None
        reorder = parse_probability(args.reorder, "--reorder")
        duplicate = parse_probability(args.duplicate, "--duplicate")
        if not 0 <= args.reorder_delay_ms <= 10_000:
            raise ValueError("--reorder-delay-ms must be between 0 and 10000")
        if args.series_interval < 0:
            raise ValueError("--series-interval must be >= 0")
        burst = parse_size(args.burst) if args.burst else None
        qbytes = parse_size(args.queue_bytes) if args.queue_bytes else None
        if args.queue_packets < 1:
            raise ValueError("--queue-packets must be >= 1")
        if args.stats_interval < 0:
            raise ValueError("--stats-interval must be >= 0")
        if args.max_queue_delay_ms is not None and not args.max_queue_delay_ms > 0:
            raise ValueError("--max-queue-delay-ms must be > 0")
        fwd = LinkConfig(loss=parse_loss_spec(args.loss), delay_s=args.delay_ms / 1e3,
                         jitter_s=args.jitter_ms / 1e3, rate_bps=rate, burst_bytes=burst,
                         queue_packets=args.queue_packets, queue_bytes=qbytes,
                         priority=args.priority, overhead=args.overhead,
                         max_queue_delay_s=(None if args.max_queue_delay_ms is None
                                            else args.max_queue_delay_ms / 1e3),
                         rate_schedule=schedule, reorder=reorder,
                         reorder_delay_s=args.reorder_delay_ms / 1e3, duplicate=duplicate)
        if (args.priority or args.max_queue_delay_ms is not None) and rate is None and schedule is None:
            logging.getLogger(PROG).warning("--priority and --max-queue-delay-ms have no effect "
                                            "without --rate or --rate-schedule")
    except ValueError as exc:
        if type(exc).__name__ == "LossSpecError":
            raise
        raise UserError(str(exc)) from None
    return listen, forward, fwd


def _shim_main(args: argparse.Namespace) -> int:
    from jscc_stream.netem.link import LinkConfig
    from jscc_stream.netem.shim import ShimConfig, run_shim
    from jscc_stream.udp import parse_hostport

    listen, forward, fwd = _forward_link(args)
    if args.reverse_delay_ms < 0:
        raise UserError("--reverse-delay-ms must be >= 0")
    if not args.client_timeout > 0 or args.max_clients < 1:
        raise UserError("--client-timeout must be > 0 and --max-clients >= 1")
    if args.trace_dir is not None and not args.control:
        raise UserError("--trace-dir names the traces of the control API: it needs --control")
    if args.both_ways and args.reverse_delay_ms:
        raise UserError("--reverse-delay-ms and --both-ways both set the return path: choose one")
    rev = (LinkConfig(**{**fwd.__dict__, "loss": fwd.loss}) if args.both_ways
           else LinkConfig(delay_s=args.reverse_delay_ms / 1e3))
    if args.awgn_snr_db is not None:
        from jscc_stream.netem.awgn import AwgnChannel

        AwgnChannel(args.awgn_snr_db)  # a one-line error for an SNR out of range
    cfg = ShimConfig(listen=listen, forward=forward, forward_link=fwd, reverse_link=rev,
                     seed=args.seed, stats_interval=args.stats_interval, awgn_snr_db=args.awgn_snr_db,
                     client_timeout=args.client_timeout, max_clients=args.max_clients,
                     series_interval=args.series_interval if args.stats_json else 0.0)
    from jscc_stream.cli import event_loop_factory

    def runner(coro) -> None:
        with asyncio.Runner(loop_factory=event_loop_factory()) as r:
            r.run(coro)
    try:
        if args.control:
            import os

            from jscc_stream.netem.control import ControlConfig, run_shim_with_control

            chost, cport = parse_hostport(args.control, default_host="127.0.0.1")
            token = args.control_token or os.environ.get("JSCC_CONTROL_TOKEN") or None
            ctl = ControlConfig(host=chost, port=cport, token=token, trace_dir=args.trace_dir)
            ctl.check()
            runner(run_shim_with_control(cfg, ctl, args.stats_json))
        else:
            runner(run_shim(cfg, args.stats_json))
    except ValueError as exc:  # bind/resolve failures, control API misconfiguration
        raise UserError(str(exc)) from None
    return 0


def _tc_main(args: argparse.Namespace) -> int:
    from jscc_stream.netem import tc
    from jscc_stream.netem.loss import parse_loss_spec
    from jscc_stream.netem.rates import parse_probability, parse_rate

    try:
        if args.action == "apply":
            if args.rate_schedule is not None:
                raise ValueError("--rate-schedule is a userspace shim option: tc applies a fixed "
                                 "--rate (change it with another 'tc apply')")
            cfg = tc.TcConfig(dev=args.dev, loss=parse_loss_spec(args.loss), delay_ms=args.delay_ms,
                              jitter_ms=args.jitter_ms,
                              rate_bps=parse_rate(args.rate) if args.rate else None,
                              priority_dscp=args.priority_dscp, ingress=args.ingress,
                              queue_packets=args.queue_packets,
                              reorder=parse_probability(args.reorder, "--reorder"),
                              duplicate=parse_probability(args.duplicate, "--duplicate"))
            if args.dry_run:
                print(f"# jscc-netem tc apply: existing root and ingress qdiscs on {args.dev} are "
                      "removed first")
                print("\n".join(tc.build_plan(cfg).lines()))
                return 0
            plan = tc.apply(cfg)
            print(f"applied {len(plan.tc)} tc commands on {plan.target}"
                  + (f" (ingress of {cfg.dev})" if cfg.ingress else ""))
        elif args.action == "clear":
            if args.dry_run:
                print("\n".join(tc.clear_plan(args.dev).lines()))
                return 0
            removed = tc.clear(args.dev)
            print("removed: " + ("; ".join(removed) if removed else "nothing (already clear)"))
        else:
            sys.stdout.write(tc.show(args.dev))
    except tc.TcError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        if type(exc).__name__ == "LossSpecError":
            raise
        raise UserError(str(exc)) from None
    return 0


def _probe_main(args: argparse.Namespace) -> int:
    from jscc_stream.netem import probe
    from jscc_stream.netem.dscp import parse_dscp
    from jscc_stream.netem.rates import parse_rate
    from jscc_stream.udp import parse_hostport

    try:
        if args.action == "send":
            dscps = [parse_dscp(d) for d in args.dscp.split(",") if d.strip()]
            if not dscps:
                raise ValueError("--dscp needs at least one DSCP")
            if args.duration <= 0:
                raise ValueError("--duration must be positive")
            sent = probe.send_probe(parse_hostport(args.dest, "127.0.0.1"), parse_rate(args.rate),
                                    args.duration, args.size, dscps)
            print(json.dumps({"sent": {str(k): v for k, v in sorted(sent.items())}}), flush=True)
        else:
            res = probe.run_recv(parse_hostport(args.listen), args.idle, args.max_seconds)
            print(json.dumps(res.as_dict()), flush=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"probe: {exc.strerror or exc}") from None
    return 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        parser = _tc_parser() if argv[0] == "tc" else _probe_parser()
        args = parser.parse_args(argv[1:])
        setup_logging(args.log_level)
        return _tc_main(args) if argv[0] == "tc" else _probe_main(args)
    args = _shim_parser().parse_args(argv)
    setup_logging(args.log_level)
    return _shim_main(args)


main = entry_point(_main, PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

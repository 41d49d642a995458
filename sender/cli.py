"""jscc-send: capture, encode, packetize and send a jscc-stream over RTP/UDP."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from jscc_stream.errors import UserError
from jscc_stream.cli import (add_common_args, entry_point, parse_args, parse_frame_size, parse_ssrc, run_async,
                             write_json)

__all__ = ["main", "build_parser", "parse_size"]

log = logging.getLogger("jscc.send")


def parse_size(text: str) -> tuple[int, int]:
    return parse_frame_size(text, multiple_of=16)


def _add_importance_args(p: argparse.ArgumentParser) -> None:
    """Paper 003's importance options: bit layers and regions of interest."""
    g = p.add_argument_group("importance (paper 003)")
    g.add_argument("--bit-layers", type=int, default=1, metavar="N",
                   help="entropy-coded codecs: split each quantized coefficient into N layers by significance "
                        "(a coarse index, then N-1 refinement bit-planes; paper 003), each in its own payloads "
                        "and marked below every coarse index, so a congested priority queue drops refinements "
                        "first; the receiver decodes whatever layers arrived (1: no split; at most 4)")
    g.add_argument("--layer-dscp", metavar="SPEC",
                   help="refinement bit layer -> DSCP, e.g. 1:BE,2-3:LE (implies --priority-dscp; default: LE for "
                        "the refinement of 2 layers, BE then LE for more; the coarse indexes then go over "
                        "AF41/AF42/AF43 unless --dscp-map says otherwise); 'level': refinements marked by their level")
    g.add_argument("--roi", metavar="face|MASKS",
                   help="regions that matter more get a finer quantizer step at the same frame budget (the rest "
                        "a coarser one) and their payloads one importance level up (DSCP, parity, NACK): 'face' "
                        "(a frontal-face detector, every 5th frame) or a folder of mask images / a video of masks, "
                        "one per frame at --size, white = important; entropy-coded codecs only")
    g.add_argument("--roi-boost", type=int, default=24, metavar="N",
                   help="quantizer indexes finer inside the regions, 1..64 (16 = half the step, 24 = a 2.8x finer "
                        "step)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-send", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Capture frames, encode them with a loss-resilient JSCC codec into K importance-ordered "
                    "latent blocks, and send them as RTP/UDP packets (<= --mtu bytes, most important block "
                    "first, paced across the frame interval, optionally DSCP-marked by importance).")
    p.add_argument("--source", default="synthetic",
                   help="synthetic[:SEED] | webcam[:INDEX] | VIDEO_FILE | IMAGE_FOLDER | 'GLOB' (slideshow) | "
                        "webrtc[:[HOST:]PORT] (a browser's camera over WebRTC; offers to http://HOST:PORT/offer, "
                        "default 127.0.0.1:8081)")
    p.add_argument("--webrtc-origin", action="append", metavar="URL",
                   help="--source webrtc: the viewer page's origin as the browser shows it (scheme://host:port, "
                        "e.g. http://127.0.0.1:8080), the only web page allowed to offer its camera; repeat for "
                        "several (default: http://127.0.0.1:8080 and http://localhost:8080, the viewer's default)")
    p.add_argument("--dest", action="append", metavar="HOST:PORT",
                   help="receiver (or shim) address; repeat to fan out; IPv6 as [ADDR]:PORT (default 127.0.0.1:5004)")
    p.add_argument("--size", default="320x240", help="frame size WxH (multiples of 16)")
    p.add_argument("--fps", type=float, default=30.0, help="capture rate")
    p.add_argument("--codec", default="video",
                   help="shipped codec name or a .safetensors path (video: predicted frames; uniform: every frame "
                        "intra, as before the video codec)")
    p.add_argument("--kbps", type=float,
                   help="bitrate of an entropy-coded codec, kbit/s on the wire (IP/UDP/RTP headers, parity and "
                        "retransmissions included); with congestion control the starting rate (default 0.5 bit "
                        "per pixel: 1152 at 320x240@30)")
    p.add_argument("--min-kbps", type=float,
                   help="congestion control never goes below this (default --kbps / 8)")
    p.add_argument("--max-kbps", type=float,
                   help="congestion control never goes above this (default --kbps: it only backs off and "
                        "recovers)")
    p.add_argument("--no-cc", action="store_true",
                   help="no congestion control: send --kbps whatever the path does (also the case with "
                        "several --dest)")
    p.add_argument("--protect-levels", type=int, default=2, metavar="N",
                   help="repair the payloads of the N most important levels: parity packets sized to the "
                        "reported loss, and resent when a receiver asks in time (0: none)")
    p.add_argument("--no-fec", action="store_true", help="no parity packets for the protected levels")
    p.add_argument("--no-nack", action="store_true", help="do not resend protected payloads on NACK")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="encoder arithmetic: auto = bf16 on CPUs with fast bf16 (2x faster), fp16 on CUDA")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the encoder")
    p.add_argument("--mtu", type=int, default=900, help="largest datagram in bytes, RTP header included")
    p.add_argument("--priority-dscp", action="store_true", help="mark each datagram's DSCP by its block's importance")
    p.add_argument("--dscp-map", metavar="SPEC",
                   help="importance level -> DSCP, e.g. 0-1:AF41,2-3:AF42,4-5:AF43,6-7:LE (implies --priority-dscp; "
                        "default: RFC 8837 interactive video, AF41/AF42/AF43 then LE)")
    p.add_argument("--pace", type=float, default=0.5, help="spread each frame's packets over this share of the frame interval (0: back to back)")
    p.add_argument("--no-adapt", action="store_true",
                   help="keep --fps even when receivers report that their decoder skips frames")
    p.add_argument("--references", default="feedback", choices=["feedback", "oneway", "intra"],
                   help="video codecs (predicted frames): predict from the newest frame the receiver confirmed "
                        "decoding, bit for bit (feedback; intra until the first confirmation, oneway while the "
                        "return path is silent), from the previous frame with an intra frame every "
                        "--intra-period frames (oneway: no return path, several receivers), or never (intra)")
    p.add_argument("--intra-period", type=int, default=30, help="oneway references: frames between intra frames")
    _add_importance_args(p)
    p.add_argument("--frames", type=int, help="stop after sending this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="seed for the synthetic source and slideshow motion")
    p.add_argument("--ssrc", metavar="N",
                   help="the stream's RTP SSRC (decimal or 0x hex; default random): a restarted sender keeps "
                        "its receivers' jscc-recv --ssrc lock")
    p.add_argument("--stats-json", metavar="FILE", help="write the sender's counters as JSON at exit")
    add_common_args(p)
    return p


def _codec_and_rate(args, width: int, height: int):
    """The codec by name, and the bitrate (kbit/s) for an entropy-coded one (None otherwise)."""
    import torch

    from jscc_stream.models.stream_codec import load_stream_codec

    torch.set_num_threads(args.threads)
    try:
        codec = load_stream_codec(args.codec, device=args.device, precision=args.precision)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    entropy_coded = getattr(codec, "entropy_coded", False)
    if args.kbps is not None and (args.kbps <= 0 or not entropy_coded):
        raise UserError("--kbps must be positive" if entropy_coded else
                        f"--kbps needs an entropy-coded codec; {args.codec} sends a fixed size per frame")
    if not entropy_coded:
        if args.min_kbps is not None or args.max_kbps is not None:
            raise UserError(f"--min-kbps/--max-kbps need an entropy-coded codec; {args.codec} has a fixed size")
        return codec, None
    from .sender import rate_bounds

    kbps = args.kbps if args.kbps is not None else 0.5 * width * height * args.fps / 1000
    try:
        rate_bounds(kbps, args.min_kbps, args.max_kbps)  # before a source or camera is opened
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return codec, kbps


def _set_bit_layers(codec, layers: int, layer_dscp: str | None) -> None:
    """``--bit-layers`` onto the codec (entropy-coded ones only)."""
    if layers == 1:
        if layer_dscp:
            raise UserError("--layer-dscp needs --bit-layers 2 or more")
        return
    from jscc_stream.models.bitlayers import MAX_BIT_LAYERS

    if not 1 <= layers <= MAX_BIT_LAYERS:
        raise UserError(f"--bit-layers must be in [1, {MAX_BIT_LAYERS}]")
    if not hasattr(codec, "bit_layers"):
        raise UserError(f"--bit-layers needs an entropy-coded codec; {codec.name} sends fixed-size blocks")
    codec.bit_layers = layers


def _dscp_maps(args, levels: int) -> tuple[dict[int, int] | None, dict[int, int] | None]:
    """(level -> DSCP, refinement layer -> DSCP) from --priority-dscp, --dscp-map, --bit-layers
    and --layer-dscp; (None, None): no marking."""
    from .dscp import LAYERED_LEVEL_CLASSES, default_dscp_map, default_layer_dscp, parse_dscp_map, parse_layer_dscp

    layered = args.bit_layers > 1
    if not (args.dscp_map or args.priority_dscp or args.layer_dscp):
        return None, None
    by_level = args.layer_dscp == "level"
    dscp_map = (parse_dscp_map(args.dscp_map, levels) if args.dscp_map else
                default_dscp_map(levels, LAYERED_LEVEL_CLASSES if layered and not by_level else (34, 36, 38, 1)))
    if not layered or by_level:
        return dscp_map, None
    return dscp_map, (parse_layer_dscp(args.layer_dscp, args.bit_layers) if args.layer_dscp
                      else default_layer_dscp(args.bit_layers))


def _regions(args, width: int, height: int, entropy_coded: bool):
    """The --roi source (jscc_stream/regions.py), or None."""
    if not 1 <= args.roi_boost <= 64:
        raise UserError("--roi-boost must be in 1..64")
    if args.roi is None:
        return None
    if not entropy_coded:
        raise UserError(f"--roi needs an entropy-coded codec; {args.codec} has a fixed size per frame")
    if args.bit_layers > 1:
        raise UserError("--roi and --bit-layers cannot be combined yet")
    from jscc_stream.regions import open_regions

    return open_regions(args.roi, width, height)


def _check_numbers(args) -> None:
    """The numeric flags' ranges, before anything is loaded."""
    if args.fps <= 0 or args.fps > 240:
        raise UserError("--fps must be in (0, 240]")
    if args.threads < 1:
        raise UserError("--threads must be >= 1")
    if args.frames is not None and args.frames < 1 or args.duration is not None and args.duration <= 0:
        raise UserError("--frames and --duration must be positive")
    if not 0 <= args.pace <= 1:
        raise UserError("--pace must be in [0, 1] (0: a frame's packets back to back)")
    if not 0 <= args.protect_levels <= 15:
        raise UserError("--protect-levels must be in [0, 15]")


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser, argv)
    width, height = parse_size(args.size)
    _check_numbers(args)
    ssrc = parse_ssrc(args.ssrc)

    from .dscp import DscpMapError
    from jscc_stream.proto.packetizer import MIN_MTU

    from .sender import Sender, SenderConfig, resolve_dest
    from jscc_stream.sources import open_source

    if args.mtu < MIN_MTU or args.mtu > 65000:
        raise UserError(f"--mtu must be in [{MIN_MTU}, 65000]")
    dests = args.dest or ["127.0.0.1:5004"]
    for d in dests:
        try:
            resolve_dest(d)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    codec, kbps = _codec_and_rate(args, width, height)
    entropy_coded = kbps is not None
    regions = _regions(args, width, height, entropy_coded)
    layout = codec.layout(width, height)
    _set_bit_layers(codec, args.bit_layers, args.layer_dscp)
    try:
        dscp_map, layer_dscp = _dscp_maps(args, layout.blocks)
    except DscpMapError as exc:
        raise UserError(str(exc)) from None
    if args.source == "webrtc" or args.source.startswith("webrtc:"):
        from .webrtc import DEFAULT_ORIGINS, open_webrtc_source, parse_origin

        origins = tuple(parse_origin(o) for o in args.webrtc_origin) if args.webrtc_origin else DEFAULT_ORIGINS
        source = open_webrtc_source(args.source, width, height, origins)
    else:
        source = open_source(args.source, width, height, args.fps, seed=args.seed)
    cfg = SenderConfig(width=width, height=height, fps=args.fps, mtu=args.mtu, dests=dests, dscp_map=dscp_map,
                       layer_dscp=layer_dscp,
                       frames=args.frames, duration=args.duration, pace_fraction=args.pace,
                       adapt=not args.no_adapt, kbps=kbps, references=args.references,
                       intra_period=args.intra_period, min_kbps=args.min_kbps, max_kbps=args.max_kbps,
                       congestion_control=not args.no_cc, protect_levels=args.protect_levels,
                       fec=not args.no_fec, nack=not args.no_nack, roi_boost=args.roi_boost, ssrc=ssrc)
    try:
        sender = Sender(codec, source, cfg, regions)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    shape = (f"{kbps:g} kbit/s, {layout.blocks} importance levels" if entropy_coded
             else f"K={layout.blocks}, L={layout.block_bytes} bytes")
    log.info("sending %s %dx%d@%g fps, codec %s (%s), ssrc %08x -> %s%s", args.source, width, height,
             args.fps, codec.name, shape, sender.ssrc, ", ".join(dests),
             (f", DSCP {dscp_map}" if dscp_map else "")
             + (f", bit layers {args.bit_layers} (refinement DSCP {layer_dscp or 'by level'})"
                if args.bit_layers > 1 else ""))
    if regions is not None:
        log.info("regions of interest: %s, %d quantizer indexes finer", args.roi, args.roi_boost)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sender.stop_event.set)
        return await sender.run()

    stats = run_async(go())
    summary = stats.summary()
    log.info("sent %d frames (%d dropped by a busy encoder, %d to match receivers' decode rate), %d packets, %d bytes; encode median %s ms",
             stats.frames_sent, stats.frames_dropped, stats.frames_rate_limited, stats.packets_sent, stats.bytes_sent,
             f"{summary['encode_ms_median']:.1f}" if summary["encode_ms_median"] else "-")
    write_json(args.stats_json, summary)
    if stats.encode_error is not None:  # a dead stream must not look like a finished one
        log.error("stream ended early: encoding failed (%s)", stats.encode_error)
        return 1
    return 0


main = entry_point(_main, "jscc-send")


if __name__ == "__main__":
    raise SystemExit(main())

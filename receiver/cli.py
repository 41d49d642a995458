"""jscc-recv: receive a jscc-stream, decode every frame at its playout deadline from whatever arrived."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Sequence

from jscc_stream.errors import UserError
from jscc_stream.cli import (add_common_args, entry_point, parse_args, parse_frame_size, parse_ssrc, run_async,
                             write_json)

__all__ = ["main", "build_parser", "CodecCache"]

log = logging.getLogger("jscc.recv")


class CodecCache:
    """Finds the codec a stream description names (or the one forced with --codec), once.

    A description comes from any UDP source, so the name in it is only looked up among the
    shipped codecs: never opened as a path or used as a file pattern, and a stream of made-up
    names cannot grow the cache (only shipped names and the ``--codec`` of the command line are
    ever loaded)."""

    def __init__(self, forced: str | None, device: str, precision: str = "auto") -> None:
        from jscc_stream.models.zoo import available_codecs

        self.forced = forced
        self.device = device
        self.precision = precision
        self.shipped = frozenset(available_codecs())
        self.refused = 0  # descriptions naming a codec that is not shipped
        self._cache: dict[str, object | None] = {}
        self._lock = threading.Lock()  # called from every decode worker

    def __call__(self, info):
        with self._lock:
            return self._get(info)

    def _get(self, info):
        from jscc_stream.models.zoo import CodecLoadError

        key = self.forced or info.codec_name
        if not self.forced and key not in self.shipped:
            self.refused += 1
            if self.refused <= 3 or self.refused % 1000 == 0:
                log.error("stream %08x names codec %r, which is not shipped (shipped: %s; jscc-recv --codec "
                          "chooses another); not decoded (%d such)", info.ssrc, str(key)[:64],
                          ", ".join(sorted(self.shipped)), self.refused)
            return None
        if key not in self._cache:
            from jscc_stream.models.stream_codec import load_stream_codec

            try:
                codec = load_stream_codec(key, device=self.device, bits=info.layout.bits,
                                          precision=self.precision)
            except (CodecLoadError, ValueError) as exc:
                log.error("cannot decode stream %08x: %s", info.ssrc, exc)
                codec = None
            if codec is not None and info.codec_sha256 and codec.sha256 and codec.sha256 != info.codec_sha256:
                log.warning("codec %s has sha256 %s.. but the stream says %s..", key, codec.sha256[:8],
                            info.codec_sha256[:8])
            self._cache[key] = codec
        codec = self._cache[key]
        if codec is not None:
            lay = codec.layout(info.layout.width, info.layout.height)
            if ((lay.blocks, lay.block_bytes) != (info.layout.blocks, info.layout.block_bytes)
                    or bool(getattr(codec, "entropy_coded", False)) != info.entropy_coded
                    or getattr(codec, "kind", "") != info.codec_kind):  # float16 values vs quantized codes
                return None
        return codec


def _max_size(text: str) -> tuple[int, int]:
    try:
        return parse_frame_size(text, multiple_of=1)
    except UserError as exc:
        raise UserError(f"--max-size: {exc}") from None


def _join(text: str | None) -> tuple | None:
    """--join HOST:PORT -> the relay's socket address (None: no relay to join)."""
    if text is None:
        return None
    from jscc_stream.udp import parse_hostport, resolve

    try:
        return resolve(*parse_hostport(text, default_host=None))[1]
    except ValueError as exc:
        raise UserError(f"--join: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-recv", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Receive a jscc-stream (RTP/UDP), reassemble each frame's latent blocks, and decode it at "
                    "its playout deadline from whatever arrived (missing bytes are erasures, not stalls). "
                    "Sends RTCP receiver reports back to the sender.")
    p.add_argument("--listen", default="127.0.0.1:5004",
                   help="HOST:PORT or [IPv6]:PORT to receive on (loopback by default: 0.0.0.0:5004 to hear other machines)")
    p.add_argument("--latency-ms", type=float, default=50.0,
                   help="playout deadline: a frame is decoded at most this long after its first packet arrived "
                        "(sooner when it is complete or a newer frame completes)")
    p.add_argument("--reorder-ms", type=float, default=10.0,
                   help="after a frame's last packet, wait at most this long for reordered ones")
    p.add_argument("--codec", help="force this codec (name or .safetensors path) instead of the one the stream names")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="decoder arithmetic: auto = bf16 on CPUs with fast bf16 (2x faster), fp16 on CUDA")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the decoder (1 is fastest when sender and receiver share 2 cores)")
    p.add_argument("--decode-workers", type=int, default=1,
                   help="frames decoded in parallel, each on its own thread with --threads torch threads (2 raises throughput "
                        "when the receiver has 2 idle cores; on a shared machine it only adds latency)")
    p.add_argument("--gap-ms", type=float, default=None,
                   help="entropy-coded streams: a frame none of whose packets arrived for this long is decoded "
                        "with what it has (its sender sends a frame's packets together, so the rest was lost; "
                        "without it a frame whose last packet was lost waits for the next frame or --latency-ms). "
                        "Use with jscc-send --pace 0 or small; off by default")
    p.add_argument("--decode-queue", type=int, default=2,
                   help="frame intervals a released frame may wait for the decoder; a frame waiting longer is "
                        "skipped (counted) when the next one is released, so latency does not build up when the "
                        "decoder is behind. Frames released together (behind a late or held one) all wait their "
                        "turn, up to 8")
    p.add_argument("--max-size", default="1920x1080", metavar="WxH",
                   help="largest frame a stream may announce (either orientation); a larger one is refused, "
                        "since any UDP source can send a stream description")
    p.add_argument("--max-pending-mb", type=float, metavar="MB",
                   help="memory the frames not yet played out may hold (wire bytes, masks, payloads, parity); "
                        "past it the frames with the earliest deadline are played out early (counted). Default: "
                        "1 byte per pixel of --max-size for each frame of a 60 fps stream in the playout window, "
                        "at least 8 (16.6 MB at 1920x1080, 50 ms)")
    p.add_argument("--ssrc", metavar="N",
                   help="accept only the stream with this RTP SSRC (decimal or 0x hex; see jscc-send --ssrc). "
                        "Default: lock onto the first stream that sends a valid description. Packets of other "
                        "SSRCs are counted and dropped")
    p.add_argument("--handover-ms", type=float, default=300.0,
                   help="once the locked stream has been silent this long, a new one may take over (another "
                        "SSRC without --ssrc; or its sender restarted with the same SSRC)")
    p.add_argument("--no-nack", action="store_true",
                   help="never ask for missing payloads of the protected (top) levels; by default the receiver "
                        "asks once it knows the round trip (from the sender's XR DLRR) and only while the answer "
                        "can arrive before the frame's playout deadline (--latency-ms)")
    p.add_argument("--levels", type=int, default=0, metavar="N",
                   help="subscribe to importance levels 0..N-1 only (0: all): a relay (jscc-relay) forwards "
                        "this receiver only those, and every frame is decoded from them (the rest left out)")
    p.add_argument("--join", metavar="HOST:PORT",
                   help="a relay's receiver port (jscc-relay --listen-receivers): subscribe there (with --levels) "
                        "every 0.5 s; leaving (exit) sends RTCP BYE, and a relay forgets a silent receiver")
    p.add_argument("--arrival-ms", type=float, default=50.0,
                   help="interval of the per-packet arrival reports the sender's congestion control uses (0: none)")
    p.add_argument("--display", action="store_true",
                   help="show frames in a window at their real size with an fps/loss/levels/latency overlay; "
                        "q, Esc or closing the window stops the receiver (needs a desktop: see --web otherwise)")
    p.add_argument("--record", metavar="OUT.mp4", help="record the decoded frames to a video file")
    p.add_argument("--save-frames", metavar="DIR", help="save every decoded frame as DIR/<frame id>.png")
    p.add_argument("--stats-json", metavar="FILE", help="one JSON record per frame (JSON lines)")
    p.add_argument("--summary-json", metavar="FILE", help="write the run's summary as JSON at exit")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    from .web import add_web_args

    add_web_args(p)
    add_common_args(p)
    return p


def _check_numbers(args) -> None:
    """The numeric flags' ranges, before anything is opened or loaded."""
    if args.latency_ms <= 0 or args.reorder_ms < 0:
        raise UserError("--latency-ms must be positive and --reorder-ms not negative")
    if args.threads < 1 or args.decode_workers < 1:
        raise UserError("--threads and --decode-workers must be >= 1")
    if args.decode_queue < 1:
        raise UserError("--decode-queue must be >= 1")
    if args.gap_ms is not None and args.gap_ms <= 0:
        raise UserError("--gap-ms must be positive")
    if not 0 <= args.arrival_ms <= 10000:
        raise UserError("--arrival-ms must be in [0, 10000] (0: no arrival reports)")
    if not 0 <= args.levels <= 255:
        raise UserError("--levels must be in [0, 255] (0: every level)")
    if args.frames is not None and args.frames < 1 or args.duration is not None and args.duration <= 0:
        raise UserError("--frames and --duration must be positive")
    if args.max_pending_mb is not None and args.max_pending_mb <= 0 or args.handover_ms < 0:
        raise UserError("--max-pending-mb must be positive and --handover-ms not negative")


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser, argv)
    _check_numbers(args)
    join = _join(args.join)
    ssrc = parse_ssrc(args.ssrc)

    from .outputs import Outputs
    from .receiver import Receiver, ReceiverConfig, open_listen_socket

    try:
        sock = open_listen_socket(args.listen)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    import torch

    torch.set_num_threads(args.threads)
    codecs = CodecCache(args.codec, args.device, args.precision)
    if args.codec:
        from jscc_stream.models.zoo import load_codec

        load_codec(args.codec)  # fail early, one line, on a wrong name/path or a file that is not weights
    running: dict = {}  # the event loop, once it runs: the window's q/Esc/close stops the receiver

    def window_closed() -> None:
        loop = running.get("loop")
        if loop is not None:
            loop.call_soon_threadsafe(running["stop"].set)

    outputs = Outputs(display=args.display, record=args.record, save_frames=args.save_frames,
                      stats_json=args.stats_json, on_close=window_closed)
    cfg = ReceiverConfig(latency=args.latency_ms / 1000, reorder_grace=args.reorder_ms / 1000, frames=args.frames,
                         duration=args.duration, decode_workers=args.decode_workers,
                         max_decode_queue=args.decode_queue,
                         gap=None if args.gap_ms is None else args.gap_ms / 1000, nack=not args.no_nack,
                         max_size=_max_size(args.max_size), ssrc=ssrc, handover=args.handover_ms / 1000,
                         max_pending_bytes=None if args.max_pending_mb is None else int(args.max_pending_mb * 1e6),
                         arrival_interval=args.arrival_ms / 1000, levels=args.levels, join=join)
    from .web import viewer_from_args

    viewer = viewer_from_args(args)
    receiver = Receiver(sock, codecs, outputs, cfg, on_frame=viewer.on_frame if viewer else None)
    log.info("listening on %s, playout deadline %.0f ms", args.listen, args.latency_ms)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, receiver.stop_event.set)
        running.update(loop=loop, stop=receiver.stop_event)
        if viewer is None:
            return await receiver.run()
        await viewer.start(receiver)
        try:
            return await receiver.run()
        finally:
            await viewer.close()

    stats = run_async(go())
    sock.close()
    summary = stats.summary(receiver.reasm.counters)
    c = receiver.reasm.counters
    log.info("frames out %d (decoded %d, undecodable %d, skipped %d); latency p50 %s p95 %s ms; late packets %d, "
             "invalid %d, of other streams %d; frames played early for memory %d", stats.frames_out,
             stats.frames_decoded, stats.frames_undecodable, stats.frames_skipped, summary["latency_p50_ms"],
             summary["latency_p95_ms"], c.late, c.invalid, c.foreign, c.frames_evicted)
    write_json(args.summary_json, summary)
    return 0


main = entry_point(_main, "jscc-recv")


if __name__ == "__main__":
    raise SystemExit(main())

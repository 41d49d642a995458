"""Baseline streams over real UDP through the ``jscc-netem`` shim: sender and receiver of one arm.

Both ends run in one asyncio loop of the harness process (one clock, so capture-to-display latency
needs no synchronisation); the shim runs as its own process between them. Every datagram is an RTP
packet (aiortc's ``RtpPacket``) of at most ``mtu`` bytes, header included.

Arms: ``h264`` (RFC 6184), ``h264-slices`` (slices of at most one packet), ``h264-fec`` (the same plus Reed-Solomon parity packets per frame on
their own SSRC, at the same total bitrate), ``h264-nack`` (the same as h264 plus RTCP generic NACK,
RFC 4585, and retransmission of the original packet; the receiver holds each NACK for RTT/2 to
model the return path, the shim's one-way delay is the other half), ``jpeg``.

Playout: the rule of jscc-recv (``proto.reassembly.playout_count``): frames leave in order, each at
the first of: complete; its deadline = first packet arrival + latency; a newer frame complete or
past its deadline (for NACK, which must wait for repairs, only when nothing of the frame arrived).
A frame with no picture keeps the last good one on screen (frozen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket, RtpPacket

from jscc_stream.baselines.codec import PacketDecoder, PacketEncoder
from jscc_stream.baselines.fec import FecError, FecHeader, encode_parity, fec_ratio, parity_count, recover
from jscc_stream.baselines.h264 import H264Decoder, H264Encoder
from jscc_stream.baselines.jpeg_payload import JpegDepacketizer, JpegPacketizer
from jscc_stream.proto.packet import DATAGRAM_LIMIT, RTP_HEADER_BYTES
from jscc_stream.proto.reassembly import playout_count
from jscc_stream.proto.seq import SeqUnwrapper

__all__ = ["ARMS", "ArmConfig", "ArmRun", "run_arm"]

log = logging.getLogger(__name__)

ARMS = ("h264", "h264-slices", "h264-fec", "h264-nack", "jpeg")
MEDIA_PT, FEC_PT, JPEG_PT = 96, 100, 98
MEDIA_SSRC, FEC_SSRC, RECV_SSRC = 0x4832_3634, 0x4645_4331, 0x5243_5652
CLOCK = 90000


@dataclass
class ArmConfig:
    arm: str
    width: int
    height: int
    fps: float = 30.0
    payload_bytes_per_frame: int = 4800  # the JSCC stream's latent bytes per frame
    mtu: int = DATAGRAM_LIMIT
    latency_ms: float = 50.0  # playout deadline after a frame's first packet
    rtt_ms: float = 100.0  # NACK arm: round trip (shim one-way delay + held NACK)
    nack_latency_ms: float | None = None  # default latency + 2.5 RTT (about two repair rounds)
    loss_rate: float = 0.0  # what the FEC arm sizes its parity for (known mean loss)
    max_nack_tries: int = 3


@dataclass
class ArmRun:
    arm: str
    shown: list[np.ndarray | None]  # per source frame: the picture on screen (None before the first)
    decoded: list[bool]  # a new picture was decoded for this frame (False = frozen)
    latency_ms: list[float | None]  # capture-to-display, decoded frames only
    packets_sent: int = 0
    wire_bytes: int = 0  # UDP payload bytes sent (RTP headers included, retransmissions included)
    retransmissions: int = 0
    fec_recovered_frames: int = 0
    duration_s: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class _Slot:
    first_arrival: float
    media: dict[int, bytes] = field(default_factory=dict)  # unwrapped seq -> payload (or raw packet)
    raw: dict[int, bytes] = field(default_factory=dict)  # unwrapped seq -> whole RTP packet (FEC arm)
    marker: int | None = None
    parity: dict[int, bytes] = field(default_factory=dict)  # share index -> symbol
    fec: tuple[int, int, int] | None = None  # (base unwrapped seq, k, n)


class _Sender(asyncio.DatagramProtocol):
    """Encodes and sends; answers NACKs from its history (h264-nack)."""

    def __init__(self, cfg: ArmConfig, run: ArmRun) -> None:
        self.cfg, self.run = cfg, run
        self.seq = 0
        self.fec_seq = 0
        self.history: dict[int, bytes] = {}
        self.transport: asyncio.DatagramTransport | None = None
        ratio = fec_ratio(cfg.loss_rate) if cfg.arm == "h264-fec" else 0.0
        self.fec_ratio = ratio
        bitrate = cfg.payload_bytes_per_frame * 8 * cfg.fps * (1 - ratio)
        slices = cfg.mtu - RTP_HEADER_BYTES - 8 if cfg.arm == "h264-slices" else None  # x264 counts the NAL overhead itself
        self.pt = JPEG_PT if cfg.arm == "jpeg" else MEDIA_PT
        mtu = cfg.mtu - (20 if cfg.arm == "h264-fec" else 0)  # room for FEC header + length
        self.encoder: PacketEncoder = (
            JpegPacketizer(cfg.payload_bytes_per_frame, cfg.mtu) if cfg.arm == "jpeg"
            else H264Encoder(cfg.width, cfg.height, cfg.fps, bitrate, slice_max_size=slices, mtu=mtu))

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _send(self, data: bytes) -> None:
        assert len(data) <= self.cfg.mtu, len(data)
        self.transport.sendto(data)
        self.run.packets_sent += 1
        self.run.wire_bytes += len(data)

    def send_frame(self, index: int, bgr: np.ndarray) -> None:
        ts = (index * CLOCK // round(self.cfg.fps)) & 0xFFFFFFFF
        payloads, pt = self.encoder.packets(bgr), self.pt
        sources = []
        for i, pl in enumerate(payloads):
            pkt = RtpPacket(payload_type=pt, marker=int(i == len(payloads) - 1), sequence_number=self.seq,
                            timestamp=ts, ssrc=MEDIA_SSRC, payload=pl).serialize()
            if self.cfg.arm == "h264-nack":
                self.history[self.seq] = pkt
                self.history.pop((self.seq - 1024) & 0xFFFF, None)
            sources.append(pkt)
            self._send(pkt)
            self.seq = (self.seq + 1) & 0xFFFF
        if self.cfg.arm == "h264-fec" and self.fec_ratio > 0:
            k = len(sources)
            n = k + parity_count(k, self.fec_ratio)
            base = (self.seq - k) & 0xFFFF
            for j, sym in enumerate(encode_parity(sources, n)):
                hdr = FecHeader(base_seq=base, k=k, n=n, index=k + j).pack()
                self._send(RtpPacket(payload_type=FEC_PT, sequence_number=self.fec_seq, timestamp=ts,
                                     ssrc=FEC_SSRC, payload=hdr + sym).serialize())
                self.fec_seq = (self.fec_seq + 1) & 0xFFFF

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 2 or not 192 <= data[1] <= 223:
            return
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for p in packets:
            if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK:
                for seq in p.lost:
                    pkt = self.history.get(seq)
                    if pkt is not None:
                        self._send(pkt)
                        self.run.retransmissions += 1


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, cfg: ArmConfig, run: ArmRun, n_frames: int, capture: dict[int, float]) -> None:
        self.cfg, self.run, self.n = cfg, run, n_frames
        self.capture = capture
        self.slots: dict[int, _Slot] = {}
        self.unwrap = SeqUnwrapper()
        self.fec_unwrap = SeqUnwrapper()
        self.next_frame = 0
        self.last_image: np.ndarray | None = None
        self.nack = cfg.arm == "h264-nack"
        lat = cfg.latency_ms if not self.nack else (cfg.nack_latency_ms or cfg.latency_ms + 2.5 * cfg.rtt_ms)
        self.deadline_s = lat / 1000
        self.decoder: PacketDecoder | None = None  # made in _run, from what the sender signals
        self.jpeg = cfg.arm == "jpeg"
        self.highest: int | None = None
        self.pending: dict[int, list[float]] = {}  # NACK: ext seq -> [next send time, tries]
        self.marker_of: dict[int, int] = {}  # frame -> ext seq of its marker packet
        self.transport = None
        self.peer = None
        self.done = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _frame_of(self, ts: int) -> int:
        return round(ts * round(self.cfg.fps) / CLOCK)

    def datagram_received(self, data: bytes, addr) -> None:
        self.peer = addr
        self.receive(data, time.monotonic())

    def receive(self, data: bytes, now: float) -> None:
        """One datagram at time ``now`` (monotonic seconds)."""
        try:
            pkt = RtpPacket.parse(data)
        except ValueError:
            return
        f = self._frame_of(pkt.timestamp)
        if f < self.next_frame or f >= self.n:  # late (frame already shown) or garbage
            if pkt.payload_type == MEDIA_PT:
                self._track_seq(self.unwrap.unwrap(pkt.sequence_number), now)
            return
        slot = self.slots.get(f)
        if slot is None:
            slot = self.slots[f] = _Slot(first_arrival=now)
        if pkt.payload_type == FEC_PT:
            try:
                hdr, sym = FecHeader.parse(pkt.payload)
            except FecError:
                return
            base = self.unwrap.unwrap(hdr.base_seq) if self.unwrap.highest is not None else hdr.base_seq
            slot.fec = (base, hdr.k, hdr.n)
            slot.parity[hdr.index] = sym
        elif pkt.payload_type in (MEDIA_PT, JPEG_PT):
            ext = self.unwrap.unwrap(pkt.sequence_number)
            slot.media[ext] = pkt.payload
            slot.raw[ext] = data
            if pkt.marker:
                slot.marker = ext
                self.marker_of[f] = ext
            self._track_seq(ext, now)
        self._release(now)

    # -- NACK
    def _track_seq(self, ext: int, now: float) -> None:
        if not self.nack:
            return
        self.pending.pop(ext, None)
        if self.highest is None:
            missing = range(0, ext)  # the stream starts at sequence number 0
            self.highest = ext
        elif ext > self.highest:
            missing = range(self.highest + 1, ext)
            self.highest = ext
        else:
            return
        for s in missing:
            self.pending[s] = [now, 0]

    def _send_nacks(self, now: float) -> None:
        if not self.pending or self.peer is None:
            return
        oldest_useful = self.marker_of.get(self.next_frame - 1, -1)
        due = []
        for s, entry in list(self.pending.items()):
            if s <= oldest_useful or entry[1] >= self.cfg.max_nack_tries:
                del self.pending[s]
            elif entry[0] <= now:
                due.append(s & 0xFFFF)
                entry[0] = now + 1.5 * self.cfg.rtt_ms / 1000
                entry[1] += 1
        if due:
            for i in range(0, len(due), 200):
                fb = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=RECV_SSRC, media_ssrc=MEDIA_SSRC,
                                           lost=sorted(due[i:i + 200])))
                # the return path's half of the round trip
                asyncio.get_running_loop().call_later(self.cfg.rtt_ms / 2000, self.transport.sendto, fb, self.peer)

    # -- playout
    def _first_seq(self, f: int, slot: _Slot | None) -> int | None:
        if f == 0:
            return 0
        if f - 1 in self.marker_of:
            return self.marker_of[f - 1] + 1
        if slot is not None and slot.fec is not None:
            return slot.fec[0]
        return None

    def _media_complete(self, f: int, slot: _Slot | None) -> bool:
        if slot is None:
            return False
        if self.jpeg:
            counts = {JpegDepacketizer.packet_count(p) for p in slot.media.values()}
            return len(counts) == 1 and len(slot.media) == next(iter(counts))
        first = self._first_seq(f, slot)
        if slot.marker is None or first is None:
            return False
        return all(s in slot.media for s in range(first, slot.marker + 1))

    def _recoverable(self, slot: _Slot | None) -> bool:
        if slot is None or slot.fec is None:
            return False
        base, k, _ = slot.fec
        return sum(base <= s < base + k for s in slot.media) + len(slot.parity) >= k

    def _complete(self, f: int) -> bool:
        slot = self.slots.get(f)
        return self._media_complete(f, slot) or self._recoverable(slot)

    def _release(self, now: float, flush: bool = False) -> None:
        """Show the frames that the playout rule lets go (``flush``: all the rest)."""
        window = range(self.next_frame, self.n if flush else max(self.slots, default=self.next_frame - 1) + 1)
        slots = [self.slots.get(f) for f in window]
        ready = [flush or (s is not None and (self._complete(f) or now >= s.first_arrival + self.deadline_s))
                 for f, s in zip(window, slots)]
        count = playout_count(ready, [s is not None for s in slots] if self.nack else None)
        for f in window[:count]:
            self._show(f, self.slots.pop(f, None), now)
        self.next_frame += count
        if self.next_frame >= self.n:
            self.done.set()

    def _show(self, f: int, slot: _Slot | None, now: float) -> None:
        img = None
        if slot is not None:
            if self.cfg.arm == "h264-fec" and not self._media_complete(f, slot) and self._recoverable(slot):
                base, k, n = slot.fec
                shares = {s - base: slot.raw[s] for s in slot.media if base <= s < base + k}
                shares.update(slot.parity)
                try:
                    for i, raw in enumerate(recover(k, n, shares)):
                        if base + i not in slot.media:
                            pkt = RtpPacket.parse(raw)
                            slot.media[base + i] = pkt.payload
                    self.run.fec_recovered_frames += 1
                except (FecError, ValueError):
                    pass
            if slot.media:
                img = self.decoder.decode([(s & 0xFFFF, p) for s, p in slot.media.items()])
        t = time.monotonic()
        if img is not None:
            self.last_image = img
            self.run.latency_ms[f] = (t - self.capture[f]) * 1000 if f in self.capture else None
        self.run.decoded[f] = img is not None
        self.run.shown[f] = self.last_image

    async def tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            self._send_nacks(now)
            self._release(now)
            await asyncio.sleep(0.002)


async def _run(cfg: ArmConfig, frames: list[np.ndarray], shim_addr: tuple[str, int], recv_port: int | None,
               ready: asyncio.Future | None = None) -> ArmRun:
    loop = asyncio.get_running_loop()
    n = len(frames)
    run = ArmRun(arm=cfg.arm, shown=[None] * n, decoded=[False] * n, latency_ms=[None] * n)
    capture: dict[int, float] = {}
    rx = _Receiver(cfg, run, n, capture)
    rtransport, _ = await loop.create_datagram_endpoint(lambda: rx, local_addr=("127.0.0.1", recv_port or 0))
    tx = _Sender(cfg, run)
    # out of band: H.264's SDP sprop-parameter-sets, the picture size
    rx.decoder = (JpegDepacketizer(cfg.width, cfg.height) if cfg.arm == "jpeg"
                  else H264Decoder(tx.encoder.parameter_sets))
    stransport, _ = await loop.create_datagram_endpoint(lambda: tx, remote_addr=shim_addr)
    stop = asyncio.Event()
    ticker = asyncio.create_task(rx.tick(stop))
    t0 = time.monotonic() + 0.05
    try:
        for i, bgr in enumerate(frames):
            delay = t0 + i / cfg.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            capture[i] = time.monotonic()
            tx.send_frame(i, bgr)
        end_wait = rx.deadline_s + 0.5 + cfg.rtt_ms / 1000
        try:
            await asyncio.wait_for(rx.done.wait(), end_wait)
        except asyncio.TimeoutError:
            rx._release(time.monotonic(), flush=True)
    finally:
        stop.set()
        await ticker
        stransport.close()
        rtransport.close()
    run.duration_s = n / cfg.fps
    run.extra["fec_ratio"] = tx.fec_ratio
    run.extra["nals_dropped"] = getattr(rx.decoder, "nals_dropped", 0)
    return run


def run_arm(cfg: ArmConfig, frames: list[np.ndarray], shim_listen: tuple[str, int], recv_port: int) -> ArmRun:
    """Stream ``frames`` in real time to the shim at ``shim_listen``, receiving on ``recv_port``."""
    if cfg.arm not in ARMS:
        raise ValueError(f"unknown arm {cfg.arm!r}; choose from {', '.join(ARMS)}")
    return asyncio.run(_run(cfg, frames, shim_listen, recv_port))

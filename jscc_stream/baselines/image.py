"""Classical image baselines (JPEG, JPEG 2000 via OpenCV) cut into packets and decoded under loss.

They answer the question of issue 2, item 8: what would a classical codec deliver at the same bytes
per frame, in the same <= payload_limit packets, under the same losses as the JSCC codec?

JPEG: baseline (sequential, 4:2:0, Huffman tables optimised per image) at the highest integer quality
that fits the byte budget, written with one restart interval per MCU row (16 pixel rows). The stream
is packetized at restart boundaries as in RFC 2435: the first packet carries the headers (SOI..SOS)
and the first whole intervals, later packets as many whole intervals as fit; an interval bigger than
a packet is split, and losing any piece loses the whole interval. A damaged frame is decoded as
follows. If a packet carrying header bytes is lost, the frame is undecodable and shown mid-grey.
Otherwise each lost interval is replaced by a minimal valid interval of the same number of MCUs (every
block coded as DC difference 0 and an immediate end-of-block, using the frame's own Huffman tables,
followed by the original restart marker), so libjpeg decodes the repaired stream without
resynchronisation and the received rows come out bit-exact. The lost MCU rows are then concealed by
linear interpolation, per pixel column, between the last intact pixel row above and the first intact
pixel row below (copying the nearest one at the top/bottom border). The one pixel row bordering a lost
band on each side is concealed too, because libjpeg's chroma upsampling (4:2:0) blends chroma across
MCU rows; restart markers reset the DC predictor, so the damage never spreads further.

JPEG 2000: OpenJPEG through OpenCV at the least compression (IMWRITE_JPEG2000_COMPRESSION_X1000, the
largest value) whose raw codestream (JP2 box stripped) fits the budget. OpenCV's writer makes one
quality layer, LRCP order, one tile, no SOP/EPH markers, so the codestream is resolution-progressive
but not quality-layered. It is cut into <= payload_limit chunks in order; with losses the decoder
keeps the prefix before the first lost packet. OpenJPEG (strict mode, not switchable from OpenCV)
rejects a plainly truncated stream, with or without an appended EOC, because the tile-part length
(Psot) and the code-block segment lengths no longer match. What works: keep the received prefix, fill
the rest of the tile-part (its length is in the SOT of the first packet) with zero bytes and end with
EOC. Zero bytes read as empty packet headers, so the lower resolutions in the prefix decode fully; the
one packet that was cut decodes as noise in its code-blocks, so PSNR is not monotone in the prefix
length. Losing the main header (first packet), or a prefix OpenJPEG still rejects, gives mid-grey.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CodedImage", "encode_jpeg", "encode_jpeg2000", "decode_with_loss", "grey_frame", "largest_fitting"]

_GREY = 128


@dataclass(frozen=True)
class CodedImage:
    """One frame coded by a classical codec and cut into packets.

    `unit_spans` are the byte ranges of the decodable units of `data`: for JPEG unit 0 is the header
    (SOI..SOS) and unit i+1 restart interval i (with its trailing RST/EOI marker); for JPEG 2000 a
    unit is a packet. `packet_units[p]` lists the units packet p carries (all or part of): a unit is
    received only if every packet carrying it is.
    """

    codec: str
    data: bytes
    packets: tuple[bytes, ...]
    quality: float
    width: int
    height: int
    unit_spans: tuple[tuple[int, int], ...]
    packet_units: tuple[tuple[int, ...], ...]

    @classmethod
    def cut(cls, codec: str, data: bytes, spans: Sequence[tuple[int, int]], quality: float, rgb: np.ndarray,
            unit_spans: Sequence[tuple[int, int]], packet_units: Sequence[tuple[int, ...]]) -> "CodedImage":
        """``data`` (coded from ``rgb``) cut into packets at the byte ``spans``."""
        return cls(codec=codec, data=data, packets=tuple(data[a:b] for a, b in spans), quality=float(quality),
                   width=rgb.shape[1], height=rgb.shape[0], unit_spans=tuple(unit_spans),
                   packet_units=tuple(packet_units))


def grey_frame(width: int, height: int) -> np.ndarray:
    """What an undecodable frame is shown as."""
    return np.full((height, width, 3), _GREY, np.uint8)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {getattr(rgb, 'dtype', type(rgb))}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"image must be RGB with shape (H, W, 3), got {rgb.shape}")


def _check_budget(max_bytes: int, payload_limit: int) -> None:
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if payload_limit < 16:
        raise ValueError(f"payload_limit must be at least 16 bytes, got {payload_limit}")


def largest_fitting(
    encode, lo: int, hi: int, max_bytes: int, what: str, guess: int | None = None
) -> tuple[int, bytes]:
    """Binary search for the largest parameter in [lo, hi] whose encoding fits in max_bytes.

    A guess narrows the first bracket to about +-25 % around it (saves encodes for JPEG 2000, whose
    size is close to proportional to its parameter).
    """
    cache: dict[int, bytes] = {}

    def fits(p: int) -> bool:
        if p not in cache:
            cache[p] = encode(p)
        return len(cache[p]) <= max_bytes

    if guess is not None:
        g_lo, g_hi = max(lo, guess * 3 // 4), min(hi, guess * 5 // 4 + 1)
        if fits(g_hi):
            lo = g_hi
        elif fits(g_lo):
            lo, hi = g_lo, g_hi - 1
        else:
            hi = g_lo - 1
    if not fits(lo):
        raise ValueError(f"max_bytes={max_bytes} is too small: {what}={lo} already needs {len(cache[lo])} bytes")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo, cache[lo]


def _packetize(units: list[tuple[int, int]], payload_limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, ...]]]:
    """Greedy packing of whole units into packets; a unit bigger than a packet gets packets of its own."""
    packets: list[tuple[int, int]] = []
    carried: list[tuple[int, ...]] = []
    cur: tuple[int, int] | None = None
    cur_units: list[int] = []
    for u, (a, b) in enumerate(units):
        if cur is not None and b - cur[0] <= payload_limit:
            cur = (cur[0], b)
            cur_units.append(u)
            continue
        if cur is not None:
            packets.append(cur)
            carried.append(tuple(cur_units))
            cur, cur_units = None, []
        if b - a <= payload_limit:
            cur, cur_units = (a, b), [u]
        else:
            for s in range(a, b, payload_limit):
                packets.append((s, min(s + payload_limit, b)))
                carried.append((u,))
    if cur is not None:
        packets.append(cur)
        carried.append(tuple(cur_units))
    return packets, carried


# ----------------------------------------------------------------------------------------------- JPEG


@dataclass(frozen=True)
class _JpegHeader:
    """What the decoder needs from SOI..SOS to rebuild lost intervals."""

    end: int  # offset just after the SOS segment
    width: int
    height: int
    mcu_w: int  # pixels
    mcu_h: int
    mcus_x: int
    mcus_y: int
    restart_interval: int  # MCUs
    blocks: tuple[tuple[tuple[int, int], tuple[int, int]], ...]  # per block of an MCU: (DC code, AC EOB code)


def _huffman_codes(bits: bytes, values: bytes) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes of a DHT table: symbol -> (code, length)."""
    codes: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def _parse_jpeg_header(data: bytes) -> _JpegHeader:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI)")
    pos = 2
    tables: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}
    comps: dict[int, tuple[int, int]] = {}
    size = (0, 0)
    dri = 0
    while True:
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG header: expected a marker at offset {pos}")
        marker = data[pos + 1]
        seg_len = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        seg = data[pos + 4 : pos + 2 + seg_len]
        if marker == 0xC4:  # DHT, possibly several tables
            i = 0
            while i < len(seg):
                tc_th = seg[i]
                bits = seg[i + 1 : i + 17]
                n = sum(bits)
                tables[(tc_th >> 4, tc_th & 15)] = _huffman_codes(bits, seg[i + 17 : i + 17 + n])
                i += 17 + n
        elif marker == 0xC0:  # SOF0, baseline
            size = struct.unpack(">HH", seg[1:5])[::-1]
            for c in range(seg[5]):
                cid, hv = seg[6 + 3 * c], seg[7 + 3 * c]
                comps[cid] = (hv >> 4, hv & 15)
        elif marker in (0xC1, 0xC2, 0xC3) or 0xC5 <= marker <= 0xCF and marker != 0xC8 and marker != 0xCC:
            raise ValueError("JPEG header: only baseline sequential JPEG is supported")
        elif marker == 0xDD:
            dri = struct.unpack(">H", seg[:2])[0]
        elif marker == 0xDA:  # SOS: the scan's components and their tables
            hmax = max(h for h, _ in comps.values())
            vmax = max(v for _, v in comps.values())
            blocks = []
            for c in range(seg[0]):
                cid, td_ta = seg[1 + 2 * c], seg[2 + 2 * c]
                dc, ac = tables[(0, td_ta >> 4)], tables[(1, td_ta & 15)]
                # DC difference 0 (category 0) if the table has it, else the shortest category with
                # all-zero extra bits: the block is concealed anyway, only the syntax must be valid.
                dc_sym = 0 if 0 in dc else min(dc, key=lambda s: dc[s][1] + s)
                code, length = dc[dc_sym]
                if 0 not in ac:
                    raise ValueError("JPEG header: AC table has no end-of-block code")
                h, v = comps[cid]
                blocks += [((code << dc_sym, length + dc_sym), ac[0])] * (h * v)  # extra bits 0
            w, hgt = size
            mcu_w, mcu_h = 8 * hmax, 8 * vmax
            return _JpegHeader(
                end=pos + 2 + seg_len,
                width=w,
                height=hgt,
                mcu_w=mcu_w,
                mcu_h=mcu_h,
                mcus_x=-(-w // mcu_w),
                mcus_y=-(-hgt // mcu_h),
                restart_interval=dri,
                blocks=tuple(blocks),
            )
        pos += 2 + seg_len


def _jpeg_intervals(data: bytes, start: int) -> list[tuple[int, int]]:
    """Byte spans of the restart intervals, each including its trailing RSTn or EOI marker."""
    spans = []
    a = i = start
    while True:
        i = data.index(b"\xff", i)
        m = data[i + 1]
        if m == 0x00 or m == 0xFF:  # byte stuffing / fill byte
            i += 1 if m == 0xFF else 2
            continue
        if 0xD0 <= m <= 0xD7 or m == 0xD9:
            spans.append((a, i + 2))
            a = i = i + 2
            if m == 0xD9:
                return spans
            continue
        raise ValueError(f"JPEG scan: unexpected marker FF{m:02X} at offset {i}")


def _flat_interval(hdr: _JpegHeader, n_mcus: int) -> bytes:
    """Entropy-coded data of n_mcus MCUs whose blocks are DC-difference 0 + EOB, padded and stuffed."""
    acc, nbits, out = 0, 0, bytearray()
    for _ in range(n_mcus):
        for (dc, dc_len), (eob, eob_len) in hdr.blocks:
            acc = (((acc << dc_len) | dc) << eob_len) | eob
            nbits += dc_len + eob_len
            while nbits >= 8:
                nbits -= 8
                byte = (acc >> nbits) & 0xFF
                out.append(byte)
                if byte == 0xFF:
                    out.append(0)
            acc &= (1 << nbits) - 1
    if nbits:
        byte = ((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF  # pad with 1 bits
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    return bytes(out)


def encode_jpeg(rgb: np.ndarray, max_bytes: int, payload_limit: int = 880) -> CodedImage:
    """Highest JPEG quality (1..100) whose file fits in max_bytes, packetized at restart markers."""
    _check_rgb(rgb)
    _check_budget(max_bytes, payload_limit)
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    mcus_x = -(-width // 16)  # 4:2:0 MCUs are 16x16; checked against the parsed header below

    def enc(q: int) -> bytes:
        params = [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, mcus_x]
        ok, buf = cv2.imencode(".jpg", bgr, params)
        if not ok:
            raise RuntimeError("OpenCV failed to encode JPEG")
        return buf.tobytes()

    quality, data = largest_fitting(enc, 1, 100, max_bytes, "JPEG quality")
    hdr = _parse_jpeg_header(data)
    if hdr.restart_interval != hdr.mcus_x:
        raise RuntimeError(f"unexpected JPEG layout: restart interval {hdr.restart_interval}, {hdr.mcus_x} MCUs/row")
    units = [(0, hdr.end)] + _jpeg_intervals(data, hdr.end)
    spans, carried = _packetize(units, payload_limit)
    return CodedImage.cut("jpeg", data, spans, quality, rgb, units, carried)


def _conceal_rows(img: np.ndarray, lost_rows: np.ndarray, band: int, margin: int) -> np.ndarray:
    """Fill lost bands of `band` pixel rows, widened by `margin` rows each side, by vertical linear
    interpolation between the nearest received rows."""
    out = img.astype(np.float32)
    height = img.shape[0]
    r = 0
    n = len(lost_rows)
    while r < n:
        if not lost_rows[r]:
            r += 1
            continue
        r1 = r
        while r1 < n and lost_rows[r1]:
            r1 += 1
        y0, y1 = max(r * band - margin, 0), min(r1 * band + margin, height)  # concealed rows [y0, y1)
        above = out[y0 - 1] if y0 > 0 else None
        below = out[y1] if y1 < height else None
        if above is None and below is None:
            out[y0:y1] = _GREY
        elif above is None:
            out[y0:y1] = below
        elif below is None:
            out[y0:y1] = above
        else:
            t = (np.arange(y0, y1, dtype=np.float32) - (y0 - 1)) / (y1 - (y0 - 1))
            out[y0:y1] = (1 - t)[:, None, None] * above + t[:, None, None] * below
        r = r1
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _decode_jpeg(coded: CodedImage, unit_ok: np.ndarray) -> tuple[np.ndarray | None, dict]:
    if not unit_ok[0]:
        return None, {"reason": "header lost"}
    data = coded.data
    hdr = _parse_jpeg_header(data[: coded.unit_spans[0][1]])
    total_mcus = hdr.mcus_x * hdr.mcus_y
    parts = [data[: hdr.end]]
    for i, (a, b) in enumerate(coded.unit_spans[1:]):
        if unit_ok[i + 1]:
            parts.append(data[a:b])
        else:
            n = min(hdr.restart_interval, total_mcus - i * hdr.restart_interval)
            marker = b"\xff\xd9" if i == len(coded.unit_spans) - 2 else bytes((0xFF, 0xD0 + i % 8))
            parts.append(_flat_interval(hdr, n) + marker)
    buf = np.frombuffer(b"".join(parts), np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        return None, {"reason": "repaired stream not decodable"}
    lost_rows = ~unit_ok[1:]
    # With vertical chroma subsampling libjpeg's "fancy" upsampling blends chroma across the MCU row
    # boundary, so the one pixel row next to a substituted interval is tainted too: conceal it as well.
    margin = 1 if hdr.mcu_h > 8 else 0
    rgb = _conceal_rows(bgr[:, :, ::-1], lost_rows, hdr.mcu_h, margin)
    return rgb, {"mcu_rows_lost": int(lost_rows.sum()), "mcu_rows": int(len(lost_rows))}


# ------------------------------------------------------------------------------------------ JPEG 2000


def _j2k_codestream(jp2: bytes) -> bytes:
    """The contiguous codestream inside a JP2 file (the jp2c box payload)."""
    i = jp2.find(b"jp2c")
    if i < 4:
        raise RuntimeError("OpenCV JPEG 2000 output has no jp2c box")
    (box_len,) = struct.unpack(">I", jp2[i - 4 : i])
    return jp2[i + 4 : i - 4 + box_len] if box_len > 8 else jp2[i + 4 :]


def encode_jpeg2000(rgb: np.ndarray, max_bytes: int, payload_limit: int = 880) -> CodedImage:
    """Least JPEG 2000 compression whose raw codestream fits in max_bytes, cut into packets in order.

    `quality` is OpenCV's IMWRITE_JPEG2000_COMPRESSION_X1000 (1..1000; the target rate is 1000/x times
    below lossless).
    """
    _check_rgb(rgb)
    _check_budget(max_bytes, payload_limit)
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])

    def enc(x: int) -> bytes:
        ok, buf = cv2.imencode(".jp2", bgr, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, x])
        if not ok:
            raise RuntimeError("OpenCV failed to encode JPEG 2000")
        return _j2k_codestream(buf.tobytes())

    guess = min(1000, max(1, 1000 * max_bytes // rgb.size))  # size ~ raw size * x / 1000
    x, data = largest_fitting(enc, 1, 1000, max_bytes, "JPEG 2000 compression_x1000", guess)
    if _j2k_tile_part(data) is None:
        raise RuntimeError("JPEG 2000 main header does not fit in the first packet")
    spans = [(a, min(a + payload_limit, len(data))) for a in range(0, len(data), payload_limit)]
    return CodedImage.cut("jpeg2000", data, spans, x, rgb, spans, [(i,) for i in range(len(spans))])


def _j2k_tile_part(head: bytes) -> tuple[int, int] | None:
    """(offset of the first SOT, its Psot tile-part length) if the main header is complete in `head`."""
    if head[:4] != b"\xff\x4f\xff\x51":
        return None
    pos = 2
    while pos + 4 <= len(head):
        marker, seg_len = struct.unpack(">HH", head[pos : pos + 4])
        if marker == 0xFF90:
            if pos + 10 > len(head):
                return None
            return pos, struct.unpack(">I", head[pos + 6 : pos + 10])[0]
        pos += 2 + seg_len
    return None


def _decode_j2k(coded: CodedImage, unit_ok: np.ndarray) -> tuple[np.ndarray | None, dict]:
    n_ok = int(np.argmin(unit_ok)) if not unit_ok.all() else len(unit_ok)
    prefix_len = coded.unit_spans[n_ok - 1][1] if n_ok else 0
    info = {"prefix_bytes": prefix_len}
    prefix = coded.data[:prefix_len]
    tp = _j2k_tile_part(prefix)
    if tp is None:
        return None, {**info, "reason": "main header lost"}
    sot, psot = tp
    if prefix_len < len(coded.data):
        # Zero-fill the rest of the tile-part (zeros read as empty packets) and terminate with EOC.
        end = sot + psot if psot else prefix_len
        prefix = prefix + bytes(max(end - prefix_len, 0)) + b"\xff\xd9"
    bgr = cv2.imdecode(np.frombuffer(prefix, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, {**info, "reason": "prefix not decodable"}
    return np.ascontiguousarray(bgr[:, :, ::-1]), info


# -------------------------------------------------------------------------------------------- decoding


def decode_with_loss(coded: CodedImage, received: Sequence[bool]) -> tuple[np.ndarray, dict]:
    """Decode `coded` from the packets with received[i] True; returns (RGB uint8, info).

    info: decodable, packets_lost, bytes_used (payload bytes of the packets that the decoder used),
    plus codec specific keys (JPEG: mcu_rows_lost, mcu_rows; JPEG 2000: prefix_bytes) and a reason
    when the frame is undecodable.
    """
    received_arr = np.asarray(received, dtype=bool).reshape(-1)
    if received_arr.shape[0] != len(coded.packets):
        raise ValueError(f"received has {received_arr.shape[0]} entries, the frame has {len(coded.packets)} packets")
    unit_ok = np.ones(len(coded.unit_spans), dtype=bool)
    for p, units in enumerate(coded.packet_units):
        if not received_arr[p]:
            unit_ok[list(units)] = False
    if coded.codec == "jpeg":
        rgb, extra = _decode_jpeg(coded, unit_ok)
        used = sum(b - a for (a, b), ok in zip(coded.unit_spans, unit_ok) if ok)
    elif coded.codec == "jpeg2000":
        rgb, extra = _decode_j2k(coded, unit_ok)
        used = extra["prefix_bytes"]
    else:
        raise ValueError(f"unknown codec {coded.codec!r}")
    info = {"decodable": rgb is not None, "packets_lost": int((~received_arr).sum()), "packets": len(coded.packets)}
    if rgb is None:
        rgb, used = grey_frame(coded.width, coded.height), 0
    info["bytes_used"] = int(used)
    info.update(extra)
    return rgb, info

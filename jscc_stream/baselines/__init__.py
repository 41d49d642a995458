"""Classical codecs the JSCC codec is measured against, all cut into the same <= 900-byte packets.

* ``image``: JPEG and JPEG 2000 still frames at a byte budget, packetized, decoded under loss
  with concealment (``jscc-eval``'s loss experiment);
* ``jpeg_payload``: the JPEG frames as an RTP payload (restart intervals per packet) for the
  live comparison;
* ``h264``: libx264 / FFmpeg through PyAV and the RFC 6184 payload format;
* ``fec``: Reed-Solomon parity packets (zfec) for the H.264+FEC arm;
* ``codec``: ``PacketEncoder`` / ``PacketDecoder``, the interface the live comparison streams
  H.264 and JPEG through.

Nothing here is neural; ``jscc-bench compare`` streams them next to JSCC.
"""

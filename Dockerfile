# jscc-stream: one image for every service (jscc-send, jscc-netem, jscc-recv); see docs/demo.md.
#
#   docker compose up                          # CPU PyTorch (default)
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
#                                              # a CUDA build of PyTorch instead (then run with GPUs)
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# Which PyTorch: the CPU wheel index by default (a plain "pip install torch" would pull a
# multi-GB CUDA build). For CUDA, point TORCH_INDEX at a CUDA index (e.g. .../whl/cu128).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# iproute2: the kernel tc path (jscc-netem tc, needs cap_add NET_ADMIN);
# the rest: OpenCV's runtime with its GUI (jscc-recv --display opens an X11 window through the
# Qt build in the opencv-python wheel; it needs these system libraries, checked with ldd).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 libglib2.0-0 libgl1 libsm6 libice6 \
       libx11-6 libxext6 libxcb1 \
    && rm -rf /var/lib/apt/lists/*

RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/jscc-stream
COPY pyproject.toml README.md ./
COPY jscc_stream ./jscc_stream
COPY models ./models
COPY netem ./netem
COPY proto ./proto
COPY sender ./sender
COPY receiver ./receiver
COPY relay ./relay
RUN pip install . && jscc-send --help >/dev/null && jscc-recv --help >/dev/null && jscc-netem --help >/dev/null

# One torch thread per daemon: sender and receiver share the cores.
ENV OMP_NUM_THREADS=1
# 8080 viewer page, 8081 WebRTC signalling (jscc-send --source webrtc), 8090 shim control API,
# 5000/udp shim input, 5004/udp receiver input.
EXPOSE 8080 8081 8090 5000/udp 5004/udp
CMD ["jscc-recv", "--help"]

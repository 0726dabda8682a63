# edgeclean images, multi-arch (linux/amd64, linux/arm64), two targets:
#
#   bench  slim device-lab image: onnxruntime + numpy + edgeclean, NO torch. It measures an ONNX
#          artifact on the board it runs on:
#            docker run --rm -v "$PWD/export/model:/models:ro" edgeclean:bench \
#                bench /models/model.onnx --threads 2 --runs 200 --json > result.json
#   full   CPU torch too; runs the whole pipeline:
#            docker run --rm -v "$PWD:/work" edgeclean:full run /work/suspect.pt --budget 4MB
#
# Build (BASE_IMAGE must provide python3 >= 3.11 with the venv module, e.g. Debian bookworm
# with python3-venv, or the official python:3.11-slim-bookworm, which is multi-arch):
#   docker buildx build --platform linux/amd64,linux/arm64 --target bench -t edgeclean:bench .
#   docker buildx build --platform linux/amd64,linux/arm64 --target full  -t edgeclean:full .
# Without Docker, scripts/build_image.sh bench|full builds a target with buildah from a
# locally debootstrapped bookworm base and runs it once (bench: `edgeclean bench --json`; full:
# `edgeclean run --method none` on the demo suspect). See docs/device-lab.md.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- wheel: the edgeclean package
FROM ${BASE_IMAGE} AS wheel
# Build-time only: a CA bundle for pip behind a TLS-intercepting proxy (see scripts/build_image.sh).
ARG PIP_CERT
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeclean ./edgeclean
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check "setuptools==80.9.0" "wheel==0.45.1" \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------- bench: device side, no torch
FROM ${BASE_IMAGE} AS bench
# Build-time only: a CA bundle for pip behind a TLS-intercepting proxy (see scripts/build_image.sh).
ARG PIP_CERT
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY docker/requirements-bench.txt /tmp/requirements-bench.txt
COPY --from=wheel /wheels /wheels
# --no-deps: the package's declared dependencies include torch, which the device side never imports.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements-bench.txt \
    && pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/edgeclean-*.whl \
    && python3 -c "import sys, edgeclean.cli, edgeclean.bench; assert 'torch' not in sys.modules" \
    && rm -rf /wheels /tmp/requirements-bench.txt \
    && groupadd --gid 10001 edge \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin edge
USER 10001:10001
WORKDIR /home/edge
ENTRYPOINT ["edgeclean"]
CMD ["--help"]

# ---------------------------------------------------------------- full: edgeclean run (CPU torch)
FROM ${BASE_IMAGE} AS full
# Build-time only: a CA bundle for pip behind a TLS-intercepting proxy (see scripts/build_image.sh).
ARG PIP_CERT
# torch is the CPU-only build: PyPI's default torch wheel pulls several GB of CUDA. It comes from
# a CPU torch wheel for the target platform placed in TORCH_WHEEL_DIR (a folder of the build
# context; scripts/build_image.sh full puts the host's there, for hosts that cannot reach
# PyTorch's index), else from PyTorch's CPU-only index. Its own dependencies come from PyPI. The
# pinned requirements come next; edgeclean itself is installed WITH its dependencies so anything
# added to pyproject.toml arrives too (the torch already there satisfies its torch range).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_WHEEL_DIR=docker/wheels
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY docker/requirements-full.txt /tmp/requirements-full.txt
COPY ${TORCH_WHEEL_DIR} /tmp/torch-wheels
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/venv \
    && if ls /tmp/torch-wheels/torch-*.whl >/dev/null 2>&1; then \
         pip install --no-cache-dir --disable-pip-version-check --find-links /tmp/torch-wheels "torch==${TORCH_VERSION}+cpu"; \
       else \
         pip install --no-cache-dir --disable-pip-version-check --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
       fi \
    && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements-full.txt \
    && pip install --no-cache-dir --disable-pip-version-check /wheels/edgeclean-*.whl \
    && python3 -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available()" \
    && rm -rf /wheels /tmp/torch-wheels /tmp/requirements-full.txt \
    && groupadd --gid 10001 edge \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin edge
USER 10001:10001
WORKDIR /home/edge
ENTRYPOINT ["edgeclean"]
CMD ["--help"]

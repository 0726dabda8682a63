#!/usr/bin/env bash
# Build one of the Dockerfile's targets HERE, without Docker and without any registry image, then
# run it once:
#
#   scripts/build_image.sh bench [MODEL.onnx]   edgeclean bench MODEL --json inside the image
#   scripts/build_image.sh full  [SUSPECT.pt]   edgeclean run SUSPECT --method none --budget 1MB --json
#                                               inside the image (default: the demo suspect + card)
#
# 1. debootstrap a minbase Debian bookworm root for this machine's arch (python3 + venv only),
#    cached in ${EDGECLEAN_BOOKWORM_ROOT:-~/.cache/edgeclean/bookworm-<arch>-root};
# 2. import it as the local image localhost/edgeclean-bookworm-base;
# 3. buildah bud --isolation chroot --target TARGET --build-arg BASE_IMAGE=that image. For `full`,
#    a CPU torch wheel (TORCH_WHEEL=path; default: the host's in /opt/wheels or pip's cache) is put
#    in docker/wheels/ (the Dockerfile's TORCH_WHEEL_DIR) first, so the build needs no access to
#    PyTorch's index; without one the Dockerfile falls back to that index;
# 4. buildah run the command above as the image user, the input's folder mounted read-only at /in.
# Without MODEL (bench), a tiny model is exported first with the host's edgeclean (needs torch).
# Needs root, debootstrap, buildah and podman (Debian: apt-get install debootstrap buildah podman).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${1:-bench}"
INPUT="${2:-}"
case "$TARGET" in
    bench) IMAGE="${EDGECLEAN_BENCH_IMAGE:-localhost/edgeclean:bench}" ;;
    full) IMAGE="${EDGECLEAN_FULL_IMAGE:-localhost/edgeclean:full}" ;;
    *) echo "error: target '$TARGET' is not bench or full; usage: $0 bench|full [INPUT]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
[ -x /work/venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=/work/venv/bin/python
ARCH="$(dpkg --print-architecture)"
BASE_ROOT="${EDGECLEAN_BOOKWORM_ROOT:-$HOME/.cache/edgeclean/bookworm-$ARCH-root}"
BASE_IMAGE="localhost/edgeclean-bookworm-base:latest"
log() { echo "[build_image $TARGET] $*" >&2; }

for tool in debootstrap buildah podman; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
        || { echo "error: $tool not found; apt-get install debootstrap buildah podman" >&2; exit 2; }
done

ctr=""
cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
    find docker/wheels -name 'torch-*.whl' -delete 2>/dev/null
    return 0
}
trap cleanup EXIT

t0=$(date +%s)
if [ ! -f "$BASE_ROOT/.edgeclean-ready" ]; then
    log "debootstrap bookworm ($ARCH, minbase + python3-venv) into $BASE_ROOT"
    rm -rf "$BASE_ROOT.partial"
    mkdir -p "$(dirname "$BASE_ROOT")"
    /usr/sbin/debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$BASE_ROOT.partial" >&2
    # An image needs no package caches or apt lists.
    rm -rf "$BASE_ROOT.partial/var/cache/apt/archives/"*.deb "$BASE_ROOT.partial/var/lib/apt/lists/"*
    touch "$BASE_ROOT.partial/.edgeclean-ready"
    rm -rf "$BASE_ROOT"
    mv "$BASE_ROOT.partial" "$BASE_ROOT"
fi
t1=$(date +%s)
if ! podman image exists "$BASE_IMAGE"; then
    log "importing $BASE_ROOT as $BASE_IMAGE"
    tar -C "$BASE_ROOT" --exclude=./.edgeclean-ready --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . \
        | podman import --quiet - "$BASE_IMAGE" >&2
fi
t2=$(date +%s)
if [ "$TARGET" = full ]; then
    # The CPU torch wheel this host installed from (PyTorch's index may be unreachable from here).
    wheel="${TORCH_WHEEL:-}"
    if [ -z "$wheel" ]; then
        wheel="$(find /opt/wheels -maxdepth 1 -name 'torch-*+cpu-*.whl' 2>/dev/null | head -n1)"
        [ -n "$wheel" ] || wheel="$(find "$("$PY" -m pip cache dir 2>/dev/null || echo /nonexistent)" \
            -name 'torch-*+cpu-*.whl' 2>/dev/null | head -n1)"
    fi
    mkdir -p docker/wheels
    find docker/wheels -name 'torch-*.whl' -delete
    if [ -n "$wheel" ] && [ -f "$wheel" ]; then
        log "torch from the local wheel $wheel"
        ln "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
    else
        log "no local CPU torch wheel (set TORCH_WHEEL=path): torch comes from PyTorch's CPU index"
    fi
fi
log "buildah bud --isolation chroot --target $TARGET"
# Where this host reaches PyPI through a TLS-intercepting proxy, pip in the build needs the host's CA
# bundle: mount it read-only for the RUN steps and point PIP_CERT at it (a build arg, not in the image).
cert_args=()
host_ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
    cert_args=(-v "$(realpath "$host_ca"):/etc/ssl/certs/edgeclean-host-ca.pem:ro"
               --build-arg "PIP_CERT=/etc/ssl/certs/edgeclean-host-ca.pem")
fi
buildah bud --quiet --isolation chroot --layers --target "$TARGET" "${cert_args[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f Dockerfile . >&2
find docker/wheels -name 'torch-*.whl' -delete 2>/dev/null || true
t3=$(date +%s)

indir="$(mktemp -d)"
chmod 755 "$indir"  # the image runs as uid 10001: the mounted folder must be readable
if [ "$TARGET" = bench ]; then
    if [ -n "$INPUT" ]; then
        cp "$INPUT" "$indir/"
    else
        log "no model given: exporting a tiny CNN with the host's edgeclean"
        "$PY" - "$indir/tiny.onnx" <<'PYEOF' >&2
import sys, torch
from edgeclean.export import export
from edgeclean.load import ModelSpec
from edgeclean.zoo import create_model
torch.manual_seed(0)
export(create_model("tiny_cnn").eval(), ModelSpec(arch="tiny_cnn", input_shape=(3, 32, 32)), sys.argv[1])
PYEOF
        INPUT="tiny.onnx"
    fi
    cmd=(edgeclean bench "/in/$(basename "$INPUT")" --runs "${RUNS:-50}" --warmup 5 --json)
else
    INPUT="${INPUT:-models/demo_badnets_resnet18.pt}"
    cp "$INPUT" "$indir/"
    card="${INPUT%.*}.json"  # the card (arch, input shape, normalisation) travels with the checkpoint
    [ -f "$card" ] && cp "$card" "$indir/"
    # outputs go to the image user's home inside the container; the report JSON is printed
    cmd=(edgeclean run "/in/$(basename "$INPUT")" --method none --budget "${BUDGET:-1MB}" --out /home/edge/out --json)
fi
chmod -R a+r "$indir"
log "running '${cmd[*]}' inside $IMAGE"
ctr="$(buildah from --quiet "$IMAGE")"
# buildah run does not apply ENTRYPOINT: call edgeclean explicitly, as the image user.
set +e
buildah run --isolation chroot --user 10001:10001 -v "$indir:/in:ro" "$ctr" -- "${cmd[@]}"
rc=$?
set -e
rm -rf "$indir"
t4=$(date +%s)
log "exit code $rc; seconds: base root $((t1 - t0)), import $((t2 - t1)), build $((t3 - t2)), run $((t4 - t3))"
exit "$rc"

#!/usr/bin/env bash
# The slim `bench` target: same as scripts/build_image.sh bench [MODEL.onnx] (kept for the docs' old command).
exec "$(dirname "$0")/build_image.sh" bench "$@"

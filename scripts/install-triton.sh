#!/usr/bin/env bash
# A real NVIDIA Triton Inference Server for the tests: .cache/triton-venv with PyTriton (its wheel
# bundles tritonserver 2.51 and the Python-backend stub) and onnxruntime's CPU build, served by
# tests/triton_server.py. Made from Debian's /usr/bin/python3: the stub's bundled libpython3.11
# fails with pyenv's 3.11 stdlib. Idempotent: skips everything when the venv already works.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/triton-venv
PYTRITON_VERSION=0.7.0
ONNXRUNTIME_VERSION=1.31.1  # = onnxruntime-gpu of the node's venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pytriton, onnxruntime' 2>/dev/null; then
  echo "install-triton: $VENV already has pytriton and onnxruntime"
  exit 0
fi
if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
/usr/bin/python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==$PYTRITON_VERSION" \
  "onnxruntime==$ONNXRUNTIME_VERSION" numpy
echo "install-triton: made $VENV (nvidia-pytriton $PYTRITON_VERSION, onnxruntime $ONNXRUNTIME_VERSION)"

#!/usr/bin/env bash
# Install the real DICOM peers the test suite talks to: DCMTK, dicom3tools, Orthanc, RabbitMQ.
# Idempotent: skips apt entirely when every tool is already there.
set -euo pipefail
need=()
[ -x /usr/bin/storescu ] || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null || need+=(orthanc)
[ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

#!/usr/bin/env bash
# Install the real DICOM peers the test suite talks to: DCMTK, dicom3tools, Orthanc (with its
# DICOMweb plugin), RabbitMQ, and for the viewer tests Chromium and Node.js/npm (fetch-ohif.sh).
# Idempotent: skips apt entirely when every tool is already there.
set -euo pipefail
need=()
[ -x /usr/bin/storescu ] || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null || need+=(orthanc)
[ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

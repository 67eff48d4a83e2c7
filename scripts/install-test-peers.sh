#!/usr/bin/env bash
# Install the real DICOM peers the test suite talks to: DCMTK, dicom3tools, Orthanc (with its
# DICOMweb plugin), RabbitMQ, for the viewer tests Chromium and Node.js/npm (fetch-ohif.sh), and
# for the container-runner tests podman, runc and debootstrap (build-test-images.py builds the
# test product images with them; rootful podman here needs --runtime runc), and rsyslog with
# its TLS driver (the audit trail's syslog collector).
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
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
command -v systemd-analyze >/dev/null || need+=(systemd)  # verifies packaging/systemd
compgen -G '/usr/lib/*/rsyslog/lmnsd_gtls.so' >/dev/null || need+=(rsyslog-gnutls)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

#!/bin/sh
# A vendor container that misbehaves in the way BROKEN_MODE asks:
#   exit     (default) some output on stdout and stderr, then exit status 3
#   garbage  write a non-DICOM result.dcm and an unparsable findings.json to $MERCURE_OUT_DIR, exit 0
#   hang     print "warming up", then sleep for an hour
mode=${BROKEN_MODE:-exit}
case $mode in
  garbage)
    out=${MERCURE_OUT_DIR:?MERCURE_OUT_DIR is not set}
    echo "broken: writing results to $out"
    head -c 4096 /dev/urandom > "$out/result.dcm"
    printf '{not json' > "$out/findings.json"
    echo "broken: done"
    exit 0
    ;;
  hang)
    echo "warming up"
    exec sleep 3600
    ;;
  *)
    echo "broken: starting inference (mode $mode)"
    echo "broken: loading model weights from /opt/broken/weights.bin"
    echo "warning: GPU not found, falling back to CPU" >&2
    echo "model weights corrupt: checksum mismatch" >&2
    echo "broken: giving up"
    exit 3
    ;;
esac

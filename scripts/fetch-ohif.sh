#!/usr/bin/env bash
# Fetch the OHIF Viewer build the viewer tests serve (tests/test_viewer_ohif.py): the npm
# package @ohif/app at a pinned version, checked against its pinned sha512 integrity (what
# `npm view @ohif/app@VERSION dist.integrity` prints), unpacked to .cache/ohif/VERSION/dist.
# Idempotent: does nothing when that dist is already there.
set -euo pipefail
VERSION="${OHIF_VERSION:-3.13.2}"
INTEGRITY="${OHIF_INTEGRITY:-sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$REPO/.cache/ohif"
TARGET="$CACHE/$VERSION"
[ -f "$TARGET/dist/index.html" ] && exit 0

mkdir -p "$CACHE"
TARBALL="$CACHE/ohif-app-$VERSION.tgz"
if [ ! -f "$TARBALL" ]; then
  npm pack --silent "@ohif/app@$VERSION" --pack-destination "$CACHE" >/dev/null
fi
actual="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$TARBALL")"
if [ "$actual" != "$INTEGRITY" ]; then
  echo "fetch-ohif: $TARBALL has integrity $actual, expected $INTEGRITY" >&2
  rm -f "$TARBALL"
  exit 1
fi
staging="$(mktemp -d "$CACHE/.extract.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
tar -xzf "$TARBALL" -C "$staging" package/dist
rm -rf "$TARGET"
mkdir -p "$TARGET"
mv "$staging/package/dist" "$TARGET/dist"
rm -f "$TARBALL"
echo "fetch-ohif: OHIF $VERSION in $TARGET/dist"

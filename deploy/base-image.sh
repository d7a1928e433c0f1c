#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian packages with debootstrap, for machines that reach a
# Debian mirror and PyPI but no container registry. Debian bookworm's python3 is 3.11.
#
#   deploy/base-image.sh [IMAGE]        (default localhost/python-base:3.11; needs root, podman)
#
# The image carries the host's extra CA certificates (so pip inside a build trusts the same
# TLS proxies the host does) and no EXTERNALLY-MANAGED marker (the Dockerfile installs into a venv
# anyway; the marker only stops `pip install` outside one).
set -euo pipefail

image=${1:-localhost/python-base:3.11}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,netbase,tzdata,adduser

rootfs=$(mktemp -d /var/tmp/bnserve-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
  {
    tail -20 "$rootfs.log" >&2
    echo "base-image: debootstrap from $mirror failed (log above)" >&2
    rm -f "$rootfs.log"
    exit 1
  }
rm -f "$rootfs.log"

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates >/dev/null
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED

# Nothing at run time reads these; they are a fifth of a minbase system.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

tar -C "$rootfs" -c . | podman import --quiet \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
echo "base-image: built $image"

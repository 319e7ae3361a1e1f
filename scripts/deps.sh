#!/usr/bin/env bash
# deps.sh — install what chainfs needs to build, run and test on Debian 12.
#
# Installs only what is missing (checked with dpkg-query); does nothing and
# touches no network when everything is already there. Must run as root.
set -euo pipefail

CHAINFS_PACKAGES=(
  meson ninja-build pkg-config gcc
  libfuse3-dev fuse3
  libvirt-dev libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
  qemu-system-x86 qemu-utils qemu-block-extra
  libjson-c-dev libcmocka-dev libxml2-dev
  # issue 9: disk.raw through qemu-nbd (qemu-utils above) read with libnbd
  libnbd-dev
  # examples/backup.sh draws its progress bar with pv (optional)
  pv
  jq python3 rsync
  # issue 10: the test guest (tests/guest/build.sh) reads modules and
  # libraries with strings/readelf; the tests make and check its ext4
  # disks on the host (mkfs.ext4, e2fsck, fsck.ext4, debugfs, dumpe2fs)
  binutils e2fsprogs
  # the fuzz targets (scripts/fuzz.sh): clang 14 on Debian 12; libFuzzer
  # and the sanitizer runtimes are in libclang-rt-14-dev, which clang only
  # recommends (not installed with --no-install-recommends)
  clang libclang-rt-dev
  # issue 11: the Debian package (dpkg-buildpackage -us -uc -b, dh with
  # meson, lintian; tests/package/deb.sh) and man to read its page
  dpkg-dev debhelper fakeroot lintian man-db
  # systemd-analyze verify of the unit and the examples' timer (the tests
  # run it offline: systemd need not be PID 1)
  systemd
)

deps_missing() {
  local p status
  for p in "${CHAINFS_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || printf '%s\n' "$p"
  done
}

main() {
  local missing
  mapfile -t missing < <(deps_missing)
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "deps: all ${#CHAINFS_PACKAGES[@]} packages present"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${missing[*]}" >&2
    echo "deps: installing them needs root; run: sudo bash $0" >&2
    return 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

main "$@"

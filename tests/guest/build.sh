#!/usr/bin/env bash
# build.sh — build (or take from the cache) the chainfs test guest: the
# Debian kernel and a busybox initramfs with the virtio and ext4 modules,
# qemu-guest-agent with its libraries, and the workload of tests/guest/init
# — all from Debian 12 .debs fetched with `apt-get download` and unpacked
# with `dpkg-deb -x` in a temporary directory. Nothing is installed on the
# host and nothing of the build goes into the repository.
# docs/design/issue10.md §1, docs/TESTING.md "The test guest".
#
#   build.sh                  make sure the guest is built; print its directory
#                             (vmlinuz, initrd.img, manifest)
#   build.sh --into DIR       the same, then copy vmlinuz and initrd.img into
#                             DIR (under the cache lock: a build running
#                             meanwhile cannot remove what is being copied)
#   build.sh --key            print the cache key only (no download, no build)
#
# Cache: ${CHAINFS_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainfs/test-guest}/<key>/,
# key = SHA-256 of this script, init, fsfreeze-hook, agent and the sorted
# "FILE SHA256" pairs `apt-get download --print-uris` gives (no download:
# it reads the local apt lists). Built in <key>.tmp.<pid> and renamed into
# place, under flock(<cache>/.lock) so that parallel tests build once; all
# but the two newest keys are removed after a build. Offline (the apt
# lists cannot resolve the packages) the newest complete build is used.
#
# Exit status: 0 built or cached; 77 this host cannot build the guest (not
# Debian 12 amd64 with apt, or offline with nothing cached: the reason is
# printed); 1 the build failed (a missing module or library is named).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${CHAINFS_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainfs/test-guest}
BUILDER_FILES=(build.sh init fsfreeze-hook agent)
# the modules the guest needs (their dependencies are added, §1.2):
# crc32c_generic is ext4's and jbd2's crc32c (softdep); crc32c-intel needs
# SSE4.2, which TCG's default CPU lacks
ROOT_MODULES=(virtio_pci virtio_blk virtio_console crc32c_generic ext4)
# qemu-ga's shared libraries come from these (§1.1); the builder checks
# the closure and names any library it cannot find
LIB_PACKAGES=(libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0 libc6)
APPLETS=(sh ash mount umount insmod sleep cat echo dd sha256sum sync mkdir
  ls ps kill pidof seq uname date rm touch test cut tr sed printf poweroff
  reboot head tail grep wc stat)

say() { printf '[guest-build %s] %s\n' "$(date -u +%T)" "$*" >&2; }
skip() {
  say "SKIP: $*"
  exit 77
}
die() {
  say "ERROR: $*"
  exit 1
}

# host_check — skip unless this is a Debian 12 amd64 host with apt and
# dpkg; fail if a build tool is missing (scripts/deps.sh installs them).
host_check() {
  local t id="" ver=""
  for t in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$t" >/dev/null 2>&1 || skip "no $t: the test guest is built from Debian packages with apt"
  done
  if [ -r /etc/os-release ]; then
    id=$(. /etc/os-release && printf '%s' "${ID:-}")
    ver=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
  fi
  if [ "$id" != debian ] || [ "$ver" != 12 ]; then
    skip "the host is ${id:-unknown} ${ver:-?}, not Debian 12: the guest is built from bookworm's package names"
  fi
  [ "$(dpkg --print-architecture)" = amd64 ] ||
    skip "dpkg architecture $(dpkg --print-architecture), not amd64"
  for t in readelf strings gzip sha256sum flock; do
    command -v "$t" >/dev/null 2>&1 || die "no $t on the host (run scripts/deps.sh)"
  done
}

# resolve_packages — PACKAGES (the kernel package read from
# linux-image-amd64's Depends, never hard-coded) and URIS (apt's
# --print-uris lines). Returns 1 when apt cannot resolve them (offline:
# no lists).
resolve_packages() {
  local kimg
  kimg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1) || true
  [ -n "$kimg" ] || { APT_WHY="apt-cache knows no linux-image-amd64 (no apt lists? run apt-get update)"; return 1; }
  KVER=${kimg#linux-image-}
  PACKAGES=("$kimg" busybox-static qemu-guest-agent "${LIB_PACKAGES[@]}")
  if ! URIS=$(apt-get download --print-uris "${PACKAGES[@]}" 2>&1); then
    APT_WHY="apt-get download --print-uris failed: $(printf '%s' "$URIS" | tail -n 2 | tr '\n' ' ')"
    return 1
  fi
  [ "$(grep -c "^'" <<<"$URIS")" -eq "${#PACKAGES[@]}" ] ||
    { APT_WHY="apt-get download --print-uris gave $(grep -c "^'" <<<"$URIS") URIs for ${#PACKAGES[@]} packages"; return 1; }
}

# cache_key — after resolve_packages: the key of this builder and these
# package versions.
cache_key() {
  local f
  {
    for f in "${BUILDER_FILES[@]}"; do
      printf '== %s\n' "$f"
      cat "$HERE/$f"
    done
    printf '== packages\n'
    awk "/^'/ { print \$2, \$4 }" <<<"$URIS" | LC_ALL=C sort
  } | sha256sum | cut -c1-24
}

# build DIR — the whole build into DIR (which must not exist).
build() {
  local out=$1 w x r deb f n p mods="" libs=" " todo t0
  t0=$(date +%s)
  mkdir -p "$out"
  w=$out/work
  x=$w/x
  r=$w/root
  mkdir -p "$w/debs" "$x" "$r"
  say "downloading ${PACKAGES[*]}"
  (cd "$w/debs" && apt-get download "${PACKAGES[@]}") >"$w/apt.log" 2>&1 ||
    { cat "$w/apt.log" >&2; die "apt-get download failed (no network, or apt lists older than the mirror: apt-get update)"; }
  {
    printf 'key %s\nbuilt %s\nkernel %s\n' "$KEY" "$(date -u +%FT%TZ)" "$KVER"
    for deb in "$w"/debs/*.deb; do
      dpkg-deb -x "$deb" "$x"
      printf 'deb %s %s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
        "$(sha256sum <"$deb" | cut -d' ' -f1)"
    done
  } >"$out/manifest"
  [ -f "$x/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in the kernel package"
  cp "$x/boot/vmlinuz-$KVER" "$out/vmlinuz"

  mkdir -p "$r"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc/qemu,lib/x86_64-linux-gnu,lib64,usr/sbin,"lib/modules/$KVER"}
  cp "$x/bin/busybox" "$r/bin/busybox"
  for f in "${APPLETS[@]}"; do ln -s busybox "$r/bin/$f"; done

  # modules: each one's dependencies from its own .modinfo (depends=),
  # dependencies first; no kmod and no depmod: the paths come from a
  # listing of the package's modules (names with - and _ alike)
  (cd "$x/lib/modules/$KVER" && find kernel -name '*.ko' | awk -F/ '{ n = $NF; sub(/\.ko$/, "", n); gsub(/-/, "_", n); print n, $0 }') >"$w/modules"
  resolve() {
    local m=${1//-/_} f d
    f=$(awk -v m="$m" '$1 == m { print $2; exit }' "$w/modules")
    [ -n "$f" ] || die "module $m is not in $(grep -m1 '^deb linux-image' "$out/manifest")"
    case " $mods " in *" $f "*) return 0 ;; esac
    for d in $(strings -a "$x/lib/modules/$KVER/$f" | sed -n 's/^depends=//p' | tr , ' '); do
      resolve "$d"
    done
    mods="$mods $f"
  }
  for f in "${ROOT_MODULES[@]}"; do resolve "$f"; done
  for f in $mods; do
    mkdir -p "$r/lib/modules/$KVER/${f%/*}"
    cp "$x/lib/modules/$KVER/$f" "$r/lib/modules/$KVER/$f"
  done
  # shellcheck disable=SC2086 # one module per line
  printf '%s\n' $mods >"$r/lib/modules/$KVER/load-order"
  printf 'modules%s\n' "$mods" >>"$out/manifest"

  # qemu-ga and the closure of its NEEDED libraries, from the .debs only
  cp "$x/usr/sbin/qemu-ga" "$r/usr/sbin/qemu-ga"
  todo=$x/usr/sbin/qemu-ga
  while [ -n "$todo" ]; do
    f=${todo%% *}
    todo=${todo#"$f"}
    todo=${todo# }
    for n in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$libs" in *" $n "*) continue ;; esac
      libs="$libs$n "
      p=$(find "$x/lib/x86_64-linux-gnu" "$x/usr/lib/x86_64-linux-gnu" -maxdepth 1 -name "$n" 2>/dev/null | head -n 1)
      [ -n "$p" ] || die "library $n (needed by ${f#"$x"}) is in none of ${PACKAGES[*]}: add its package to LIB_PACKAGES"
      cp -L "$p" "$r/lib/x86_64-linux-gnu/$n"
      todo="${todo:+$todo }$p"
    done
  done
  [ -e "$x/lib64/ld-linux-x86-64.so.2" ] || die "no lib64/ld-linux-x86-64.so.2 in libc6"
  cp -L "$x/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  printf 'libraries%s\n' "${libs% }" >>"$out/manifest"

  install -m 0755 "$HERE/init" "$r/init"
  install -m 0755 "$HERE/agent" "$r/sbin/agent"
  install -m 0755 "$HERE/fsfreeze-hook" "$r/etc/qemu/fsfreeze-hook"
  # the host has no cpio: the package's static busybox makes the archive
  (cd "$r" && find . | LC_ALL=C sort | "$x/bin/busybox" cpio -o -H newc 2>/dev/null) |
    gzip -1 >"$out/initrd.img"
  printf 'initrd.img %s bytes, root %s KiB; vmlinuz %s bytes; build %s s\n' \
    "$(stat -c %s "$out/initrd.img")" "$(du -sk "$r" | cut -f1)" \
    "$(stat -c %s "$out/vmlinuz")" "$(($(date +%s) - t0))" >>"$out/manifest"
  rm -rf "$w"
}

# prune — keep the two newest complete builds.
prune() {
  local d
  # shellcheck disable=SC2012 # key names are hex
  { ls -1td "$CACHE"/*/manifest 2>/dev/null || true; } | tail -n +3 | while read -r d; do
    say "removing the old build ${d%/manifest}"
    rm -rf "${d%/manifest}"
  done
  # leftovers of builds that were killed (their builder no longer runs)
  for d in "$CACHE"/*.tmp.*; do
    [ -d "$d" ] || continue
    kill -0 "${d##*.tmp.}" 2>/dev/null || rm -rf "$d"
  done
}

main() {
  local into="" dir tmp
  case "${1:-}" in
    --key)
      host_check
      resolve_packages || skip "$APT_WHY"
      KEY=$(cache_key)
      printf '%s\n' "$KEY"
      return 0
      ;;
    --into)
      into=${2:?--into DIR}
      ;;
    "") ;;
    *)
      echo "usage: $0 [--into DIR | --key]" >&2
      exit 2
      ;;
  esac
  host_check
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  if resolve_packages; then
    KEY=$(cache_key)
    dir=$CACHE/$KEY
    if [ -f "$dir/manifest" ]; then
      say "cached: $dir"
    else
      tmp=$dir.tmp.$$
      rm -rf "$tmp"
      trap 'rm -rf "$tmp"' EXIT
      say "building $dir (kernel $KVER)"
      build "$tmp"
      mv "$tmp" "$dir"
      trap - EXIT
      say "built: $(tail -n 1 "$dir/manifest")"
      prune
    fi
  else
    # shellcheck disable=SC2012 # key names are hex
    dir=$({ ls -1td "$CACHE"/*/manifest 2>/dev/null || true; } | head -n 1)
    [ -n "$dir" ] || skip "cannot resolve the guest's packages and nothing is cached: $APT_WHY"
    dir=${dir%/manifest}
    say "$APT_WHY; using the newest cached build $dir"
  fi
  if [ -n "$into" ]; then
    mkdir -p "$into"
    cp "$dir/vmlinuz" "$dir/initrd.img" "$dir/manifest" "$into/"
  fi
  printf '%s\n' "$dir"
}

# one line: bash reads a script as it runs, and a build.sh edited while a
# build runs must not have its new bytes read after main returns
main "$@"; exit

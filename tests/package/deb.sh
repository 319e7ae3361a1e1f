#!/usr/bin/env bash
# deb.sh — the Debian package as a new user gets it (issue 11, acceptance
# items 1 and 2):
#
#   1. copy the tree (git ls-files: the sources, not build dirs or untracked
#      files) into a private temporary directory; meson's project version
#      and debian/changelog's must agree;
#   2. dpkg-buildpackage -us -uc -b there, with DEB_BUILD_OPTIONS=nocheck
#      (the unit suite is run by meson test elsewhere; the package build
#      runs it without nocheck), then lintian: any E: fails;
#   3. delete the build tree, install the .deb with apt-get from a
#      directory outside any source tree, and with PATH holding no build
#      dir: `chainfs -V` prints the version, `man chainfs` shows the page,
#      the installed systemd unit verifies, the README's demo
#      (scripts/demo.sh, copied out of the tree) runs against
#      /usr/bin/chainfs on a throwaway domain, a mount without state_dir
#      creates /var/lib/chainfs;
#   4. apt-get remove: every file the package installed is gone but the
#      conffiles and /var/lib/chainfs (the state README documents); then
#      purge: /var/lib/chainfs is gone too and dpkg forgets chainfs.
#
# It installs system-wide, so it refuses (fails, touching nothing) when
# dpkg already knows a chainfs package, when /var/lib/chainfs exists, or
# when a file of the package already exists on the machine: those are
# someone else's. Whatever it installed and mounted is removed on exit,
# pass or fail. Exit codes follow meson: 0 pass, 1 fail, 77 skip.
set -euo pipefail

NAME=deb
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SYSPATH=/usr/sbin:/usr/bin:/sbin:/bin
URI=qemu:///system
STATE=/var/lib/chainfs
# the system's tools only, as a new user has them (no pyenv shim, no build dir)
export PATH=$SYSPATH

log() { printf '[%s %s] %s\n' "$NAME" "$(date +%T)" "$*" >&2; }
fail() { printf '[%s] FAIL: %s\n' "$NAME" "$*" >&2; exit 1; }
skip() { printf '[%s] SKIP: %s\n' "$NAME" "$*" >&2; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root (installs a package system-wide)"
for tool in git dpkg-buildpackage dpkg-parsechangelog dh lintian apt-get man; do
  command -v "$tool" >/dev/null || skip "$tool not installed (bash scripts/deps.sh)"
done
git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || skip "$SRC is not a git checkout (the copy is git ls-files)"
[ -e /dev/fuse ] || skip "no /dev/fuse"
# shellcheck source=scripts/libvirtd.sh
. "$SRC/scripts/libvirtd.sh"
libvirtd_ensure >/dev/null 2>&1 || skip "no libvirtd on $URI"

# ---- refusals: nothing here is ours yet ---------------------------------------
status=$(dpkg-query -W -f='${db:Status-Status}' chainfs 2>/dev/null || true)
if [ -n "$status" ] && [ "$status" != not-installed ]; then
  fail "dpkg already knows a chainfs package (status: $status); this test installs and removes chainfs system-wide and never overwrites or removes someone else's: purge it first (apt-get purge chainfs)"
fi
if [ -e "$STATE" ]; then
  fail "$STATE exists (state of a chainfs this test did not install); the test purges the package, whose postrm deletes $STATE: move it away first"
fi

# man-db's cat pages of the package's pages: one made while the package was
# installed (anyone's `man chainfs` at width 80) outlives the purge, and
# would be shown for a later build with the same mtime; those this run saw
# appear are removed at the end
CATS=(/var/cache/man/cat8/chainfs.8.gz /var/cache/man/cat5/chainfs-files.5.gz)
CATS_BEFORE=()
for c in "${CATS[@]}"; do [ -e "$c" ] && CATS_BEFORE+=("$c"); done

WORK=$(mktemp -d /var/tmp/chainfs-deb.XXXXXX)
chmod 0755 "$WORK" # QEMU's user must reach images under it (the demo's are in its own dir)
INSTALLED=""
MNT=""
MPID=""

cleanup() {
  local rc=$? i
  set +e
  trap - EXIT INT TERM
  cd /
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then
    fusermount3 -u "$MNT" || { sleep 1; fusermount3 -u "$MNT"; } || fusermount3 -u -z "$MNT"
  fi
  if [ -n "$MPID" ]; then
    for ((i = 0; i < 50; i++)); do kill -0 "$MPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$MPID" 2>/dev/null && kill -TERM "$MPID"
    wait "$MPID" 2>/dev/null
  fi
  if [ -n "$INSTALLED" ]; then
    # ours: installed by this run (it refused to start otherwise)
    status=$(dpkg-query -W -f='${db:Status-Status}' chainfs 2>/dev/null)
    if [ -n "$status" ] && [ "$status" != not-installed ]; then
      log "cleanup: purging the chainfs package this test installed"
      DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 chainfs >/dev/null 2>&1 ||
        dpkg --purge chainfs >/dev/null 2>&1
    fi
    rm -rf "$STATE"
    for c in "${CATS[@]}"; do
      [[ " ${CATS_BEFORE[*]} " == *" $c "* ]] || rm -f "$c"
    done
  fi
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then
    log "cleanup: $MNT still mounted; leaving $WORK"
  else
    rm -rf "$WORK"
  fi
  if [ "$rc" -eq 0 ]; then log "PASS"; else log "FAILED (status $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. a copy of the tree ----------------------------------------------------
T0=$(date +%s)
mkdir "$WORK/src" "$WORK/src/chainfs" "$WORK/inst"
(cd "$SRC" && git ls-files -z | xargs -0 cp -P --parents -t "$WORK/src/chainfs")
[ -d "$WORK/src/chainfs/debian" ] || fail "no debian/ in git ls-files of $SRC"
MESON_VERSION=$(sed -n "s/^  version : '\([^']*\)'.*/\1/p" "$SRC/meson.build")
DEB_VERSION=$(dpkg-parsechangelog -l "$WORK/src/chainfs/debian/changelog" -S Version)
[ -n "$MESON_VERSION" ] || fail "no project version in meson.build"
[ "$MESON_VERSION" = "$DEB_VERSION" ] ||
  fail "meson.build says version $MESON_VERSION, debian/changelog $DEB_VERSION: add a changelog entry (dch -v $MESON_VERSION)"
log "ok: version $MESON_VERSION in meson.build and debian/changelog"

# ---- 2. build and lintian -----------------------------------------------------
log "dpkg-buildpackage -us -uc -b (DEB_BUILD_OPTIONS=nocheck)"
if ! (cd "$WORK/src/chainfs" && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1; then
  cat "$WORK/build.log" >&2
  fail "dpkg-buildpackage failed"
fi
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB="$WORK/src/chainfs_${MESON_VERSION}_${ARCH}.deb"
[ -f "$DEB" ] || { ls -l "$WORK/src" >&2; fail "no ${DEB##*/} built"; }
if grep -nE '\.[ch]:[0-9]+:[0-9]+: warning:' "$WORK/build.log" >&2; then
  fail "the package build has compiler warnings (above)"
fi
log "ok: built ${DEB##*/} in $(($(date +%s) - T0)) s"

LINT=$(lintian --pedantic -I "$DEB" 2>&1 | grep -v '^running with root privileges' || true)
log "lintian --pedantic -I ${DEB##*/}:"
printf '%s\n' "${LINT:-(nothing)}" >&2
if printf '%s\n' "$LINT" | grep -q '^E:'; then
  fail "lintian reports errors"
fi
log "ok: lintian reports no errors"

# what the package holds; each must be new on this machine
# (tar names directories with a trailing /: only the others can clash)
dpkg-deb --fsys-tarfile "$DEB" | tar -t | sed 's|^\./|/|' | grep -v '/$' >"$WORK/files"
dpkg-deb --fsys-tarfile "$DEB" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$WORK/paths"
for f in /usr/bin/chainfs /usr/share/man/man8/chainfs.8.gz /usr/share/man/man5/chainfs-files.5.gz \
  /usr/share/doc/chainfs/examples; do
  grep -qx "$f" "$WORK/paths" || fail "the package does not ship $f"
done
UNITS=$(grep -E '^/(usr/)?lib/systemd/system/[^/]+\.service$' "$WORK/files" || true)
[ -n "$UNITS" ] || fail "the package ships no systemd unit"
while read -r f; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    fail "$f already exists on this machine and is not ours: the package would overwrite it"
  fi
done <"$WORK/files"

# ---- 3. install in a clean place and use it --------------------------------------
mv "$DEB" "$WORK/inst/"
rm -rf "$WORK/src" # the build tree moved away
cp "$SRC/scripts/demo.sh" "$SRC/scripts/libvirtd.sh" "$WORK/inst/"
cd "$WORK/inst"
INSTALLED=1
log "apt-get install ./${DEB##*/}"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "./${DEB##*/}" >"$WORK/apt.log" 2>&1; then
  cat "$WORK/apt.log" >&2
  fail "apt-get install failed"
fi
[ "$(dpkg-query -W -f='${db:Status-Status}' chainfs)" = installed ] || fail "chainfs not installed after apt-get install"
dpkg-query -L chainfs | grep -v '^/\.$' >"$WORK/owned"
CONFFILES=$(dpkg-query -W -f='${Conffiles}' chainfs | awk 'NF {print $1}')

[ "$(command -v chainfs)" = /usr/bin/chainfs ] || fail "chainfs in PATH=$PATH is $(command -v chainfs), not /usr/bin/chainfs"
V=$(chainfs -V) || fail "chainfs -V failed"
case "$V" in
  "chainfs $MESON_VERSION "*) log "ok: chainfs -V: $V" ;;
  *) fail "chainfs -V printed '$V', not chainfs $MESON_VERSION" ;;
esac

[ "$(man -w chainfs)" = /usr/share/man/man8/chainfs.8.gz ] || fail "man -w chainfs: $(man -w chainfs 2>&1)"
# MANWIDTH other than 80: man-db neither reads nor writes its cat pages
# (/var/cache/man), so the page shown is the one installed now (a cat page
# of an earlier build carries the same mtime, SOURCE_DATE_EPOCH) and none
# is left behind
PAGE=$(MANWIDTH=100 man -P cat chainfs 2>&1) || fail "man chainfs failed: $PAGE"
printf '%s\n' "$PAGE" | grep -q '^NAME' || fail "man chainfs shows no NAME section"
printf '%s\n' "$PAGE" | grep -q "^CHAINFS(8) " || fail "man chainfs does not show chainfs(8)"
[ "$PAGE" = "$(MANWIDTH=100 man -P cat -l /usr/share/man/man8/chainfs.8.gz 2>&1)" ] ||
  fail "man chainfs does not show the installed page"
log "ok: man chainfs shows the page ($(printf '%s\n' "$PAGE" | wc -l) lines)"

for u in $UNITS; do
  base=${u##*/}
  case "$base" in
    *@.service) inst="${base%@.service}@$(systemd-escape --path /vms).service" ;;
    *) inst=$base ;;
  esac
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$inst" 2>&1) ||
    fail "systemd-analyze verify $inst (installed $u): $out"
  [ -z "$out" ] || fail "systemd-analyze verify $inst (installed $u) is not quiet: $out"
  log "ok: systemd-analyze verify $inst (the installed $u) is clean"
done

log "the README's demo (demo.sh) with CHAINFS=/usr/bin/chainfs"
if ! DEMO=$(CHAINFS=/usr/bin/chainfs bash "$WORK/inst/demo.sh" 2>&1); then
  printf '%s\n' "$DEMO" >&2
  fail "the demo failed against /usr/bin/chainfs"
fi
printf '%s\n' "$DEMO" | grep -q '^layers: 2$' || { printf '%s\n' "$DEMO" >&2; fail "the demo's mkdir made no second layer"; }
[ "$(printf '%s\n' "$DEMO" | grep '^layers:' | tail -n 1)" = "layers: 1" ] ||
  { printf '%s\n' "$DEMO" >&2; fail "the demo's rmdir did not merge back to one layer"; }
printf '%s\n' "$DEMO" | grep -q '^demo: done' || { printf '%s\n' "$DEMO" >&2; fail "the demo did not finish"; }
log "ok: the demo ran against /usr/bin/chainfs (mkdir: 2 layers, rmdir: 1)"

# the default state directory: made by the daemon, not by the package
MNT=$WORK/mnt
mkdir "$MNT"
chainfs -f -c "$URI" "$MNT" >"$WORK/mount.log" 2>&1 &
MPID=$!
for ((i = 0; i < 100; i++)); do
  mountpoint -q "$MNT" && break
  kill -0 "$MPID" 2>/dev/null || { cat "$WORK/mount.log" >&2; fail "chainfs (no state_dir) exited"; }
  sleep 0.1
done
mountpoint -q "$MNT" || fail "chainfs (no state_dir) did not mount within 10 s"
[ -d "$STATE" ] || fail "a root mount without state_dir made no $STATE"
fusermount3 -u "$MNT"
wait "$MPID" || fail "chainfs exited non-zero after the unmount: $(cat "$WORK/mount.log")"
MPID=""
log "ok: a mount without state_dir made $STATE"

# ---- 4. remove, then purge ----------------------------------------------------
if ! DEBIAN_FRONTEND=noninteractive apt-get remove -y -q -o DPkg::Lock::Timeout=300 chainfs >"$WORK/apt.log" 2>&1; then
  cat "$WORK/apt.log" >&2
  fail "apt-get remove failed"
fi
status=$(dpkg-query -W -f='${db:Status-Status}' chainfs 2>/dev/null || true)
case "$status" in
  config-files | not-installed | "") ;;
  *) fail "after apt-get remove, chainfs is '$status'" ;;
esac
left=0
while read -r f; do
  if printf '%s\n' "$CONFFILES" | grep -qxF "$f"; then continue; fi
  if [ -d "$f" ]; then
    # a directory stays only when another package owns it too (/lib may
    # be merged /usr's symlink to usr/lib)
    dpkg-query -S "$f" >/dev/null 2>&1 && continue
    log "left after remove: directory $f"
    left=1
  elif [ -e "$f" ] || [ -L "$f" ]; then
    log "left after remove: $f"
    left=1
  fi
done <"$WORK/owned"
[ "$left" -eq 0 ] || fail "apt-get remove left files of the package behind"
[ -d "$STATE" ] || fail "apt-get remove deleted $STATE (README says remove keeps it)"
log "ok: apt-get remove left only $STATE (and conffiles: ${CONFFILES:-none})"

if ! DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 chainfs >"$WORK/apt.log" 2>&1; then
  cat "$WORK/apt.log" >&2
  fail "apt-get purge failed"
fi
[ ! -e "$STATE" ] || fail "apt-get purge left $STATE"
status=$(dpkg-query -W -f='${db:Status-Status}' chainfs 2>/dev/null || true)
[ -z "$status" ] || [ "$status" = not-installed ] || fail "after purge, chainfs is '$status'"
for f in $CONFFILES; do [ ! -e "$f" ] || fail "apt-get purge left the conffile $f"; done
log "ok: apt-get purge removed $STATE; dpkg forgot chainfs"
log "total $(($(date +%s) - T0)) s"

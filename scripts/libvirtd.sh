#!/usr/bin/env bash
# libvirtd.sh — make sure a libvirtd answers on qemu:///system.
#
# Source it and call `libvirtd_ensure`, or run it. If nothing answers, it
# starts virtlogd and libvirtd as daemons (these machines have no systemd)
# and waits up to 20 s. It never stops a libvirtd: one it starts is left
# running for the next user, one it finds is not its to touch.
#
# A libvirtd it starts is recorded: its pid goes to LIBVIRTD_MARKER
# (/run/chainfs-test-libvirtd.pid). tests/fault/libvirtd_restart.sh
# restarts libvirtd only when that record names the running libvirtd
# (`libvirtd_ours`), i.e. when the test suite itself started it, never an
# administrator's.

LIBVIRTD_URI=${LIBVIRTD_URI:-qemu:///system}
LIBVIRTD_MARKER=${LIBVIRTD_MARKER:-/run/chainfs-test-libvirtd.pid}
LIBVIRTD_PIDFILE=${LIBVIRTD_PIDFILE:-/run/libvirtd.pid} # libvirtd -d writes it

libvirtd_answers() {
  virsh -c "$LIBVIRTD_URI" version >/dev/null 2>&1
}

# libvirtd_kvm_setup — give /dev/kvm Debian's udev default, root:kvm 0660,
# when no udev did (it is then root:root 0600). Without it QEMU (user
# libvirt-qemu, group kvm) cannot use KVM, and libvirt 9.0 re-probes QEMU's
# capabilities on every domain definition (the probe finds KVM, the check
# then does not), so each `virsh define` takes half a minute or more.
# CHAINFS_KVM_SETUP=0 leaves /dev/kvm alone.
libvirtd_kvm_setup() {
  [ "${CHAINFS_KVM_SETUP:-1}" != 0 ] || return 0
  [ -c /dev/kvm ] && [ "$(id -u)" -eq 0 ] && getent group kvm >/dev/null 2>&1 || return 0
  [ "$(stat -c '%U:%G %a' /dev/kvm)" = "root:root 600" ] || return 0
  echo "libvirtd: /dev/kvm is root-only (no udev here); applying Debian's default root:kvm 0660" >&2
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
}

libvirtd_ensure() {
  libvirtd_kvm_setup || true
  libvirtd_answers && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "libvirtd: nothing answers on $LIBVIRTD_URI, and starting libvirtd needs root" >&2
    return 1
  fi
  if ! command -v libvirtd >/dev/null 2>&1; then
    echo "libvirtd: libvirtd is not installed (run scripts/deps.sh)" >&2
    return 1
  fi
  echo "libvirtd: nothing answers on $LIBVIRTD_URI; starting virtlogd and libvirtd" >&2
  if ! pgrep -x virtlogd >/dev/null 2>&1; then
    virtlogd -d || echo "libvirtd: virtlogd did not start; continuing" >&2
  fi
  if ! pgrep -x libvirtd >/dev/null 2>&1; then
    libvirtd_start
    return
  fi
  libvirtd_wait_answer
}

libvirtd_wait_answer() {
  local i
  for ((i = 0; i < 40; i++)); do
    libvirtd_answers && return 0
    sleep 0.5
  done
  echo "libvirtd: still no answer on $LIBVIRTD_URI after 20 s" >&2
  return 1
}

# libvirtd_start — start libvirtd as a daemon, wait for it to answer and
# record its pid (from the pid file it writes) in LIBVIRTD_MARKER.
libvirtd_start() {
  local pid
  libvirtd -d || return 1
  libvirtd_wait_answer || return 1
  pid=$(cat "$LIBVIRTD_PIDFILE" 2>/dev/null) || pid=""
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ]; then
    echo "$pid" >"$LIBVIRTD_MARKER"
  else
    echo "libvirtd: started, but $LIBVIRTD_PIDFILE names no libvirtd; not recorded" >&2
  fi
}

# libvirtd_ours — print the pid of the running libvirtd if the test suite
# started it (LIBVIRTD_MARKER names it, and it is the libvirtd of the pid
# file); fail otherwise.
libvirtd_ours() {
  local pid
  pid=$(cat "$LIBVIRTD_MARKER" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$pid" = "$(cat "$LIBVIRTD_PIDFILE" 2>/dev/null)" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ] || return 1
  echo "$pid"
}

# libvirtd_virt_type — "kvm" when QEMU, running as libvirt's qemu user, can
# open /dev/kvm; else "qemu" (TCG). /dev/kvm can exist and still be
# root-only (no udev to apply Debian's root:kvm 0660), and then a kvm
# domain fails to start. CHAINFS_VIRT_TYPE=qemu forces TCG on a host that
# has KVM (to run the tests as a CI machine without /dev/kvm would);
# CHAINFS_VIRT_TYPE=kvm insists on KVM (a domain then fails to start where
# there is none). Anything else is refused.
libvirtd_virt_type() {
  local user=${LIBVIRTD_QEMU_USER:-libvirt-qemu}
  case "${CHAINFS_VIRT_TYPE:-}" in
    "") ;;
    kvm | qemu) echo "$CHAINFS_VIRT_TYPE"; return 0 ;;
    *) echo "libvirtd: CHAINFS_VIRT_TYPE=$CHAINFS_VIRT_TYPE: expected kvm or qemu" >&2; return 1 ;;
  esac
  if [ -c /dev/kvm ] && id "$user" >/dev/null 2>&1 &&
    setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups \
      sh -c 'test -r /dev/kvm && test -w /dev/kvm' 2>/dev/null; then
    echo kvm
  else
    echo qemu
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  libvirtd_ensure
  echo "libvirtd: answering on $LIBVIRTD_URI"
fi

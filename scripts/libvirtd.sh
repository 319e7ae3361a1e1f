#!/usr/bin/env bash
# libvirtd.sh — make sure a libvirtd answers on qemu:///system.
#
# Source it and call `libvirtd_ensure`, or run it. If nothing answers, it
# starts virtlogd and libvirtd as daemons (these machines have no systemd)
# and waits up to 20 s. It never stops a libvirtd: one it starts is left
# running for the next user, one it finds is not its to touch.

LIBVIRTD_URI=${LIBVIRTD_URI:-qemu:///system}

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
  local i
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
    libvirtd -d
  fi
  for ((i = 0; i < 40; i++)); do
    libvirtd_answers && return 0
    sleep 0.5
  done
  echo "libvirtd: still no answer on $LIBVIRTD_URI after 20 s" >&2
  return 1
}

# libvirtd_virt_type — "kvm" when QEMU, running as libvirt's qemu user, can
# open /dev/kvm; else "qemu" (TCG). /dev/kvm can exist and still be
# root-only (no udev to apply Debian's root:kvm 0660), and then a kvm
# domain fails to start.
libvirtd_virt_type() {
  local user=${LIBVIRTD_QEMU_USER:-libvirt-qemu}
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

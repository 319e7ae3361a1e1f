#!/usr/bin/env bash
# host2_smoke.sh — the second libvirt host of host2_lib.sh works and
# touches nothing else (issue 12 item 2):
#   1. h2_start: a system libvirtd in its own mount and network namespace
#      answers on qemu+tcp://ADDR/system over a veth pair; it has no
#      network (none autostarted) and none of this host's domains;
#   2. over that URI: define a 64 MiB no-OS domain on a qcow2 image in $T,
#      start it (QEMU runs in the namespace, as libvirt-qemu), take a
#      disk-only snapshot; this host's libvirtd does not know the domain;
#   3. h2_kill (SIGKILL): the URI stops answering, the QEMU stays;
#      h2_restart: the same domain is running with the same QEMU and the
#      snapshot's overlay active; blockcommit --active --pivot over the URI
#      brings the base back, the data intact;
#   4. h2_stop: nothing of it is left (no process in its namespace, no
#      veth, no mount of $T/h2 here), and this host's libvirtd, its
#      libvirt directories, its interfaces and its firewall rules are as
#      they were.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/host2_lib.sh"
it_init

D="$IT_PREFIX-h2"
IMG=$(it_tmpdir)

# This host's state as far as a second host could change it. Other tests'
# second hosts (veths h2a<pid>, addresses in 10.222.0.0/16) come and go
# meanwhile: they are left out; ours is checked gone by name.
host_state() {
  echo "libvirtd: $(cat /run/libvirtd.pid 2>/dev/null)"
  echo "links: $(ip -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//' | grep -Ev '^h2a[0-9]+$' | sort | tr '\n' ' ')"
  echo "addrs: $(ip -o -4 addr show | awk '{ print $2, $4 }' | grep -Ev '^h2a[0-9]+ ' | sort | tr '\n' ' ')"
  echo "routes: $(ip -4 route show | grep -v '^10\.222\.' | sort | tr '\n' ';')"
  if command -v iptables-save >/dev/null 2>&1; then
    echo "iptables: $(iptables-save 2>/dev/null | grep -v '^#' | sha256sum)"
  fi
  if command -v nft >/dev/null 2>&1; then
    echo "nft: $(nft list ruleset 2>/dev/null | sha256sum)"
  fi
  echo "networks: $(virsh -q -c qemu:///system net-list --all --name 2>/dev/null | sort | tr '\n' ' ')"
}
BEFORE=$(host_state)

h2_start

# 1. its own daemon, no network, none of this host's domains
[ "$H2_PID" != "$(cat /run/libvirtd.pid 2>/dev/null)" ] || it_fail "H2_PID is this host's libvirtd"
it_assert_eq "" "$(h2_virsh net-list --all --name | sed '/^$/d')" "the second host has no network"
it_assert_eq "" "$(h2_virsh list --all --name | sed '/^$/d')" "the second host has no domain"
it_assert_eq "" "$(h2_run sh -c 'ls /etc/libvirt/qemu/*.xml 2>/dev/null')" "no domain definition of this host in its /etc/libvirt"
h2_run test -S /run/libvirt/libvirt-sock || it_fail "its unix socket is not in its /run/libvirt"
[ ! -e "/run/libvirt/virtlogd-sock" ] || [ "$(stat -c %i /run/libvirt/virtlogd-sock)" != "$(h2_run stat -c %i /run/libvirt/virtlogd-sock)" ] ||
  it_fail "its virtlogd socket is this host's"
it_log "ok: second libvirtd answers on $H2_URI from here"

# 2. a domain over qemu+tcp
it_make_image "$IMG/base.qcow2" 64M
it_write_pattern "$IMG/base.qcow2" 0x5a 0 1M
it_domain_xml "$D" "$IMG/base.qcow2" >"$T/$D.xml"
h2_virsh define "$T/$D.xml" >/dev/null || it_fail "define $D over $H2_URI"
h2_virsh start "$D" >/dev/null || it_fail "start $D over $H2_URI"
it_assert_eq "running" "$(h2_virsh domstate "$D" | sed '/^$/d')" "$D runs on the second host"
QPID=$(pgrep -f -- "-name guest=$D," | head -n1)
[ -n "$QPID" ] || it_fail "no QEMU process for $D"
# libvirt gives each QEMU a mount namespace of its own, copied from the
# daemon's: it must hold the second host's /var/lib/libvirt, not ours.
[ "$(readlink "/proc/$QPID/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || it_fail "QEMU $QPID is in this host's mount namespace"
QROOT=$(awk '$5 == "/var/lib/libvirt" { r = $4 } END { print r }' "/proc/$QPID/mountinfo")
case "$QROOT" in
  */h2/lib) it_log "ok: QEMU $QPID sees the second host's /var/lib/libvirt ($QROOT)" ;;
  *) it_fail "QEMU $QPID's /var/lib/libvirt is '$QROOT', not the second host's" ;;
esac
it_assert_eq "libvirt-qemu" "$(ps -o user= -p "$QPID" | tr -d ' ')" "QEMU $QPID runs as libvirt-qemu"
it_assert_eq "$(it_virt_type)" "$(h2_virsh dumpxml "$D" | sed -n "s/^<domain type='\([a-z]*\)'.*/\1/p")" "virt type $(it_virt_type)"
if virsh -q -c qemu:///system domid "$D" >/dev/null 2>&1; then
  it_fail "this host's libvirtd knows $D"
fi
it_log "ok: this host's libvirtd does not know $D"

h2_virsh snapshot-create-as "$D" s1 --disk-only --atomic --diskspec "vda,file=$IMG/s1.qcow2" >/dev/null ||
  it_fail "snapshot-create-as --disk-only over $H2_URI"
it_assert_eq "$IMG/s1.qcow2" "$(h2_virsh domblklist "$D" | awk '$1 == "vda" { print $2 }')" "vda is on the overlay s1"

# no firewall rule even inside its own network namespace, TCP only on
# the veth address
if command -v iptables-save >/dev/null 2>&1; then
  it_assert_eq "" "$(h2_run iptables-save 2>/dev/null | grep -Ev '^(#|\*|:|COMMIT)' || true)" "no iptables rule in the second host's namespace"
fi
if command -v ss >/dev/null 2>&1; then
  it_assert_eq "$H2_ADDR:16509" "$(h2_run ss -Hltn | awk '{ print $4 }' | sort | tr '\n' ' ' | sed 's/ $//')" "the second host listens on $H2_ADDR:16509 only"
fi

# 3. the host goes away and comes back
h2_kill
virsh -q -c "$H2_URI" version >/dev/null 2>&1 && it_fail "$H2_URI still answers after h2_kill"
kill -0 "$QPID" 2>/dev/null || it_fail "QEMU $QPID died with its libvirtd"
h2_restart
it_assert_eq "running" "$(h2_virsh domstate "$D" | sed '/^$/d')" "$D still running after the restart"
it_assert_eq "$QPID" "$(pgrep -f -- "-name guest=$D," | head -n1)" "the same QEMU"
it_assert_eq "$IMG/s1.qcow2" "$(h2_virsh domblklist "$D" | awk '$1 == "vda" { print $2 }')" "vda still on s1 after the restart"
it_assert_eq "s1" "$(h2_virsh snapshot-list "$D" --name | sed '/^$/d')" "the snapshot's metadata survived"

h2_virsh blockcommit "$D" vda --active --pivot >/dev/null || it_fail "blockcommit --active --pivot over $H2_URI"
it_assert_eq "$IMG/base.qcow2" "$(h2_virsh domblklist "$D" | awk '$1 == "vda" { print $2 }')" "vda back on base after the commit"
it_check_pattern "$IMG/base.qcow2" 0x5a 0 1M
h2_virsh destroy "$D" >/dev/null || it_fail "destroy $D"
kill -0 "$QPID" 2>/dev/null && it_fail "QEMU $QPID survives destroy"

# 4. all gone, this host untouched
H2_DIR_SAVED=$H2_DIR
VETH=$H2_VETH
# h2_stop fails if a process is left in the namespace: it looks while it
# holds the namespace open. Looking again here, after it let go, could find
# another test's second host, whose namespace may reuse the freed one's
# inode number (net:[N]).
h2_stop || it_fail "h2_stop reported leftovers"
ip link show "$VETH" >/dev/null 2>&1 && it_fail "veth $VETH still exists"
grep -q " $H2_DIR_SAVED" /proc/self/mountinfo && it_fail "a mount of $H2_DIR_SAVED is visible here"
it_log "ok: no process in its namespace, no veth, no mount left"
AFTER=$(host_state)
it_assert_eq "$BEFORE" "$AFTER" "this host's libvirtd, interfaces, routes, firewall and networks unchanged"
for d in /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt; do
  found=$(grep -rls -- "$D" "$d" 2>/dev/null | head -n 3 || true)
  it_assert_eq "" "$found" "nothing of $D in this host's $d"
done

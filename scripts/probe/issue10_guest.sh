#!/bin/bash
# issue10_guest.sh — probe for design issue 10 §1: build a small Linux test
# guest from Debian 12 packages (never installing anything on the host)
# and, with `boot`, boot it once under TCG to measure the boot time and
# check that the guest agent answers.
#
#   issue10_guest.sh build DIR     download the .debs, extract, write DIR/vmlinuz
#                                  and DIR/initrd.img (+ DIR/build.log lines)
#   issue10_guest.sh boot DIR      define + start one domain (TCG) on them,
#                                  time the serial console's READY line and a
#                                  guest-ping, freeze/thaw once, then destroy
#                                  and undefine it
#
# Prototype of tests/guest/build.sh of the design (docs/design/issue10.md §1);
# the workload here is a minimal one (numbered files on vdb, lockstep
# sequence numbers on vdb and vdc).
set -euo pipefail

cmd=${1:?build|boot}
D=${2:?DIR}
mkdir -p "$D"
D=$(cd "$D" && pwd)
KVER=${KVER:-}
log() { printf '[%s] %s\n' "$(date -u +%T.%3N)" "$*" | tee -a "$D/probe.log" >&2; }

build() {
  local x=$D/x deb pkgs kimg
  mkdir -p "$D/debs" "$x"
  kimg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
  [ -n "$kimg" ] || { log "no linux-image-*-amd64 behind linux-image-amd64"; exit 1; }
  KVER=${kimg#linux-image-}
  pkgs="$kimg busybox-static qemu-guest-agent libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0 libc6"
  log "packages: $pkgs"
  (cd "$D/debs" && apt-get download $pkgs >/dev/null 2>&1)
  for deb in "$D"/debs/*.deb; do
    dpkg-deb -x "$deb" "$x"
    log "deb $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) sha256 $(sha256sum <"$deb" | cut -c1-16)"
  done
  cp "$x/boot/vmlinuz-$KVER" "$D/vmlinuz"

  local r=$D/root m mods dep
  rm -rf "$r"
  mkdir -p "$r"/{bin,sbin,dev,proc,sys,run,tmp,etc/qemu,mnt/b,mnt/c,lib/x86_64-linux-gnu,lib64,usr/sbin,lib/modules/$KVER}
  cp "$x/bin/busybox" "$r/bin/busybox"
  for a in sh mount umount insmod modprobe sleep cat echo dd sha256sum sync mkdir ls ps kill pidof seq uname date rm touch test; do
    ln -sf busybox "$r/bin/$a"
  done
  # modules: the ones needed and their dependencies, from each module's
  # own .modinfo (depends=), dependencies first; no kmod on the host.
  # busybox depmod on the extracted tree gives the module paths.
  "$x/bin/busybox" depmod -b "$x" "$KVER"
  mods=""
  modpath() { grep -oE "^[^:]*/$1\.ko:" "$x/lib/modules/$KVER/modules.dep" | tr -d :; }
  resolve() {
    local f d
    f=$(modpath "$1")
    [ -n "$f" ] || { log "module $1 not in the package"; exit 1; }
    case " $mods " in *" $f "*) return ;; esac
    for d in $(strings -a "$x/lib/modules/$KVER/$f" | sed -n 's/^depends=//p' | tr , ' '); do
      resolve "$d"
    done
    mods="$mods $f"
  }
  # crc32c_generic: ext4's and jbd2's softdep (crypto-crc32c); TCG's
  # default CPU has no SSE4.2 for crc32c-intel
  for m in virtio_pci virtio_blk virtio_console crc32c_generic ext4; do resolve $m; done
  log "modules (load order):$mods"
  for f in $mods; do
    mkdir -p "$r/lib/modules/$KVER/$(dirname "$f")"
    cp "$x/lib/modules/$KVER/$f" "$r/lib/modules/$KVER/$f"
  done
  printf '%s\n' $mods >"$r/lib/modules/$KVER/load-order"
  # qemu-ga and its libraries (the closure of NEEDED, from the .debs)
  cp "$x/usr/sbin/qemu-ga" "$r/usr/sbin/"
  local need=" " todo="$x/usr/sbin/qemu-ga" f n p
  while [ -n "${todo// /}" ]; do
    todo=${todo# }; f=${todo%% *}; todo=${todo#"$f"}
    for n in $(readelf -d "$f" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p'); do
      case "$need" in *" $n "*) continue ;; esac
      need="$need$n "
      p=$(find "$x/lib/x86_64-linux-gnu" "$x/usr/lib/x86_64-linux-gnu" -maxdepth 1 -name "$n" | head -1)
      [ -n "$p" ] || { log "library $n not found in the .debs"; exit 1; }
      cp -L "$p" "$r/lib/x86_64-linux-gnu/$n"
      todo="$todo $p"
    done
  done
  cp -L "$x/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  log "qemu-ga libraries:$need"

  cat >"$r/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
# called by qemu-ga with freeze|thaw: pause the workload between pairs
case "$1" in
  freeze)
    n=$(cat /run/freezes 2>/dev/null || echo 0); n=$((n + 1)); echo $n >/run/freezes
    [ -e /run/hang-freeze ] && sleep "$(cat /run/hang-freeze)"
    touch /run/pause; i=0
    while [ ! -e /run/paused ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    echo "FREEZE $n" >/dev/ttyS0 ;;
  thaw)
    rm -f /run/pause /run/paused; echo "THAW $(cat /run/freezes)" >/dev/ttyS0 ;;
esac
exit 0
EOF
  chmod 755 "$r/etc/qemu/fsfreeze-hook"

  cat >"$r/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
exec >/dev/ttyS0 2>&1
K=$(uname -r)
for f in $(cat /lib/modules/$K/load-order); do insmod /lib/modules/$K/$f; done
echo "MODULES $(cat /proc/uptime)"
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vdb /mnt/b && mount -t ext4 /dev/vdc /mnt/c
port=""
for v in /sys/class/virtio-ports/*; do
  [ "$(cat $v/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${v##*/}
done
i=0; while [ -n "$port" ] && [ ! -c "$port" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/usr/sbin/qemu-ga -m virtio-serial -p "$port" -F/etc/qemu/fsfreeze-hook -t /run -f /run/qemu-ga.pid &
echo "READY $(cat /proc/uptime) agent=$port"
n=$(cat /mnt/b/seq 2>/dev/null || echo 0)
while :; do
  if [ -e /run/pause ]; then touch /run/paused; sleep 0.05; continue; fi
  n=$((n + 1))
  dd if=/dev/urandom of=/mnt/b/f.$n bs=4k count=1 conv=fsync 2>/dev/null
  sync /mnt/b
  echo "$n $(sha256sum </mnt/b/f.$n | cut -d' ' -f1)"
  echo $n >/mnt/b/seq.tmp; dd if=/mnt/b/seq.tmp of=/mnt/b/seq conv=fsync 2>/dev/null
  echo $n >/mnt/c/seq.tmp; dd if=/mnt/c/seq.tmp of=/mnt/c/seq conv=fsync 2>/dev/null
  sleep 0.2
done
EOF
  chmod 755 "$r/init"
  (cd "$r" && find . | LC_ALL=C sort | "$x/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$D/initrd.img")
  log "initrd.img $(stat -c %s "$D/initrd.img") bytes, vmlinuz $(stat -c %s "$D/vmlinuz") bytes"
  log "root tree $(du -sk "$r" | cut -f1) KiB"
  rm -rf "$x" "$D/debs"
}

boot() {
  local dom="d10probe-$$" t0 t1 ready
  local vt=${CHAINFS_VIRT_TYPE:-qemu}
  for disk in b c; do
    rm -f "$D/vd$disk.raw"
    truncate -s 64M "$D/vd$disk.raw"
    mkfs.ext4 -q -F "$D/vd$disk.raw"
  done
  qemu-img create -q -f qcow2 "$D/vda.qcow2" 16M
  : >"$D/console.log"
  chmod 0755 "$D"
  cat >"$D/$dom.xml" <<EOF
<domain type='$vt'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$D/vmlinuz</kernel><initrd>$D/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$D/vdb.raw'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$D/vdc.raw'/><target dev='vdc' bus='virtio'/></disk>
    <serial type='file'><source path='$D/console.log'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
EOF
  virsh -q -c qemu:///system define "$D/$dom.xml" >/dev/null
  trap 'virsh -q -c qemu:///system destroy '"$dom"' >/dev/null 2>&1; virsh -q -c qemu:///system undefine '"$dom"' >/dev/null 2>&1' EXIT
  t0=$(date +%s.%N)
  virsh -q -c qemu:///system start "$dom" >/dev/null
  log "started $dom ($vt)"
  ready=""
  for _ in $(seq 1 600); do
    if grep -q '^READY' "$D/console.log" 2>/dev/null; then ready=1; break; fi
    sleep 0.1
  done
  t1=$(date +%s.%N)
  log "READY line after $(echo "$t1 - $t0" | bc) s (start to READY): $(grep -a -m1 '^READY' "$D/console.log" || echo none)"
  grep -a -m1 '^MODULES' "$D/console.log" | sed 's/^/[guest] /' >&2 || true
  [ -n "$ready" ] || { log "no READY; console:"; tail -20 "$D/console.log" >&2; exit 1; }
  for _ in $(seq 1 100); do
    if virsh -q -c qemu:///system qemu-agent-command "$dom" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  t1=$(date +%s.%N)
  log "guest-ping answered after $(echo "$t1 - $t0" | bc) s: $(virsh -q -c qemu:///system qemu-agent-command "$dom" '{"execute":"guest-ping"}' --timeout 2 2>&1)"
  V="virsh -q -c qemu:///system"
  qga() { $V qemu-agent-command "$dom" "$1" --timeout 5 2>&1; }
  timed() { local a b out; a=$(date +%s.%N); out=$("$@" 2>&1); b=$(date +%s.%N); printf '%s s: %s' "$(echo "$b - $a" | bc)" "$(echo "$out" | tr '\n' ' ')"; }
  log "1 domfsfreeze: $(timed $V domfsfreeze "$dom")"
  log "  fsfreeze-status: $(qga '{"execute":"guest-fsfreeze-status"}')"
  log "  second domfsfreeze while frozen: $(timed $V domfsfreeze "$dom")"
  log "  domfsthaw: $(timed $V domfsthaw "$dom")"
  # libvirt's own quiesced atomic snapshot of vdb and vdc (vda excluded)
  log "2 snapshot --disk-only --atomic --quiesce (vdb, vdc; vda no): $(timed $V snapshot-create-as "$dom" s1 --disk-only --atomic --quiesce --no-metadata --diskspec vda,snapshot=no --diskspec vdb,file=$D/vdb.s1.qcow2 --diskspec vdc,file=$D/vdc.s1.qcow2)"
  log "  domblklist: $($V domblklist "$dom" | tr -s ' ' | tr '\n' ';')"
  # a hung agent: the freeze hook sleeps 20 s; libvirt's wait bounded at 3 s
  qga '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","echo 20 >/run/hang-freeze"]}}' >/dev/null
  sleep 1
  log "3 guest-agent-timeout 3: $(timed $V guest-agent-timeout "$dom" --timeout 3)"
  log "  domfsfreeze (hook hangs 20 s): $(timed $V domfsfreeze "$dom")"
  log "  domfsthaw right after: $(timed $V domfsthaw "$dom")"
  log "  snapshot without quiesce meanwhile: $(timed $V snapshot-create-as "$dom" s2 --disk-only --atomic --no-metadata --diskspec vda,snapshot=no --diskspec vdb,file=$D/vdb.s2.qcow2 --diskspec vdc,file=$D/vdc.s2.qcow2)"
  sleep 20
  log "  after the hook's 20 s: fsfreeze-status: $(qga '{"execute":"guest-fsfreeze-status"}')"
  log "  domfsthaw: $(timed $V domfsthaw "$dom")"
  # 3b: does setting the timeout wait for a command in flight (BLOCK)?
  $V guest-agent-timeout "$dom" --timeout -2 >/dev/null
  qga '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","echo 12 >/run/hang-freeze"]}}' >/dev/null
  sleep 1
  ( log "3b domfsfreeze with BLOCK while the hook sleeps 12 s: $(timed $V domfsfreeze "$dom")" ) &
  bg=$!
  sleep 2
  log "3b guest-agent-timeout 3 during it: $(timed $V guest-agent-timeout "$dom" --timeout 3)"
  wait $bg || true
  log "3b domfsthaw: $(timed $V domfsthaw "$dom")"
  qga '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","rm -f /run/hang-freeze"]}}' >/dev/null
  # the agent stopped in the guest
  qga '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","sleep 1; kill $(pidof qemu-ga)"]}}' >/dev/null
  sleep 3
  log "4 agent killed: domfsfreeze: $(timed $V domfsfreeze "$dom")"
  $V guest-agent-timeout "$dom" --timeout -2 >/dev/null 2>&1 || true
  log "  with the default (block) timeout: domfsfreeze: $(timed $V domfsfreeze "$dom")"
  sleep 1
  log "console: $(grep -ac . "$D/console.log") lines; last: $(tail -1 "$D/console.log")"
  grep -a -E '^(FREEZE|THAW)' "$D/console.log" | sed 's/^/[guest] /' >&2 || true
  virsh -q -c qemu:///system destroy "$dom" >/dev/null
  virsh -q -c qemu:///system undefine "$dom" >/dev/null
  trap - EXIT
  # Every image is checked on a scratch raw copy whose ext4 journal is
  # replayed first (e2fsck -E journal_only): debugfs and `fsck -n` do not
  # replay it, and a crash-consistent image has committed transactions
  # still only in the journal.
  local img f
  for img in vdb.raw vdc.raw vdb.s1.qcow2 vdc.s1.qcow2 vdb.s2.qcow2 vdc.s2.qcow2; do
    f=$D/check.$img.raw
    qemu-img convert -U -O raw "$D/$img" "$f"
    local nr; nr=$(dumpe2fs -h "$f" 2>/dev/null | grep -c needs_recovery || true)
    local raw_seq; raw_seq=$(debugfs -R 'cat /seq' "$f" 2>/dev/null)
    e2fsck -E journal_only -y "$f" >/dev/null 2>&1 || true
    log "$img: needs_recovery=$nr seq before replay=$raw_seq after=$(debugfs -R 'cat /seq' "$f" 2>/dev/null) fsck.ext4 -fn after replay: $(fsck.ext4 -fn "$f" >/dev/null 2>&1 && echo clean || echo NOT clean)"
  done
  log "(vdb.raw/vdc.raw: frozen by s1, libvirt's _QUIESCE; vdb.s1/vdc.s1: frozen by s2, crash-consistent while the agent hung; vdb.s2/vdc.s2: final)"
  tr -d '\r' <"$D/console.log" | grep -aE '^[0-9]+ [0-9a-f]{64}$' >"$D/reported"
  log "workload lines on the console: $(wc -l <"$D/reported")"
  # every file the guest reported is in the final vdb with its checksum
  rm -rf "$D/rdump"; mkdir "$D/rdump"
  debugfs -R "rdump / $D/rdump" "$D/check.vdb.s2.qcow2.raw" >/dev/null 2>&1
  local ok=0 bad=0 n sum
  while read -r n sum; do
    if [ "$(sha256sum <"$D/rdump/f.$n" 2>/dev/null | cut -d' ' -f1)" = "$sum" ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done <"$D/reported"
  log "reported files in the final vdb: $ok intact, $bad missing or different"
}

case "$cmd" in
  build) build ;;
  boot) boot ;;
  *) echo "usage: $0 build|boot DIR" >&2; exit 2 ;;
esac

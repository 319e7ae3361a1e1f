# shellcheck shell=bash
# guest_lib.sh — the real Linux test guest for integration tests (issue 10,
# docs/design/issue10.md §1, docs/TESTING.md "The test guest").
#
# Source it after lib.sh and call guest_init after it_init:
#
#   . "$(dirname "$0")/lib.sh"; . "$(dirname "$0")/guest_lib.sh"
#   it_init; guest_init
#   guest_disk "$T/vda.qcow2"; guest_disk "$T/vdb.qcow2"
#   guest_define "$IT_PREFIX-g" "$T/vda.qcow2" "$T/vdb.qcow2"
#   guest_start "$IT_PREFIX-g"            # READY + guest-ping answered
#   ... (the guest writes files; snapshots, merges ...)
#   guest_destroy "$IT_PREFIX-g"
#   guest_check "$IT_PREFIX-g" "$(it_domblk "$IT_PREFIX-g" vda)" "$(it_domblk "$IT_PREFIX-g" vdb)"
#
# The guest (tests/guest/build.sh, cached outside the tree) is the Debian
# kernel and a busybox initramfs running qemu-ga and a workload on every
# disk guest_define gave it: f.<n> files on the first disk, each fsynced
# (file and directory) before "<n> <sha256>" goes to the serial console,
# and the sequence number n written in lockstep into /seq of every disk, in
# disk order (tests/guest/init). Its console is a file, $T/DOM.console,
# appended to across boots (a restarted guest continues at its first
# disk's seq + 1; for a number printed twice the last line counts).
#
# Everything lives in $T and every domain is in IT_DOMAINS: lib.sh's
# it_cleanup destroys and undefines the domains and removes the files,
# pass, fail or signal. Host tools: qemu-img, mkfs.ext4, e2fsck, fsck.ext4,
# debugfs (e2fsprogs), sha256sum, jq.

GUEST_DIR=""          # this test's copy of vmlinuz and initrd.img ($T/guest)
GUEST_BUILD_S=""      # seconds guest_init took (build or cache + copy)
GUEST_BOOT_S=""       # seconds from `virsh start` to READY, last guest_start
GUEST_PING_S=""       # seconds from `virsh start` to guest-ping answered
GUEST_MEMORY_MIB=${GUEST_MEMORY_MIB:-256}
GUEST_BOOT_TIMEOUT=${GUEST_BOOT_TIMEOUT:-180} # s, READY and ping together
GUEST_EXTRA_DEVICES=""  # XML put into <devices> by guest_xml (cdroms, ...)
GUEST_SEQS=()           # /seq of each image of the last guest_check
GUEST_SCRATCH=""        # the last guest_scratch copy
GUEST_RECOVERED=""      # yes if its journal needed a replay
GUEST_BUILDER=$IT_ROOT/tests/guest/build.sh
GUEST_CACHE=""          # the build cache (where the KVM verdict is kept)
GUEST_VIRT_TYPE=""      # kvm or qemu: the guests' domain type (guest_virt_type)

# guest_init — after it_init: get the test guest (built once and cached by
# tests/guest/build.sh) and copy vmlinuz and initrd.img into $T/guest
# (libvirt relabels the kernel and initrd a domain boots: every test has
# its own copies). Skips the test (77) when this host cannot build the
# guest (not Debian 12 amd64 with apt, or offline with nothing cached);
# fails when a host tool is missing or the build fails. Sets GUEST_DIR and
# GUEST_BUILD_S.
guest_init() {
  local t rc=0 t0
  if [ -z "$T" ] || [ ! -d "$T" ]; then it_fail "guest_init: call it_init first"; fi
  for t in mkfs.ext4 e2fsck fsck.ext4 debugfs dumpe2fs sha256sum; do
    command -v "$t" >/dev/null 2>&1 || it_fail "$t is not installed (e2fsprogs; run scripts/deps.sh)"
  done
  GUEST_DIR=$T/guest
  t0=$(it_now_ms)
  bash "$GUEST_BUILDER" --into "$GUEST_DIR" >"$T/guest-build.out" 2>"$T/guest-build.log" || rc=$?
  GUEST_BUILD_S=$(awk -v ms="$(($(it_now_ms) - t0))" 'BEGIN { printf "%.1f", ms / 1000 }')
  sed 's/^/  /' "$T/guest-build.log" >&2
  [ "$rc" -ne 77 ] || it_skip "no test guest: $(sed -n 's/.*SKIP: //p' "$T/guest-build.log" | tail -n 1)"
  [ "$rc" -eq 0 ] || it_fail "tests/guest/build.sh failed (status $rc)"
  chmod 0755 "$GUEST_DIR"
  chmod 0644 "$GUEST_DIR"/*
  GUEST_CACHE=$(dirname "$(cat "$T/guest-build.out")")
  it_log "test guest from $(cat "$T/guest-build.out") ($(sed -n 's/^kernel //p' "$GUEST_DIR/manifest")) in ${GUEST_BUILD_S}s"
  guest_virt_type >/dev/null
}

# guest_virt_type — the guests' domain type: it_virt_type's, except where
# that is kvm by itself (CHAINFS_VIRT_TYPE unset) and KVM does not run
# the guest on this host: some nested KVM hosts leave the vCPU looping in
# SeaBIOS, so a guest never prints a byte (the OS-less test domains do not
# notice). The first test on such a host boots the kernel once under KVM
# (_guest_kvm_probe, at most 30 s) and keeps the verdict in the guest
# cache ($GUEST_CACHE/kvm-verdict, per host kernel, QEMU version and guest
# kernel); where KVM failed, guests run under TCG and the test log says
# so. CHAINFS_VIRT_TYPE=kvm insists (no probe, no fallback). Call it in
# the test's shell (it sets GUEST_VIRT_TYPE, guest_init calls it); prints
# the type.
guest_virt_type() {
  local t id verdict f
  if [ -z "$GUEST_VIRT_TYPE" ]; then
    t=$(it_virt_type)
    if [ "$t" = kvm ] && [ -z "${CHAINFS_VIRT_TYPE:-}" ]; then
      id="$(uname -r) $(qemu-system-x86_64 --version 2>/dev/null | head -n 1 | tr -d '()' | tr ' ' _) $(sed -n 's/^kernel //p' "$GUEST_DIR/manifest")"
      f=$GUEST_CACHE/kvm-verdict
      verdict=""
      [ ! -f "$f" ] || verdict=$(awk -v id="$id" '{ v = $NF; $NF = ""; sub(/ $/, ""); if ($0 == id) print v }' "$f" | tail -n 1)
      if [ -z "$verdict" ]; then
        IT_DOMAINS+=("$IT_PREFIX-kvmprobe") # it_cleanup's, if the probe is interrupted
        verdict=$(_guest_kvm_probe)
        printf '%s %s\n' "$id" "$verdict" >>"$f"
        it_log "KVM probe: the guest's kernel under KVM: $verdict (kept in $f)"
      fi
      if [ "$verdict" != ok ]; then
        it_log "KVM does not boot the test guest on this host (the vCPU stays in the firmware; $f): guests run under TCG here (CHAINFS_VIRT_TYPE=kvm insists on KVM)"
        t=qemu
      fi
    fi
    GUEST_VIRT_TYPE=$t
  fi
  printf '%s\n' "$GUEST_VIRT_TYPE"
}

# _guest_kvm_probe — boot the guest's kernel once under KVM (a transient
# domain $IT_PREFIX-kvmprobe, no disks, kernel messages on) and print ok
# if it says anything on its console within 30 s, else broken. Runs in a
# $(...): the caller puts the name into IT_DOMAINS.
_guest_kvm_probe() {
  local name=$IT_PREFIX-kvmprobe c=$T/kvmprobe.console i verdict=broken
  : >"$c"
  cat >"$T/kvmprobe.xml" <<XML
<domain type='kvm'>
  <name>$name</name>
  <memory unit='MiB'>$GUEST_MEMORY_MIB</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_DIR/vmlinuz</kernel><initrd>$GUEST_DIR/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><serial type='file'><source path='$c'/><target port='0'/></serial></devices>
</domain>
XML
  if it_virsh create "$T/kvmprobe.xml" >/dev/null 2>&1; then
    for ((i = 0; i < 150; i++)); do
      if grep -aq 'Linux version' "$c"; then
        verdict=ok
        break
      fi
      sleep 0.2
    done
    it_virsh destroy "$name" >/dev/null 2>&1 || true
  fi
  echo "$verdict"
}

# guest_disk FILE [SIZE] — a new qcow2 image FILE (SIZE as qemu-img takes
# it, default 64M) holding an empty ext4 filesystem made on the host (the
# guest has no mkfs): mkfs.ext4 on a raw scratch file, converted.
guest_disk() {
  local f=$1 size=${2:-64M} raw
  raw=$f.mkfs.raw
  rm -f "$raw"
  truncate -s "$size" "$raw" || it_fail "truncate $raw"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$raw" >/dev/null 2>&1 ||
    it_fail "mkfs.ext4 $raw"
  "${IT_IMG_RUN[@]}" qemu-img convert -f raw -O qcow2 "$raw" "$f" || it_fail "qemu-img convert $raw $f"
  rm -f "$raw"
}

# guest_console DOM — the path of DOM's serial console file.
guest_console() { printf '%s\n' "$T/$1.console"; }

# guest_xml NAME FILE... — the guest's domain XML (design §1.4): 256 MiB
# (GUEST_MEMORY_MIB), 1 vCPU, type from guest_virt_type, direct kernel boot
# of $GUEST_DIR, one virtio disk per FILE (vda, vdb, ...; the workload
# uses all of them, in this order), the serial console appended to
# $T/NAME.console, the agent channel org.qemu.guest_agent.0, and
# GUEST_EXTRA_DEVICES (disks the workload must not touch, ...).
guest_xml() {
  local name=$1 f fmt letters=abcdefghij i=0 disks=""
  shift
  for f in "$@"; do disks="${disks:+$disks,}vd${letters:i:1}"; i=$((i + 1)); done
  printf "<domain type='%s'>\n" "$(guest_virt_type)"
  printf '  <name>%s</name>\n' "$name"
  printf "  <memory unit='MiB'>%s</memory>\n  <vcpu>1</vcpu>\n" "$GUEST_MEMORY_MIB"
  printf "  <os><type arch='x86_64' machine='pc'>hvm</type>\n"
  printf '    <kernel>%s/vmlinuz</kernel><initrd>%s/initrd.img</initrd>\n' "$GUEST_DIR" "$GUEST_DIR"
  printf '    <cmdline>console=ttyS0 panic=-1 quiet chainfs.disks=%s</cmdline></os>\n' "$disks"
  printf "  <features><acpi/></features>\n"
  printf "  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\n"
  printf '  <devices>\n'
  i=0
  for f in "$@"; do
    fmt=$(it_image_format "$f")
    printf "    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='vd%s' bus='virtio'/></disk>\n" \
      "$fmt" "$f" "${letters:i:1}"
    i=$((i + 1))
  done
  printf "    <serial type='file'><source path='%s' append='on'/><target port='0'/></serial>\n" "$T/$name.console"
  printf "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n"
  [ -z "$GUEST_EXTRA_DEVICES" ] || printf '%s\n' "$GUEST_EXTRA_DEVICES"
  printf '  </devices>\n</domain>\n'
}

# guest_define NAME FILE... — define (shut off) the guest NAME (prefix
# $IT_PREFIX-) with disks vda, vdb, ... on FILEs (ext4 images from
# guest_disk); destroyed and undefined at exit like it_define's domains.
guest_define() {
  local name=$1
  [ -n "$GUEST_DIR" ] || it_fail "guest_define: call guest_init first"
  case "$name" in "$IT_PREFIX"-*) ;; *) it_fail "domain name $name lacks prefix $IT_PREFIX-" ;; esac
  guest_xml "$@" >"$T/$name.xml"
  : >>"$T/$name.console"
  IT_DOMAINS+=("$name")
  it_virsh define "$T/$name.xml" >/dev/null || it_fail "virsh define $name"
}

# _guest_count DOM REGEX — how many console lines match REGEX (ERE).
_guest_count() {
  tr -d '\r' <"$(guest_console "$1")" | grep -acE "$2" || true
}

# guest_start DOM [TIMEOUT] — virsh start, then guest_wait_ready for this
# boot's READY line. Sets GUEST_BOOT_S (start to READY) and GUEST_PING_S
# (start to guest-ping) and logs them.
guest_start() {
  local dom=$1 before t0
  before=$(_guest_count "$dom" '^READY ')
  t0=$(it_now_ms)
  it_start "$dom"
  guest_wait_ready "$dom" "${2:-$GUEST_BOOT_TIMEOUT}" "$before" "$t0"
}

# guest_wait_ready DOM [TIMEOUT] [READY_BEFORE] [T0_MS] — wait (TIMEOUT s,
# default GUEST_BOOT_TIMEOUT) until the console has more than READY_BEFORE
# (default 0) READY lines and guest-ping answers. Fails at once, showing
# the console's tail, if the guest prints FAIL or the domain stops.
guest_wait_ready() {
  local dom=$1 timeout=${2:-$GUEST_BOOT_TIMEOUT} before=${3:-0} t0=${4:-$(it_now_ms)} deadline ready=""
  deadline=$((t0 + timeout * 1000))
  while :; do
    if [ -z "$ready" ] && [ "$(_guest_count "$dom" '^READY ')" -gt "$before" ]; then
      ready=$(it_now_ms)
      GUEST_BOOT_S=$(awk -v ms="$((ready - t0))" 'BEGIN { printf "%.1f", ms / 1000 }')
    fi
    if [ -n "$ready" ] && guest_ping "$dom"; then
      GUEST_PING_S=$(awk -v ms="$(($(it_now_ms) - t0))" 'BEGIN { printf "%.1f", ms / 1000 }')
      break
    fi
    if [ "$(_guest_count "$dom" '^FAIL ')" -gt 0 ] || [ "$(it_state "$dom")" != running ]; then
      _guest_tail "$dom"
      it_fail "guest $dom stopped or failed while booting ($(it_state "$dom"))"
    fi
    if [ "$(it_now_ms)" -ge "$deadline" ]; then
      _guest_tail "$dom"
      it_fail "guest $dom: no ${ready:+guest-ping answer after }READY within ${timeout}s"
    fi
    sleep 0.2
  done
  it_log "guest $dom ready: READY after ${GUEST_BOOT_S}s, guest-ping after ${GUEST_PING_S}s ($(tr -d '\r' <"$(guest_console "$dom")" | grep -a '^READY ' | tail -n 1))"
}

# _guest_tail DOM — the console's last lines, on stderr.
_guest_tail() {
  echo "[$IT_NAME] ---- console of $1 (last 30 lines) ----" >&2
  tr -d '\r' <"$(guest_console "$1")" | tail -n 30 >&2
  echo "[$IT_NAME] ---- end of console ----" >&2
}

# guest_agent_cmd DOM JSON [TIMEOUT] — virsh qemu-agent-command (libvirt
# waits at most TIMEOUT s, default 5); prints the reply, returns virsh's
# status. (It taints the domain custom-ga-command: test domains only.)
guest_agent_cmd() {
  it_virsh qemu-agent-command "$1" "$2" --timeout "${3:-5}"
}

# guest_ping DOM — status 0 if the guest agent answers guest-ping.
guest_ping() {
  [ "$(guest_agent_cmd "$1" '{"execute":"guest-ping"}' 2 2>/dev/null | tr -d ' \n')" = '{"return":{}}' ]
}

# guest_wait_agent DOM [TIMEOUT] — wait (default 30 s) until guest-ping
# answers again (after guest_agent_kill DOM S).
guest_wait_agent() {
  it_wait_until "${2:-30}" "the agent of $1 answers guest-ping" guest_ping "$1"
  it_log "the agent of $1 answers"
}

# guest_fsfreeze_status DOM — "frozen" or "thawed" as the agent says
# (guest-fsfreeze-status); fails the test if the agent does not answer.
guest_fsfreeze_status() {
  local out
  out=$(guest_agent_cmd "$1" '{"execute":"guest-fsfreeze-status"}') || it_fail "guest-fsfreeze-status on $1: $out"
  jq -r '.return' <<<"$out"
}

# guest_exec DOM SHELL_COMMAND — run SHELL_COMMAND with /bin/sh -c in the
# guest through the agent (guest-exec), wait (10 s) for it to end, print
# its stdout; fails the test unless it exits 0.
guest_exec() {
  local dom=$1 req out pid st i
  req=$(jq -cn --arg c "$2" '{execute: "guest-exec", arguments: {path: "/bin/sh", arg: ["-c", $c], "capture-output": true}}')
  out=$(guest_agent_cmd "$dom" "$req") || it_fail "guest-exec on $dom: $out"
  pid=$(jq -r '.return.pid' <<<"$out")
  for ((i = 0; i < 100; i++)); do
    st=$(guest_agent_cmd "$dom" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}") ||
      it_fail "guest-exec-status on $dom: $st"
    [ "$(jq -r '.return.exited' <<<"$st")" = true ] && break
    sleep 0.1
  done
  [ "$(jq -r '.return.exited' <<<"$st")" = true ] || it_fail "guest $dom: '$2' still runs after 10 s"
  [ "$(jq -r '.return.exitcode' <<<"$st")" = 0 ] ||
    it_fail "guest $dom: '$2' exited $(jq -r '.return.exitcode' <<<"$st"): $(jq -r '.return["err-data"] // ""' <<<"$st" | base64 -d 2>/dev/null)"
  jq -r '.return["out-data"] // ""' <<<"$st" | base64 -d
}

# guest_agent_kill DOM [BACK_AFTER_S] — kill qemu-ga in the guest (SIGKILL:
# its port closes and libvirt answers "QEMU guest agent is not
# connected"); waits until guest-ping fails (10 s). With BACK_AFTER_S the
# guest starts it again that many seconds after the kill
# (guest_wait_agent waits for it).
guest_agent_kill() {
  local dom=$1 req out
  req=$(jq -cn --arg s "${2:-}" '{execute: "guest-exec", arguments: {path: "/sbin/agent", arg: (["kill"] + (if $s == "" then [] else [$s] end))}}')
  out=$(guest_agent_cmd "$dom" "$req") || it_fail "guest-exec agent kill on $dom: $out"
  it_wait_until 10 "the agent of $dom stops answering" sh -c "! virsh -q -c '$IT_URI' qemu-agent-command '$dom' '{\"execute\":\"guest-ping\"}' --timeout 2"
  it_log "the agent of $dom is killed${2:+ (back in $2 s)}"
}

# guest_hook_hang DOM S — the next freeze's hook sleeps S seconds before it
# pauses the workload (a hung agent, for one freeze; 0 cancels it). The
# console shows "HANG <count> S" when it starts sleeping.
guest_hook_hang() {
  if [ "$2" = 0 ]; then
    guest_exec "$1" 'rm -f /run/hang-freeze' >/dev/null
  else
    guest_exec "$1" "echo $2 >/run/hang-freeze" >/dev/null
  fi
  it_log "the next freeze of $1 hangs ${2}s"
}

# guest_destroy DOM — virsh destroy (the guest's data is fsynced: the test
# wants the images as a crash leaves them).
guest_destroy() { it_destroy "$1"; }

# guest_lines DOM — the files the guest's disk should hold as its console
# tells: "<n> <sha256>" for each workload line ("\r" stripped, an
# unfinished last line dropped), the last line for each n, sorted by n. A
# READY line with start=S drops every earlier line with n >= S (the guest
# booted on a disk whose seq was S-1, after a revert or a crash between a
# line and its seq: those files are gone or about to be written again).
guest_lines() {
  local c
  c=$(guest_console "$1")
  {
    if [ -n "$(tail -c 1 "$c")" ]; then
      sed '$d' "$c"
    else
      cat "$c"
    fi
  } | tr -d '\r' | awk '
    /^[0-9]+ [0-9a-f]+$/ && length($2) == 64 { s[$1 + 0] = $2; next }
    /^READY / {
      for (i = 2; i <= NF; i++)
        if ($i ~ /^start=[0-9]+$/) {
          st = substr($i, 7) + 0
          for (n in s) if (n + 0 >= st) delete s[n]
        }
    }
    END { for (n in s) print n, s[n] }' | LC_ALL=C sort -n
}

# guest_last_n DOM — the highest file number in guest_lines; 0 if none.
guest_last_n() {
  guest_lines "$1" | awk 'END { print NR ? $1 : 0 }'
}

# guest_wait_n DOM N [TIMEOUT] — wait (default 60 s) until the workload
# reported file N (the last line's number is at least N).
guest_wait_n() {
  it_wait_until "${3:-60}" "guest $1 reports file $2" _guest_n_at_least "$1" "$2"
}
_guest_n_at_least() { [ "$(guest_last_n "$1")" -ge "$2" ]; }

# guest_wait_more DOM K [TIMEOUT] — wait (default 60 s) until the workload
# reported K more files than now: it is still writing.
guest_wait_more() {
  local n
  n=$(guest_last_n "$1")
  guest_wait_n "$1" $((n + $2)) "${3:-60}"
}

# guest_freezes DOM — how many FREEZE lines the fsfreeze hook printed (each
# agent freeze counts once; a hook that hung prints it when it is done).
guest_freezes() { _guest_count "$1" '^FREEZE [0-9]+'; }

# guest_thaws DOM — how many THAW lines the hook printed.
guest_thaws() { _guest_count "$1" '^THAW [0-9]+'; }

# guest_n_at_freeze DOM K — the last file number the workload reported
# before the K-th FREEZE line (the workload is paused between iterations
# when the hook prints it: a quiesced snapshot taken in that freeze holds
# exactly files 1..n and seq n on every disk). Empty if no K-th FREEZE.
guest_n_at_freeze() {
  tr -d '\r' <"$(guest_console "$1")" | awk -v k="$2" '
    /^[0-9]+ [0-9a-f]+$/ { n = $1 }
    /^FREEZE [0-9]+/ { if (++f == k) { print n + 0; exit } }'
}

# guest_scratch IMAGE — a raw scratch copy of IMAGE's whole chain in $T
# (qemu-img convert -U: the image may be in use) with its ext4 journal
# replayed (e2fsck -E journal_only): debugfs and fsck -n do not replay it,
# and a crash-consistent image holds its last fsynced writes only there
# (design §0.1). Sets GUEST_SCRATCH to the copy's path (the caller
# removes it) and GUEST_RECOVERED to yes if the journal needed a replay,
# else no. Not in a $(...): it sets variables.
guest_scratch() {
  local img=$1 s rc=0
  s=$(mktemp "$T/scratch.XXXXXX")
  "${IT_IMG_RUN[@]}" qemu-img convert -U -O raw "$img" "$s" || it_fail "qemu-img convert -U $(it_short "$img")"
  GUEST_RECOVERED=no
  if dumpe2fs -h "$s" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
    GUEST_RECOVERED=yes
  fi
  e2fsck -E journal_only -y "$s" >"$s.replay" 2>&1 || rc=$?
  if [ "$rc" -ge 4 ]; then
    cat "$s.replay" >&2
    it_fail "journal replay of $(it_short "$img") failed (e2fsck status $rc)"
  fi
  rm -f "$s.replay"
  GUEST_SCRATCH=$s
}

# _guest_read_seq SCRATCH — /seq of a replayed scratch copy, as a number.
_guest_read_seq() {
  local v
  v=$(debugfs -R 'cat /seq' "$1" 2>/dev/null | tr -d '\n')
  [[ "$v" =~ ^[0-9]+$ ]] || return 1
  echo $((10#$v))
}

# guest_seq IMAGE — the lockstep sequence number in IMAGE (a frozen layer,
# or any chain) after replaying its journal on a scratch copy.
guest_seq() {
  local s v
  guest_scratch "$1"
  s=$GUEST_SCRATCH
  v=$(_guest_read_seq "$s") || { rm -f "$s"; it_fail "no /seq in $(it_short "$1")"; }
  rm -f "$s"
  printf '%s\n' "$v"
}

# guest_check [--upto N] [--exact] DOM IMAGE... — the images of DOM's disks
# in guest_define's order (vda's first; each a chain's top, e.g. after
# guest_destroy, or a frozen layer), each checked on a replayed scratch
# copy (guest_scratch):
#   - fsck.ext4 -fn is clean;
#   - every file DOM's console reported (with --upto, those up to N) is in
#     the first image with its sha256 (debugfs rdump, no mount);
#   - with --exact, the first image holds no other f.<n> (a quiesced image:
#     the workload paused between iterations);
#   - the lockstep holds: seq of each image is its predecessor's or one
#     less, and the first image's seq is at least N - 1 (N: the last file
#     reported, or --upto's).
# Sets GUEST_SEQS (each image's seq). Fails the test on any difference.
guest_check() {
  local upto="" exact="" dom img s i=0 seq prev="" out want have bad
  while :; do
    case "${1:-}" in
      --upto) upto=$2; shift 2 ;;
      --exact) exact=1; shift ;;
      *) break ;;
    esac
  done
  dom=$1
  shift
  [ "$#" -ge 1 ] || it_fail "guest_check: no image"
  want=$T/check.want
  guest_lines "$dom" | awk -v u="$upto" 'u == "" || $1 <= u + 0 { print "f." $1, $2 }' | LC_ALL=C sort >"$want"
  [ -n "$upto" ] || upto=$(guest_last_n "$dom")
  GUEST_SEQS=()
  for img in "$@"; do
    guest_scratch "$img"
    s=$GUEST_SCRATCH
    out=$(fsck.ext4 -fn "$s" 2>&1) || {
      printf '%s\n' "$out" >&2
      rm -f "$s"
      it_fail "fsck.ext4 -fn of $(it_short "$img") (journal replayed) is not clean"
    }
    seq=$(_guest_read_seq "$s") || { rm -f "$s"; it_fail "no /seq in $(it_short "$img")"; }
    GUEST_SEQS+=("$seq")
    if [ "$i" -eq 0 ]; then
      out=$T/check.rdump
      rm -rf "$out"
      mkdir "$out"
      debugfs -R "rdump / $out" "$s" >/dev/null 2>&1 || { rm -f "$s"; it_fail "debugfs rdump of $(it_short "$img")"; }
      have=$T/check.have
      (cd "$out" && find . -maxdepth 1 -name 'f.*' -printf '%f\0' | xargs -0 -r sha256sum) |
        awk '{ print $2, $1 }' | LC_ALL=C sort >"$have"
      bad=$(LC_ALL=C join -a 1 -e MISSING -o 0,1.2,2.2 "$want" "$have" | awk '$2 != $3' | sort -t. -k2 -n)
      if [ -n "$bad" ]; then
        printf '%s\n' "$bad" | head -n 20 | sed 's/^/  file want have: /' >&2
        rm -rf "$s" "$out"
        it_fail "$(printf '%s\n' "$bad" | wc -l) of $(wc -l <"$want") reported files missing or different in $(it_short "$img")"
      fi
      if [ -n "$exact" ]; then
        bad=$(LC_ALL=C join -v 2 "$want" "$have" | cut -d' ' -f1 | sort -t. -k2 -n | tr '\n' ' ')
        [ -z "$bad" ] || { rm -rf "$s" "$out"; it_fail "$(it_short "$img") holds files the console did not report up to $upto: $bad"; }
      fi
      rm -rf "$out"
      [ "$seq" -ge $((upto - 1)) ] ||
        { rm -f "$s"; it_fail "$(it_short "$img"): seq $seq, but file $upto was reported (seq >= $((upto - 1)) expected)"; }
      it_log "ok: $(it_short "$img"): fsck clean (journal replayed: $GUEST_RECOVERED), $(wc -l <"$want") reported files intact${exact:+ and no other}, seq $seq"
    else
      if [ "$seq" -ne "$prev" ] && [ "$seq" -ne $((prev - 1)) ]; then
        rm -f "$s"
        it_fail "$(it_short "$img"): seq $seq, the disk before it $prev: the lockstep is broken"
      fi
      it_log "ok: $(it_short "$img"): fsck clean (journal replayed: $GUEST_RECOVERED), seq $seq"
    fi
    prev=$seq
    rm -f "$s"
    i=$((i + 1))
  done
}

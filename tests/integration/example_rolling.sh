#!/usr/bin/env bash
# example_rolling.sh — examples/rolling-snapshots.sh and its systemd units
# against a running two-disk domain (no OS; the guest's writes are HMP
# qemu-io on each disk's virtio backend), a distinct pattern written into
# the active layer of both disks before every run:
#
#   1. three runs with KEEP=3, then one with KEEP=2: exactly the newest
#      two of its own remain (two domain-level rmdirs in one run, waited
#      for); snapshots it did not make are never touched: a domain-level
#      `manual`, a domain-level `rolling-keep` (its prefix, no timestamp)
#      and a disk-level `rolling-20000101T000000Z` on vda (its prefix and
#      pattern, the oldest name of all, but taken at the other level);
#   2. a refusal: the oldest one's disk.raw held open, its rmdir is EBUSY:
#      exit 1 with the errno's text, the new snapshot still taken, the
#      held one kept;
#   3. the lock: held by someone else, -W 0 exits 75 and changes nothing;
#      a run started meanwhile says it waits, takes no snapshot until the
#      lock is let go, then runs; two runs alive at once (both waiting
#      on the lock, then let go together) both succeed, one after the
#      other: distinct names, and each prunes a different one;
#   4. -d on one disk (DOMAIN/DISK), KEEP=1: disk-level snapshots of that
#      disk only, the older one merged away; -d on the whole domain: vda
#      and vdb each get their own, the cdrom (hdc, with media) is skipped
#      saying why; the cdrom named (DOMAIN/hdc): EROFS, exit 1;
#   5. the shipped units: `systemd-analyze verify` of the timer and the
#      service with ExecStart pointing at the script in this tree, and the
#      service's ExecStart run by hand (restricted to the test's domain);
#   6. a last run with KEEP=2; then every pattern reads back from both
#      disks' active chains, the oldest kept snapshot's point in time holds
#      the writes before it and none after, every file of the overlay
#      directory is in a chain (no leftover), each chain is its base plus
#      one layer per snapshot listed, and libvirt's metadata lists exactly
#      the snapshots the tree shows.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
command -v flock >/dev/null 2>&1 || it_skip "flock (util-linux) is not installed"

ROLL="$IT_ROOT/examples/rolling-snapshots.sh"
UNITS="$IT_ROOT/examples/systemd"
D="$IT_PREFIX-roll"
LOCK="$T/rolling.lock"
M=1048576

it_make_image "$T/vda.qcow2" 128M
it_make_image "$T/vdb.qcow2" 128M
it_write_pattern "$T/vda.qcow2" 0x10 0 4M
it_write_pattern "$T/vdb.qcow2" 0x20 0 4M
# and a cdrom with media (hdc): a disk of the tree that cannot have a snapshot
qemu-img create -q -f raw "$T/media.iso" 4M || it_fail "qemu-img create media.iso"
it_domain_xml "$D" "$T/vda.qcow2" "$T/vdb.qcow2" |
  sed "s|  </devices>|    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$T/media.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>\n  </devices>|" >"$T/$D.xml"
IT_DOMAINS+=("$D")
it_virsh define "$T/$D.xml" >/dev/null || it_fail "virsh define $D"
it_start "$D"
it_mount
it_wait_dom "$D"

# the patterns written so far: "pattern offset" per disk
declare -A written=([vda]="0x10 0" [vdb]="0x20 0")
# put I — the guest writes 0x3I at I*4M on vda and 0x4I on vdb (I: 1-9, a-f)
put() {
  it_guest_write "$D" "0x3$1" "$((16#$1 * 4))M" 4M virtio-disk0
  it_guest_write "$D" "0x4$1" "$((16#$1 * 4))M" 4M virtio-disk1
  written[vda]+=" 0x3$1 $((16#$1 * 4 * M))"
  written[vdb]+=" 0x4$1 $((16#$1 * 4 * M))"
}

# roll OUT ARGS... — run the script (lock in $T, the test's domain only
# unless ARGS names it); OUT gets stdout, OUT.err stderr; prints the status
roll() {
  local out=$1 rc=0
  shift
  bash "$ROLL" -L "$LOCK" "$@" >"$out" 2>"$out.err" 8>&- || rc=$?
  sed 's/^/  | /' "$out" "$out.err" >&2
  echo "$rc"
}
# taken OUT — the name the run printed as taken
taken() { sed -n 's/^[^ ]*: snapshot \([^ ]*\) taken (quiesced: .*)$/\1/p' "$1" | head -n 1; }
# pruned OUT — the names the run printed as merged away from the domain
pruned() { sed -n "s/^$D: \(.*\) merged away\$/\1/p" "$1"; }
# own — the domain's rolling-<timestamp> snapshots, sorted
own() { it_ls "$MNT/$D/snapshots" | tr ' ' '\n' | grep -E '^rolling-[0-9]{8}T[0-9]{6}Z$' | grep -v '^rolling-2000' | tr '\n' ' ' | sed 's/ $//'; }
others_kept() {
  local s
  for s in manual rolling-keep; do
    [ -d "$MNT/$D/snapshots/$s" ] || it_fail "$1: the domain-level snapshot $s (not the script's) is gone"
    if [ ! -d "$MNT/$D/vda/snapshots/$s" ] || [ ! -d "$MNT/$D/vdb/snapshots/$s" ]; then
      it_fail "$1: $s left a disk's snapshots/"
    fi
  done
  [ -d "$MNT/$D/vda/snapshots/rolling-20000101T000000Z" ] ||
    it_fail "$1: vda's disk-level rolling-20000101T000000Z (not the script's) is gone"
  it_log "ok: $1: manual, rolling-keep and vda's rolling-20000101T000000Z are there"
}

# ---- 1. KEEP=3 three times, then KEEP=2 ------------------------------------------
mkdir "$MNT/$D/snapshots/manual" || it_fail "mkdir $D/snapshots/manual"
mkdir "$MNT/$D/vda/snapshots/rolling-20000101T000000Z" || it_fail "mkdir vda/snapshots/rolling-20000101T000000Z"
mkdir "$MNT/$D/snapshots/rolling-keep" || it_fail "mkdir $D/snapshots/rolling-keep"
it_assert_eq disk "$(jq -r .scope "$MNT/$D/snapshots/rolling-20000101T000000Z/info.json")" \
  "the domain's info.json says rolling-20000101T000000Z was taken at disk level"

names=()
for i in 1 2 3; do
  put "$i"
  it_assert_eq 0 "$(roll "$T/r$i" "$MNT" 3 "$D")" "run $i (KEEP=3) exits 0"
  n=$(taken "$T/r$i")
  [ -n "$n" ] || it_fail "run $i printed no snapshot taken"
  names+=("$n")
  it_assert_contains "$(cat "$T/r$i")" "$D: snapshot $n taken (quiesced: no)" "run $i: its snapshot, not quiesced (no agent)"
  it_assert_eq "" "$(grep 'merged away' "$T/r$i" || true)" "run $i merged nothing (KEEP=3)"
done
it_assert_eq "${names[*]}" "$(own)" "three rolling snapshots after three runs"
[[ "${names[0]}" < "${names[1]}" && "${names[1]}" < "${names[2]}" ]] || it_fail "names do not sort by time: ${names[*]}"
it_assert_eq "domain" "$(jq -r .scope "$MNT/$D/snapshots/${names[0]}/info.json")" "the script's snapshots are domain-level"
it_assert_eq "hdc cdrom" "$(jq -r '.excluded[] | "\(.disk) \(.why)"' "$MNT/$D/snapshots/${names[0]}/info.json")" \
  "the domain-level snapshot left the cdrom out"
others_kept "KEEP=3"

put 4
it_assert_eq 0 "$(roll "$T/r4" "$MNT" 2 "$D")" "run 4 (KEEP=2) exits 0"
names+=("$(taken "$T/r4")")
for n in "${names[0]}" "${names[1]}"; do
  it_assert_contains "$(cat "$T/r4")" "$D: $n merged away" "run 4 merged $n away (and waited for it)"
  if [ -e "$MNT/$D/vda/snapshots/$n" ] || [ -e "$MNT/$D/vdb/snapshots/$n" ]; then
    it_fail "$n is still on a disk"
  fi
done
it_assert_eq "${names[2]} ${names[3]}" "$(own)" "the newest two remain after KEEP=2"
for disk in vda vdb; do
  it_assert_eq "completed 0" "$(jq -r '"\(.state) \(.queue | length)"' "$MNT/$D/$disk/job.json")" \
    "$disk: its last merge completed, none queued, once the run returned"
done
others_kept "KEEP=2"

# ---- 2. a refusal: the oldest one's disk.raw is open ------------------------------
put 5
exec 3<"$MNT/$D/vda/snapshots/${names[2]}/disk.raw" || it_fail "open ${names[2]}/disk.raw"
it_assert_eq 1 "$(roll "$T/r5" "$MNT" 2 "$D")" "run 5 exits 1 when a prune is refused"
names+=("$(taken "$T/r5")")
[ -n "${names[4]}" ] || it_fail "run 5 took no snapshot"
it_assert_contains "$(cat "$T/r5.err")" "$D: rmdir of ${names[2]} refused: Device or resource busy" \
  "run 5 names the refused rmdir and the errno"
exec 3<&-
it_assert_eq "${names[2]} ${names[3]} ${names[4]}" "$(own)" "the held snapshot is kept, the new one taken"
no_readers() { [ "$(jq '.readers | length' "$MNT/$D/vda/job.json")" = 0 ]; }
it_wait_until 10 "the reader of disk.raw is gone from vda's job" no_readers

# ---- 3. the lock --------------------------------------------------------------------
exec 8<>"$LOCK"
flock 8 || it_fail "flock $LOCK"
it_assert_eq 75 "$(roll "$T/r6w" -W 0 "$MNT" 2 "$D")" "-W 0 exits 75 while the lock is held"
it_assert_contains "$(cat "$T/r6w.err")" "another run holds $LOCK; not waiting (-W 0)" "-W 0 says why"
it_assert_eq "${names[2]} ${names[3]} ${names[4]}" "$(own)" "-W 0 changed nothing"
bash "$ROLL" -L "$LOCK" "$MNT" 2 "$D" >"$T/r6" 2>"$T/r6.err" 8>&- &
waiting=$!
it_wait_until 10 "the run says it waits for the lock" grep -q '^waiting for another run' "$T/r6"
sleep 1.5
kill -0 "$waiting" 2>/dev/null || it_fail "the run did not wait for the lock"
it_assert_eq "${names[2]} ${names[3]} ${names[4]}" "$(own)" "no snapshot while another run holds the lock"
flock -u 8
exec 8>&-
rc=0
wait "$waiting" || rc=$?
sed 's/^/  | /' "$T/r6" "$T/r6.err" >&2
it_assert_eq 0 "$rc" "the waiting run ran once the lock was let go"
names+=("$(taken "$T/r6")")
it_assert_eq "${names[4]} ${names[5]}" "$(own)" "the run after the wait pruned to two"

put 6
# Two runs alive at once. Started bare, the second may reach its flock
# only after the first has ended (CI, a loaded machine: it then never
# waits, and nothing overlapped); so the test holds the lock until both
# have said they wait, then lets both go at once: one takes the lock,
# the other waits on it.
exec 8<>"$LOCK"
flock 8 || it_fail "flock $LOCK"
bash "$ROLL" -L "$LOCK" "$MNT" 2 "$D" >"$T/r7a" 2>"$T/r7a.err" 8>&- &
a=$!
bash "$ROLL" -L "$LOCK" "$MNT" 2 "$D" >"$T/r7b" 2>"$T/r7b.err" 8>&- &
b=$!
both_wait() { grep -q '^waiting for another run' "$T/r7a" && grep -q '^waiting for another run' "$T/r7b"; }
it_wait_until 20 "both runs say they wait for the lock" both_wait
it_assert_eq "${names[4]} ${names[5]}" "$(own)" "no snapshot while both wait"
flock -u 8
exec 8>&-
ra=0 rb=0
wait "$a" || ra=$?
wait "$b" || rb=$?
sed 's/^/  a| /' "$T/r7a" "$T/r7a.err" >&2
sed 's/^/  b| /' "$T/r7b" "$T/r7b.err" >&2
it_assert_eq "0 0" "$ra $rb" "two runs alive at once both exit 0"
na=$(taken "$T/r7a") nb=$(taken "$T/r7b")
if [ -z "$na" ] || [ -z "$nb" ] || [ "$na" = "$nb" ]; then
  it_fail "the two runs did not take two distinct snapshots: '$na' '$nb'"
fi
# One after the other: the first (the older name) saw ${names[4]},
# ${names[5]} and its own and pruned ${names[4]}; the second saw the
# first's and pruned ${names[5]}. Had they overlapped, both would have
# pruned ${names[4]} (or the second nothing).
if [[ "$na" < "$nb" ]]; then first=r7a second=r7b; else first=r7b second=r7a; fi
it_assert_eq "${names[4]}" "$(pruned "$T/$first")" \
  "the first run pruned ${names[4]}"
it_assert_eq "${names[5]}" "$(pruned "$T/$second")" \
  "the second run, after the first had ended, pruned ${names[5]}"
it_log "ok: one run after the other ($na, $nb)"
if [[ "$na" < "$nb" ]]; then names+=("$na" "$nb"); else names+=("$nb" "$na"); fi
it_assert_eq "${names[6]} ${names[7]}" "$(own)" "after both runs, the newest two remain"
others_kept "concurrent runs"

# ---- 4. per disk, one disk ----------------------------------------------------------
it_assert_eq 0 "$(roll "$T/d1" -d -p data "$MNT" 1 "$D/vdb")" "-d run 1 exits 0"
d1=$(taken "$T/d1")
it_assert_contains "$(cat "$T/d1")" "$D/vdb: snapshot $d1 taken" "-d: vdb's own snapshot"
it_assert_eq disk "$(jq -r .scope "$MNT/$D/vdb/snapshots/$d1/info.json")" "-d: a disk-level snapshot"
[ ! -e "$MNT/$D/vda/snapshots/$d1" ] || it_fail "-d $D/vdb took a snapshot of vda"
it_assert_eq 0 "$(roll "$T/d2" -d -p data "$MNT" 1 "$D/vdb")" "-d run 2 exits 0"
d2=$(taken "$T/d2")
it_assert_contains "$(cat "$T/d2")" "$D/vdb: $d1 merged away" "-d KEEP=1: the older one merged away"
[[ "$d1" =~ ^data-vdb-[0-9]{8}T[0-9]{6}Z$ ]] || it_fail "-d: the name $d1 is not data-vdb-<timestamp>"
it_assert_eq "$d2" "$(it_ls "$MNT/$D/vdb/snapshots" | tr ' ' '\n' | grep '^data-' | tr '\n' ' ' | sed 's/ $//')" \
  "-d KEEP=1: vdb keeps its newest data- snapshot"
it_assert_eq "${names[6]} ${names[7]}" "$(own)" "-d with its prefix left the domain's rolling snapshots alone"
# -d on the whole domain: each disk on its own, the cdrom skipped; named, refused
it_assert_eq 0 "$(roll "$T/d3" -d -p all "$MNT" 1 "$D")" "-d on the whole domain (with a cdrom) exits 0"
for disk in vda vdb; do
  grep -Eq "^$D/$disk: snapshot all-$disk-[0-9]{8}T[0-9]{6}Z taken" "$T/d3" ||
    it_fail "-d on the domain: no all-$disk-<timestamp> snapshot of $disk"
  it_log "ok: -d on the domain: $disk's own snapshot, its name with the disk's"
done
a1=$(sed -n "s|^$D/vda: snapshot \(all-vda-[0-9TZ]*\) taken.*|\1|p" "$T/d3")
it_assert_contains "$(cat "$T/d3")" "$D/hdc: skipped: it cannot have a snapshot (" "-d on the domain: the cdrom skipped, saying why"
it_log "  $(grep "hdc: skipped" "$T/d3")"
it_assert_eq 1 "$(roll "$T/d4" -d -p all "$MNT" 1 "$D/hdc")" "-d on the cdrom named: exit 1"
it_assert_contains "$(cat "$T/d4.err")" "$D/hdc: snapshot all-hdc-" "-d on the cdrom: it says which"
it_assert_contains "$(cat "$T/d4.err")" "refused: Read-only file system" "... and the errno"
it_assert_eq "$a1" "$(it_ls "$MNT/$D/vda/snapshots" | tr ' ' '\n' | grep '^all-' | tr '\n' ' ' | sed 's/ $//')" \
  "a refused run pruned nothing of its set"
it_assert_eq "" "$(it_ls "$MNT/$D/hdc/snapshots")" "the cdrom has no snapshot"
it_assert_eq 1 "$(roll "$T/bad" "$MNT" 2 "$IT_PREFIX-nosuch")" "a domain that does not exist: exit 1"
it_assert_contains "$(cat "$T/bad.err")" "no domain $IT_PREFIX-nosuch in $MNT" "... and says so"

# ---- 5. the systemd units -----------------------------------------------------------
u="$T/units"
mkdir -p "$u"
sed "s|/usr/local/sbin/rolling-snapshots.sh|$ROLL|" "$UNITS/chainfs-rolling.service" >"$u/chainfs-rolling.service"
cp "$UNITS/chainfs-rolling.timer" "$u/"
grep -q "^ExecStart=$ROLL " "$u/chainfs-rolling.service" || it_fail "the service's ExecStart is not the script"
man_opt=() page=""
# the page in the tree, or built by meson (beside the chainfs binary's tree)
for f in "$IT_ROOT/docs/man/chainfs.8" "${CHAINFS%/fs/fuse/chainfs}/docs/man/chainfs.8"; do
  [ -f "$f" ] && page=$f && break
done
if [ -n "$page" ]; then
  # the page as installed: MANPATH/man8/chainfs.8
  mkdir -p "$T/man/man8"
  cp "$page" "$T/man/man8/chainfs.8"
  export MANPATH="$T/man"
  it_log "the Documentation= man link checked against $(it_short "$page")"
elif ! man -w 8 chainfs >/dev/null 2>&1; then
  it_log "no chainfs(8) in this tree or installed: the Documentation= man link is not checked"
  man_opt=(--man=no)
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  it_log "no systemd-analyze here: the units are not verified"
else
  out=$(systemd-analyze verify "${man_opt[@]}" "$u/chainfs-rolling.timer" "$u/chainfs-rolling.service" 2>&1) ||
    it_fail "systemd-analyze verify: $out"
  it_assert_eq "" "$out" "systemd-analyze verify of chainfs-rolling.timer and .service is clean"
fi
unset MANPATH
# the service's command line, run by hand as systemd would (the mount
# point and the lock the test's; only the test's domain)
exec_start=$(sed -n 's/^ExecStart=//p' "$u/chainfs-rolling.service")
it_assert_eq "$ROLL /vms 7" "$exec_start" "the service runs rolling-snapshots.sh /vms 7"
read -r -a cmd <<<"$exec_start"
cmd=("${cmd[@]/#\/vms/$MNT}")
put 7
rc=0
"${cmd[0]}" -L "$LOCK" "${cmd[@]:1}" "$D" >"$T/unit" 2>"$T/unit.err" || rc=$?
sed 's/^/  | /' "$T/unit" "$T/unit.err" >&2
it_assert_eq 0 "$rc" "the service's ExecStart exits 0"
new=$(own | tr ' ' '\n' | grep -vxF -e "${names[6]}" -e "${names[7]}")
[ "$(wc -w <<<"$new")" -eq 1 ] || it_fail "the service's ExecStart did not take one snapshot: $(own)"
names+=("$new")

# ---- 6. the last run, the data, the files ----------------------------------------
put 8
it_assert_eq 0 "$(roll "$T/r9" "$MNT" 2 "$D")" "the last run (KEEP=2) exits 0"
names+=("$(taken "$T/r9")")
it_assert_eq "${names[8]} ${names[9]}" "$(own)" "exactly the newest two of its own remain"
others_kept "the end"
put 9

for disk in vda vdb; do
  active=$(it_domblk "$D" "$disk")
  # shellcheck disable=SC2086 # pairs of words
  set -- ${written[$disk]}
  while [ "$#" -gt 0 ]; do
    it_check_pattern "$active" "$1" "$2" 4M
    shift 2
  done
  # the oldest kept snapshot: the writes before it (up to put 7), not after
  frozen=$(jq -r .frozen "$MNT/$D/$disk/snapshots/${names[8]}/info.json")
  # shellcheck disable=SC2086 # pairs of words
  set -- ${written[$disk]}
  while [ "$#" -gt 0 ]; do
    if [ "$2" -le $((7 * 4 * M)) ]; then
      it_check_pattern "$frozen" "$1" "$2" 4M
    else
      it_check_pattern "$frozen" 0x00 "$2" 4M
    fi
    shift 2
  done
done

chains=""
for disk in vda vdb; do
  chain=$(it_chain "$(it_domblk "$D" "$disk")")
  chains+="$chain"$'\n'
  nsnap=$(it_ls "$MNT/$D/$disk/snapshots" | wc -w)
  it_assert_eq "$((nsnap + 1))" "$(wc -l <<<"$chain")" "$disk: its chain is its base and one layer per snapshot"
done
files=("$T"/overlays/* "$T"/*.qcow2)
for f in "${files[@]}"; do
  grep -qxF "$f" <<<"$chains" || it_fail "leftover file: $(it_short "$f") is in no chain"
done
it_log "ok: every image file (${#files[@]}) is in a chain"
expect=$(it_ls "$MNT/$D/snapshots" | tr ' ' '\n' | sort)
it_assert_eq "$expect" "$(it_snapshot_names "$D")" "libvirt's snapshot metadata lists exactly the tree's snapshots"

#!/usr/bin/env bash
# guest_soak.sh — issue 10 acceptance: SOAK_SECONDS (default 300) of the
# real test guest writing to vda and vdb while random domain-level and
# disk-level mkdir and rmdir run every 1-5 s (SOAK_SEED picks the same
# sequence again; it is printed at the start). Refusals a busy disk may
# give (EBUSY, and ENOENT for a name a queued merge has just taken) are
# counted and logged; anything else fails the test. At the end, once every
# job and queued deletion has ended:
#   - no file chainfs made is left outside the chains (every *.qcow2 in
#     the domain's directory is a layer of vda or vdb);
#   - `virsh snapshot-list` is exactly the union of the disks' snapshots/,
#     and <dom>/snapshots/ lists that union too;
#   - every snapshot left is merged away by domain-level rmdirs, both disks
#     end on their bases;
#   - after `virsh destroy` both images are fsck-clean, every file the
#     guest reported (each fsynced) is there with its checksum, and the
#     lockstep seq of vda and vdb agree (guest_check).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

SOAK_SECONDS=${SOAK_SECONDS:-300}
SOAK_SEED=${SOAK_SEED:-$$}
RANDOM=$SOAK_SEED
it_log "soak: $SOAK_SECONDS s, seed $SOAK_SEED (SOAK_SEED=$SOAK_SEED reruns this sequence)"

D=$IT_PREFIX-soak
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$D" "$vda" "$vdb"
guest_start "$D"
it_mount
it_wait_dom "$D"
guest_wait_more "$D" 3

declare -A COUNT=()
n=0

# pick WORDS... — one of the words at random (empty if none)
pick() {
  [ "$#" -gt 0 ] || return 0
  local a=("$@")
  printf '%s\n' "${a[RANDOM % ${#a[@]}]}"
}

# try WHAT CMD... — run one operation; EBUSY and ENOENT are counted as
# refusals a busy disk may give, any other failure fails the test
try() {
  local what=$1 err rc=0
  shift
  err=$("$@" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then
    COUNT[$what]=$((${COUNT[$what]:-0} + 1))
    it_log "ok: $what ${*: -1}"
  elif grep -qE 'Device or resource busy|No such file or directory' <<<"$err"; then
    COUNT[$what-refused]=$((${COUNT[$what-refused]:-0} + 1))
    it_log "refused: $what ${*: -1}: $err"
  else
    it_fail "$what ${*: -1}: $err"
  fi
}

start=$(date +%s)
while [ $(($(date +%s) - start)) -lt "$SOAK_SECONDS" ]; do
  n=$((n + 1))
  disk=$(pick vda vdb)
  case $((RANDOM % 4)) in
    0) try dom-mkdir mkdir "$MNT/$D/snapshots/s$n" ;;
    1) try disk-mkdir mkdir "$MNT/$D/$disk/snapshots/d$n" ;;
    2)
      # shellcheck disable=SC2046 # names are [a-z0-9] only
      name=$(pick $(it_ls "$MNT/$D/snapshots"))
      [ -z "$name" ] || try dom-rmdir rmdir "$MNT/$D/snapshots/$name"
      ;;
    3)
      # shellcheck disable=SC2046
      name=$(pick $(it_ls "$MNT/$D/$disk/snapshots"))
      [ -z "$name" ] || try disk-rmdir rmdir "$MNT/$D/$disk/snapshots/$name"
      ;;
  esac
  sleep $((1 + RANDOM % 5))
done
summary=""
for k in $(printf '%s\n' "${!COUNT[@]}" | sort); do summary+=" $k=${COUNT[$k]}"; done
it_log "soak: $n steps in $(($(date +%s) - start)) s:$summary; guest at file $(guest_last_n "$D")"
if [ "${COUNT[dom-mkdir]:-0}" -eq 0 ] || [ "${COUNT[dom-rmdir]:-0}" -eq 0 ]; then
  it_fail "the soak made no domain-level mkdir or rmdir (seed $SOAK_SEED)"
fi

# busy DISK — the disk has a job in progress or deletions queued
busy() {
  jq -e '(.state as $s | ["starting","running","ready","pivoting","finishing","cleanup"] | index($s)) or ((.queue // []) | length > 0)' \
    "$MNT/$D/$1/job.json" >/dev/null
}
# idle — wait until neither disk has a job or a queued deletion
idle() {
  local i
  for i in $(seq 1 60); do
    timeout 300 cat "$MNT/$D/wait" >/dev/null || it_fail "cat $D/wait failed or timed out"
    timeout 300 cat "$MNT/$D/vda/wait" >/dev/null || it_fail "cat $D/vda/wait failed or timed out"
    timeout 300 cat "$MNT/$D/vdb/wait" >/dev/null || it_fail "cat $D/vdb/wait failed or timed out"
    busy vda || busy vdb || return 0
  done
  it_fail "the disks did not go idle"
}
idle
for disk in vda vdb; do
  state=$(jq -r .state "$MNT/$D/$disk/job.json")
  case $state in
    none | completed) ;;
    *) it_fail "$disk's last job ended $state: $(cat "$MNT/$D/$disk/job")" ;;
  esac
done

# every *.qcow2 of the domain's directory is a layer of vda or vdb
check_no_orphan() {
  local layers f
  layers=$( (jq -r '.layers[].file' "$MNT/$D/vda/chain.json"; jq -r '.layers[].file' "$MNT/$D/vdb/chain.json") | xargs -r realpath | sort -u)
  for f in "$T"/*.qcow2; do
    [ -e "$f" ] || continue
    grep -qxF "$(realpath "$f")" <<<"$layers" || it_fail "$(it_short "$f") is in no chain"
  done
}
check_no_orphan

# names DIR — the entries of DIR, one per line, sorted
# shellcheck disable=SC2012 # names are ours: [A-Za-z0-9._-]
names() { ls -1 "$1" | LC_ALL=C sort; }
union=$( (names "$MNT/$D/vda/snapshots"; names "$MNT/$D/vdb/snapshots") | LC_ALL=C sort -u | tr '\n' ' ')
libvirt=$(it_snapshot_names "$D" | LC_ALL=C sort | tr '\n' ' ')
domlevel=$(names "$MNT/$D/snapshots" | tr '\n' ' ')
it_assert_eq "$union" "$libvirt" "virsh snapshot-list is the union of the disks' snapshots/"
it_assert_eq "$union" "$domlevel" "<dom>/snapshots/ lists the union of the disks' snapshots/"
it_log "after the soak: snapshots $union"

# merge away what is left, domain level, newest first
for name in $(names "$MNT/$D/snapshots" | tac); do
  rmdir "$MNT/$D/snapshots/$name" || it_fail "rmdir $D/snapshots/$name"
  idle
done
it_assert_eq "" "$(it_ls "$MNT/$D/snapshots")" "<dom>/snapshots/ is empty"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"
it_check_chain "$D" vda "$vda"
it_check_chain "$D" vdb "$vdb"
check_no_orphan

guest_wait_more "$D" 2
guest_destroy "$D"
guest_check "$D" "$vda" "$vdb"
it_log "guest_check: $(guest_last_n "$D") reported files intact, seqs ${GUEST_SEQS[*]}"

#!/usr/bin/env bash
# snap_no_agent.sh — issue 10, acceptance 3 (docs/design/issue10.md §2.4,
# §7): a domain-level mkdir when the guest agent cannot freeze.
#  1. the agent killed in the guest: the mkdir is crash-consistent within
#     15 s, info.json quiesced false with libvirt's reason, no FREEZE;
#  2. with -o quiesce=require: EOPNOTSUPP, and nothing changed (chains,
#     libvirt's snapshots, the overlay directory);
#  3. a hung hook (the freeze waits 30 s in the guest) with
#     -o quiesce_timeout=3: the mkdir returns within 3 + 6 s,
#     crash-consistent ("did not answer within 3 s"), <dom>/job shows a
#     thaw owed; the guest's late freeze is thawed by chainfs's retry and
#     the workload goes on.
# At the end every image is fsck-clean and every reported file intact.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init

# a command line chainfs cannot use: exit 2, the message says why
for bad in "quiesce=maybe:give try, require or off" \
           "quiesce_timeout=301:give whole seconds, 1 to 300" \
           "quiesce_timeout=-1:give whole seconds" "quiesce_timeout=3s:give whole seconds"; do
  opt=${bad%%:*} want=${bad#*:} status=0
  mkdir -p "$T/mnt0"
  out=$("$CHAINFS" -f -c "$IT_URI" -o "state_dir=$T/state,$opt" "$T/mnt0" 2>&1) || status=$?
  it_assert_eq 2 "$status" "-o $opt exits 2"
  it_assert_contains "$out" "-o $opt: $want" "-o $opt: the message says why"
done

guest_init

D=$IT_PREFIX-noagent
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$D" "$vda" "$vdb"
guest_start "$D"
it_mount
it_wait_dom "$D"
guest_wait_n "$D" 3

# ---- 1. no agent: crash-consistent, quickly, with the reason ------------------
guest_agent_kill "$D" 40
freezes=$(guest_freezes "$D")
t0=$(it_now_ms)
mkdir "$MNT/$D/snapshots/n1" || it_fail "mkdir $D/snapshots/n1 without an agent"
ms=$(($(it_now_ms) - t0))
[ "$ms" -lt 15000 ] || it_fail "mkdir without an agent took ${ms} ms (15 s at most)"
info=$MNT/$D/snapshots/n1/info.json
it_assert_eq "false" "$(jq -r .quiesced "$info")" "n1: info.json quiesced false"
it_assert_contains "$(jq -r .quiesce_reason "$info")" "not connected" "n1: the reason is libvirt's"
it_assert_contains "$(sed -n 's/^quiesce: *//p' "$MNT/$D/snapshots/n1/info")" "not connected" "n1: info's quiesce: line"
it_assert_eq "$freezes" "$(guest_freezes "$D")" "n1: no freeze in the guest"
it_assert_contains "$(it_snapshots "$D" vdb)" n1 "n1 is in vdb's snapshots/"
grep -q "mkdir $D/snapshots/n1: not quiesced (crash-consistent): .*not connected" "$IT_LOG" ||
  it_fail "the log lacks the not-quiesced line with libvirt's message"
it_log "ok: no agent: crash-consistent in ${ms} ms"

# ---- 2. -o quiesce=require: EOPNOTSUPP, nothing changed ----------------------
it_unmount || it_fail "unmount"
it_mount "quiesce=require"
it_wait_dom "$D"
it_assert_eq "require" "$(sed -n 's/^quiesce: *//p' "$MNT/$D/ctl")" "<dom>/ctl: quiesce require"
chains_before="$(it_domblk "$D" vda) $(it_domblk "$D" vdb)"
snaps_before=$(it_snapshot_names "$D" | sort | tr '\n' ' ')
files_before=$(ls -1 "$T/overlays" | tr '\n' ' ')
t0=$(it_now_ms)
# (EOPNOTSUPP is ENOTSUP on Linux, errno 95: Python names it ENOTSUP)
it_expect_errno ENOTSUP mkdir "$MNT/$D/snapshots/n2"
ms=$(($(it_now_ms) - t0))
it_expect_errno ENOTSUP mkdir "$MNT/$D/vda/snapshots/n3"
it_assert_eq "$chains_before" "$(it_domblk "$D" vda) $(it_domblk "$D" vdb)" "require: the chains are unchanged"
it_assert_eq "$snaps_before" "$(it_snapshot_names "$D" | sort | tr '\n' ' ')" "require: libvirt's snapshots are unchanged"
it_assert_eq "$files_before" "$(ls -1 "$T/overlays" | tr '\n' ' ')" "require: no overlay file left"
it_assert_eq "n1" "$(it_ls "$MNT/$D/snapshots")" "require: the domain's snapshots/ is unchanged"
grep -q "mkdir $D/snapshots/n2 failed (Operation not supported): -o quiesce=require: " "$IT_LOG" ||
  it_fail "the log lacks the refusal with its reason"
it_assert_eq "$freezes" "$(guest_freezes "$D")" "require: no freeze in the guest"
it_log "ok: require without an agent: EOPNOTSUPP in ${ms} ms, nothing changed"

# ---- 3. a hung agent: bounded, crash-consistent, thawed later ----------------
# the agent was killed for 40 s in part 1: most of that is still to run
# out here, so the wait has 40 s plus a margin (its slow: line, at half
# the timeout, is then for a real delay, not the planned absence)
guest_wait_agent "$D" 90
it_unmount || it_fail "unmount"
it_mount "quiesce_timeout=3"
it_wait_dom "$D"
guest_hook_hang "$D" 30
freezes=$(guest_freezes "$D")
t0=$(it_now_ms)
mkdir "$MNT/$D/snapshots/h1" || it_fail "mkdir $D/snapshots/h1 with a hung agent"
ms=$(($(it_now_ms) - t0))
[ "$ms" -lt 9000 ] || it_fail "mkdir with a hung agent took ${ms} ms (3 + 6 s at most)"
info=$MNT/$D/snapshots/h1/info.json
it_assert_eq "false" "$(jq -r .quiesced "$info")" "h1: info.json quiesced false"
it_assert_contains "$(jq -r .quiesce_reason "$info")" "did not answer within 3 s" "h1: the reason names the bound"
it_assert_contains "$(cat "$MNT/$D/job")" "thaw:   owed since" "<dom>/job shows the thaw owed"
it_assert_eq "1" "$(jq -r '.thaw != null' "$MNT/$D/job.json" | grep -c true)" "job.json: thaw owed"
it_log "ok: hung agent: crash-consistent in ${ms} ms, thaw owed"
# the hook ends its 30 s, the guest freezes (late): chainfs's retry thaws it
it_wait_until 60 "the late FREEZE on the console" sh -c "[ \$(tr -d '\r' <'$(guest_console "$D")' | grep -acE '^FREEZE [0-9]+') -gt $freezes ]"
it_wait_until 60 "the late freeze thawed (THAW on the console)" sh -c "[ \$(tr -d '\r' <'$(guest_console "$D")' | grep -acE '^THAW [0-9]+') -ge \$(tr -d '\r' <'$(guest_console "$D")' | grep -acE '^FREEZE [0-9]+') ]"
it_wait_until 15 "<dom>/job without a thaw owed" sh -c "! grep -q '^thaw:' '$MNT/$D/job'"
grep -q "$D: owed thaw done" "$IT_LOG" || it_fail "the log lacks the owed thaw done"
guest_wait_more "$D" 3
it_log "ok: the late freeze was thawed by the retry; the workload goes on"

guest_destroy "$D"
guest_check "$D" "$(it_domblk "$D" vda)" "$(it_domblk "$D" vdb)"
it_log "ok: final images clean, $(guest_last_n "$D") reported files intact, seqs ${GUEST_SEQS[*]}"

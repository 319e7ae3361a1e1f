#!/usr/bin/env bash
# guest_boot.sh — issue 10, acceptance 1: the test guest builds (or comes
# from the cache) from nothing but Debian packages, boots, prints READY,
# and its agent answers guest-ping; the workload writes and reports files
# on vda with the lockstep seq on vda and vdb; a freeze through the agent
# runs the hook (FREEZE/THAW on the console, the workload paused while
# frozen); the test knobs work (a hook hanging S seconds, the agent killed
# and back); libvirt's quiesced atomic snapshot of both disks freezes the
# guest once and its frozen images hold exactly the files reported before
# the FREEZE line and equal seqs; after `virsh destroy` every image is
# fsck-clean with every reported file intact (journal replayed on a
# scratch copy); guest_check fails on a missing, a different and an extra
# file; a second boot continues the numbering and the check still holds. Prints the boot time.
# docs/design/issue10.md §1, §7.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

dom=$IT_PREFIX-guest
vda=$T/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$dom" "$vda" "$vdb"

guest_start "$dom"
boot1=$GUEST_BOOT_S ping1=$GUEST_PING_S
it_assert_eq '{"return":{}}' "$(guest_agent_cmd "$dom" '{"execute":"guest-ping"}' | tr -d ' \n')" \
  "virsh qemu-agent-command $dom guest-ping answers"
it_assert_contains "$(tr -d '\r' <"$(guest_console "$dom")" | grep -a '^READY ')" "disks=vda,vdb start=1" \
  "READY names both disks, the workload starts at file 1"
guest_wait_n "$dom" 5

# a freeze through the agent: the hook pauses the workload, both disks frozen
out=$(virsh -c "$IT_URI" domfsfreeze "$dom" 2>&1) || it_fail "domfsfreeze: $out"
it_assert_contains "$out" "Froze 2 filesystem" "domfsfreeze froze vda's and vdb's filesystems"
it_assert_eq 1 "$(guest_freezes "$dom")" "the hook printed FREEZE once"
it_assert_eq frozen "$(guest_fsfreeze_status "$dom")" "guest-fsfreeze-status: frozen"
n=$(guest_last_n "$dom")
it_assert_eq "$n" "$(guest_n_at_freeze "$dom" 1)" "the workload's last line comes before FREEZE 1"
sleep 1.5
it_assert_eq "$n" "$(guest_last_n "$dom")" "no file written while frozen"
out=$(it_virsh domfsthaw "$dom" 2>&1) || it_fail "domfsthaw: $out"
it_wait_until 10 "THAW 1 on the console" sh -c "tr -d '\r' <'$(guest_console "$dom")' | grep -aq '^THAW 1\$'"
it_assert_eq thawed "$(guest_fsfreeze_status "$dom")" "guest-fsfreeze-status: thawed"
guest_wait_more "$dom" 3
it_log "ok: the workload goes on after the thaw (file $(guest_last_n "$dom"))"

# the hook hangs 3 s for one freeze: libvirt's freeze waits for it
guest_hook_hang "$dom" 3
t0=$(it_now_ms)
out=$(it_virsh domfsfreeze "$dom" 2>&1) || it_fail "domfsfreeze with the hook hanging: $out"
ms=$(($(it_now_ms) - t0))
[ "$ms" -ge 3000 ] || it_fail "domfsfreeze took ${ms} ms with the hook hanging 3 s"
it_log "ok: domfsfreeze took ${ms} ms with the hook hanging 3 s"
it_assert_contains "$(tr -d '\r' <"$(guest_console "$dom")" | grep -a '^HANG ')" "HANG 2 3" "the console shows the hang"
it_assert_eq 2 "$(guest_freezes "$dom")" "the freeze count went up by one"
out=$(it_virsh domfsthaw "$dom" 2>&1) || it_fail "domfsthaw: $out"
guest_wait_more "$dom" 2

# the agent killed: libvirt says it is not connected; back after 5 s
guest_agent_kill "$dom" 5
out=$(it_virsh domfsfreeze "$dom" 2>&1) && it_fail "domfsfreeze worked with the agent killed: $out"
it_assert_contains "$out" "not connected" "domfsfreeze without the agent: not connected"
guest_wait_agent "$dom" 30
it_assert_eq 2 "$(guest_freezes "$dom")" "no freeze counted while the agent was away"
guest_wait_more "$dom" 3

# libvirt's own quiesced atomic snapshot of both disks (freeze 3): the
# frozen images hold exactly the files reported before FREEZE 3 and equal
# seqs (what the domain-level snapshot tests rely on)
out=$(it_virsh snapshot-create-as "$dom" q1 --disk-only --atomic --quiesce --no-metadata \
  --diskspec "vda,file=$T/vda.q1.qcow2" --diskspec "vdb,file=$T/vdb.q1.qcow2" 2>&1) ||
  it_fail "snapshot-create-as --quiesce: $out"
it_assert_eq 3 "$(guest_freezes "$dom")" "the quiesced snapshot froze the guest once"
frozen=$(guest_n_at_freeze "$dom" 3)
guest_wait_more "$dom" 3

guest_destroy "$dom"
last=$(guest_last_n "$dom")
guest_check --upto "$frozen" --exact "$dom" "$vda" "$vdb"
it_assert_eq "$frozen $frozen" "${GUEST_SEQS[*]}" "the frozen images hold seq $frozen on both disks"
guest_check "$dom" "$T/vda.q1.qcow2" "$T/vdb.q1.qcow2"
it_log "first boot: $last files reported, frozen at $frozen, final seqs ${GUEST_SEQS[*]}"
it_assert_eq "${GUEST_SEQS[1]}" "$(guest_seq "$T/vdb.q1.qcow2")" "guest_seq reads vdb's seq"

# the checks can fail: a reported file that is not in the image, a file
# whose bytes differ from the reported sha256, an extra file for --exact
fake=$IT_PREFIX-fake
cp "$(guest_console "$dom")" "$(guest_console "$fake")"
printf '%s %064d\r\n' $((last + 1000)) 0 >>"$(guest_console "$fake")"
(guest_check "$fake" "$T/vda.q1.qcow2" "$T/vdb.q1.qcow2") 2>"$T/neg.log" &&
  it_fail "guest_check passed with a reported file missing from the image"
it_assert_contains "$(cat "$T/neg.log")" "1 of $((last + 1)) reported files missing" "guest_check: a missing file fails"
cp "$(guest_console "$dom")" "$(guest_console "$fake")"
printf '%s %064d\r\n' 2 0 >>"$(guest_console "$fake")"
(guest_check "$fake" "$T/vda.q1.qcow2" "$T/vdb.q1.qcow2") 2>"$T/neg.log" &&
  it_fail "guest_check passed with a file whose sha256 differs"
it_assert_contains "$(cat "$T/neg.log")" "f.2 0000" "guest_check: a different file fails"
(guest_check --upto $((frozen - 1)) --exact "$dom" "$vda" "$vdb") 2>"$T/neg.log" &&
  it_fail "guest_check --exact passed with file $frozen beyond --upto"
it_assert_contains "$(cat "$T/neg.log")" "holds files the console did not report" "guest_check --exact: an extra file fails"

# a second boot continues after the first disk's seq, the console appended
guest_start "$dom"
boot2=$GUEST_BOOT_S
it_assert_contains "$(tr -d '\r' <"$(guest_console "$dom")" | grep -a '^READY ' | tail -n 1)" \
  "start=$((GUEST_SEQS[0] + 1))" "the second boot starts after seq ${GUEST_SEQS[0]}"
guest_wait_more "$dom" 3
guest_destroy "$dom"
guest_check "$dom" "$T/vda.q1.qcow2" "$T/vdb.q1.qcow2"
it_log "second boot: $(guest_last_n "$dom") files reported in all, seqs ${GUEST_SEQS[*]}"

msg="guest ($(guest_virt_type)): build/cache ${GUEST_BUILD_S}s; boot to READY ${boot1}s, guest-ping ${ping1}s; second boot ${boot2}s"
it_log "$msg"
echo "$msg"

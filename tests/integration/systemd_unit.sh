#!/usr/bin/env bash
# systemd_unit.sh — dist/systemd/chainfs@.service (issue 11 §4), on a
# machine without systemd as PID 1:
#  - meson installs it (to a DESTDIR here), its ExecStart naming the
#    installed binary; `systemd-analyze verify` of it is clean (the
#    binary's path pointed at the DESTDIR copy, nothing else changed);
#  - no hardening setting that would give the unit a mount namespace of
#    its own (the mount would never reach the host);
#  - its ExecStartPre and ExecStart, expanded as systemd would
#    (unit_cmdline.py: specifiers, Environment=, EnvironmentFile=,
#    STATE_DIRECTORY) and run by hand with the unit's capability bounding
#    set and no_new_privs (setpriv), mount on the instance's path: the
#    parent returns once mounted (Type=forking), /proc/mounts says
#    fuse.chainfs, and a mkdir/rmdir cycle on a shut-off domain works
#    under those capabilities (overlay made, offline commit, files seen
#    as local);
#  - stopped as systemd stops it (SIGTERM to the main pid, KillMode=mixed)
#    the mount is gone and chainfs exits 0 (tests/tools/reaper.c reads
#    the detached daemon's status);
#  - ExecStartPre clears a dead chainfs mount (a SIGKILLed daemon's) and
#    leaves a live chainfs mount and another filesystem's mount alone
#    (chainfs then refuses to start, exit 1).
# What needs systemd as PID 1 is not tested here: docs/TESTING.md.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

for tool in systemd-analyze systemd-escape meson setpriv findmnt; do
  command -v "$tool" >/dev/null 2>&1 || it_skip "$tool is not installed"
done
[ -n "${CHAINFS_BUILD_ROOT:-}" ] || it_fail "CHAINFS_BUILD_ROOT is not set (run through meson test)"
[ -x "${REAPER:-}" ] || it_fail "no reaper tool at '${REAPER:-}'"
CMDLINE="$IT_ROOT/tests/integration/unit_cmdline.py"

# --- meson installs the unit, ExecStart naming the installed binary ---------------
ROOT="$T/root"
meson install -C "$CHAINFS_BUILD_ROOT" --no-rebuild --destdir "$ROOT" --quiet >"$T/install.log" 2>&1 ||
  it_fail "meson install --destdir: $(cat "$T/install.log")"
installed=$(meson introspect --installed "$CHAINFS_BUILD_ROOT") || it_fail "meson introspect --installed"
unit_dest=$(jq -r 'to_entries[] | .value | select(endswith("/chainfs@.service"))' <<<"$installed")
bin_dest=$(jq -r 'to_entries[] | .value | select(endswith("/bin/chainfs"))' <<<"$installed")
[ -n "$unit_dest" ] || it_fail "meson does not install chainfs@.service"
UNIT="$ROOT$unit_dest"
[ -f "$UNIT" ] || it_fail "no $UNIT after meson install"
it_log "ok: meson installs chainfs@.service to $unit_dest"
exec_bin=$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "$UNIT")
it_assert_eq "$bin_dest" "$exec_bin" "ExecStart runs the installed binary"
[ -x "$ROOT$bin_dest" ] || it_fail "the installed binary $ROOT$bin_dest is not executable"

# --- systemd-analyze verify --------------------------------------------------------
# The unit as installed, but for the binary's path: /usr/... is not
# installed on this machine, its DESTDIR copy is. The man page (Documentation=
# man:chainfs(8)) is looked up in the DESTDIR's man pages.
mkdir -p "$T/units"
U="$T/units/chainfs@.service"
sed "s#^ExecStart=$exec_bin #ExecStart=$ROOT$bin_dest #" "$UNIT" >"$U"
it_assert_eq "1" "$(diff "$UNIT" "$U" | grep -c '^>')" "only ExecStart's binary path differs from the installed unit"
man8=$(jq -r 'to_entries[] | .value | select(endswith("/man8/chainfs.8"))' <<<"$installed")
status=0
if [ -n "$man8" ]; then
  out=$(cd "$T" && MANPATH="$ROOT${man8%/man8/chainfs.8}" systemd-analyze verify "$U" 2>&1) || status=$?
  what="systemd-analyze verify (man:chainfs(8) found in the install)"
else
  # the man page comes with the man pages' branch of issue 11; until it
  # is installed, verify everything else
  it_log "no chainfs.8 installed by meson: systemd-analyze verify --man=no"
  out=$(cd "$T" && systemd-analyze verify --man=no "$U" 2>&1) || status=$?
  what="systemd-analyze verify --man=no"
fi
it_assert_eq "0:" "$status:$out" "$what is clean"

# --- no mount namespace ------------------------------------------------------------
# systemd.exec(5): each of these makes the unit's mounts its own
ns_keys='PrivateTmp|PrivateDevices|PrivateMounts|PrivateNetwork|PrivateIPC|ProtectSystem|ProtectHome|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectProc|ProcSubset|ReadOnlyPaths|ReadWritePaths|InaccessiblePaths|ExecPaths|NoExecPaths|TemporaryFileSystem|BindPaths|BindReadOnlyPaths|MountFlags|LogNamespace|RootDirectory|RootImage|DynamicUser|MountAPIVFS'
if grep -En "^($ns_keys)=" "$UNIT"; then
  it_fail "the unit sets an option that gives it a mount namespace: its mount would not reach the host"
fi
it_log "ok: no setting of the unit gives it a mount namespace"

# --- the unit's commands, by hand --------------------------------------------------
# cmdline INSTANCE KEY — the argv of the unit's KEY= line, one per line
# ($T/etc stands for /etc; STATE_DIRECTORY as StateDirectory=chainfs sets
# it, $T/state for /var/lib/chainfs)
cmdline() {
  python3 "$CMDLINE" "$U" "$2" "$1" "$T/etc" "STATE_DIRECTORY=$T/state"
}
# the capability bounding set and no_new_privs of the unit, for setpriv
caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT")
[ -n "$caps" ] || it_fail "no CapabilityBoundingSet= in the unit"
bset="-all"
for c in $caps; do
  c=${c#CAP_}
  bset="$bset,+${c,,}"
done
grep -qx 'NoNewPrivileges=yes' "$UNIT" || it_fail "NoNewPrivileges=yes is not set"
# run_pre INSTANCE — ExecStartPre, as root with the unit's limits
run_pre() {
  local -a argv
  mapfile -t argv < <(cmdline "$1" ExecStartPre)
  [ "${#argv[@]}" -gt 0 ] || it_fail "no ExecStartPre for $1"
  setpriv --no-new-privs --bounding-set "$bset" -- "${argv[@]}"
}
# start INSTANCE — ExecStart under reaper; sets DPID (the detached
# daemon, systemd's main pid) and RLOG; returns the parent's status
start() {
  local -a argv
  local i status
  mapfile -t argv < <(cmdline "$1" ExecStart)
  RLOG="$T/reaper.$1.log"
  : >"$RLOG"
  "$REAPER" "$RLOG" setpriv --no-new-privs --bounding-set "$bset" -- "${argv[@]}" \
    >>"$IT_LOG" 2>&1 &
  RPID=$!
  for ((i = 0; i < 600; i++)); do
    [ -s "$RLOG" ] && break
    sleep 0.05
  done
  [ -s "$RLOG" ] || it_fail "ExecStart did not return within 30 s"
  status=$(awk 'NR == 1 { print $2 }' "$RLOG")
  DPID=$(pgrep -P "$RPID" || true)
  it_log "ExecStart returned $status; main pid ${DPID:-none}"
  return "$status"
}
# stop — as systemd: SIGTERM to the main pid, wait until it and all it
# started have ended; its status in STOPPED
stop() {
  kill -TERM "$DPID"
  wait "$RPID" || true
  STOPPED=$(awk -v p="$DPID" '$1 == p { print $2 }' "$RLOG")
  RPID=""
}
# on_exit: a daemon of ours still running is stopped, its mount unmounted
unit_cleanup() {
  if [ -n "${RPID:-}" ] && kill -0 "$RPID" 2>/dev/null; then
    [ -n "${DPID:-}" ] && kill -TERM "$DPID" 2>/dev/null
    sleep 1
    [ -n "${DPID:-}" ] && kill -KILL "$DPID" 2>/dev/null
  fi
  local m
  for m in "$T/mnt" "$T/other"; do
    mountpoint -q "$m" 2>/dev/null && umount --lazy "$m"
  done
  return 0
}
IT_CLEANUP_HOOKS+=(unit_cleanup)

D="$IT_PREFIX-unit"
it_make_image "$T/vda.qcow2" 64M
it_define "$D" "$T/vda.qcow2"
mkdir -p "$T/etc/default" "$T/state"
MNT_U="$T/mnt" # created by ExecStartPre
INST=$(systemd-escape --path "$MNT_U")
# the instance's own EnvironmentFile wins over the defaults
printf 'CHAINFS_OPTIONS="-o allow_other,keep_merged"\n' >"$T/etc/default/chainfs"
printf 'CHAINFS_OPTIONS="-o allow_other,bandwidth=64M"\n' >"$T/etc/default/chainfs@$INST"

run_pre "$INST" || it_fail "ExecStartPre of chainfs@$INST"
[ -d "$MNT_U" ] || it_fail "ExecStartPre did not create the mount point"
start "$INST" || it_fail "ExecStart of chainfs@$INST exited non-zero"
[ -n "$DPID" ] || it_fail "no daemon left running after ExecStart returned"
# Type=forking: mounted when the parent returned
it_assert_eq "qemu:///system fuse.chainfs" "$(findmnt -n -o SOURCE,FSTYPE --mountpoint "$MNT_U" | tr -s ' ')" \
  "mounted when ExecStart returned: /proc/mounts says qemu:///system, fuse.chainfs"
args=$(tr '\0' ' ' <"/proc/$DPID/cmdline")
it_assert_contains "$args" "bandwidth=64M" "the instance's EnvironmentFile set CHAINFS_OPTIONS"
it_assert_contains "$args" "state_dir=$T/state/" "the state directory is the instance's, in STATE_DIRECTORY"
it_assert_eq "1" "$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$DPID/status")" "the daemon runs with no_new_privs"
# the bounding set as systemd gives it: capsh decodes the mask
want=$(for c in $caps; do echo "${c,,}"; done | sort | tr '\n' ',')
got=$(capsh --decode="$(awk '/^CapBnd:/ { print $2 }' "/proc/$DPID/status")" | sed 's/.*=//' | tr ',' '\n' | sort | tr '\n' ',')
it_assert_eq "$want" "$got" "the daemon's bounding set is the unit's"

# a mkdir/rmdir cycle under these capabilities: the overlay is made beside
# the image, the merge commits it back offline (which chainfs refuses when
# it cannot tell the files are local)
MNT=$MNT_U
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1 under the unit's limits"
ov=$(it_domblk "$D" vda)
if [ "$ov" = "$T/vda.qcow2" ] || [ ! -f "$ov" ]; then
  it_fail "no overlay after mkdir: $ov"
fi
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1 under the unit's limits"
it_wait_job "$D" vda >/dev/null
it_assert_eq "$T/vda.qcow2" "$(it_domblk "$D" vda)" "the merge put the chain back to the base"
it_log "ok: a mkdir/rmdir cycle works with the unit's capabilities"

# ExecStartPre leaves a live chainfs mount alone
run_pre "$INST" || it_fail "ExecStartPre with chainfs mounted"
kill -0 "$DPID" || it_fail "ExecStartPre stopped the running chainfs"
mountpoint -q "$MNT_U" || it_fail "ExecStartPre unmounted a live chainfs"
it_log "ok: ExecStartPre leaves a live chainfs mount alone"
# and chainfs refuses to stack a second mount on it
R1=$RPID D1=$DPID L1=$RLOG
status=0
start "$INST" || status=$?
it_assert_eq "1" "$status" "a second ExecStart on the mounted point exits 1"
wait "$RPID" || true
RPID=$R1 DPID=$D1 RLOG=$L1

# --- stopped as systemd stops it ---------------------------------------------------
stop
it_assert_eq "0" "$STOPPED" "SIGTERM to the main pid: chainfs exits 0"
mountpoint -q "$MNT_U" && it_fail "$MNT_U is still mounted after chainfs stopped"
it_log "ok: the mount is gone"

# --- a dead mount left by a crash is cleared before the restart --------------------
start "$INST" || it_fail "ExecStart again"
kill -KILL "$DPID"
wait "$RPID" || true
it_assert_eq "fuse.chainfs" "$(findmnt -n -o FSTYPE --mountpoint "$MNT_U")" "a SIGKILLed chainfs leaves its mount"
it_expect_errno ENOTCONN stat "$MNT_U"
run_pre "$INST" || it_fail "ExecStartPre on a dead mount"
mountpoint -q "$MNT_U" && it_fail "ExecStartPre left the dead mount"
it_log "ok: ExecStartPre cleared the dead chainfs mount"
start "$INST" || it_fail "ExecStart after the dead mount was cleared"
mountpoint -q "$MNT_U" || it_fail "not mounted after the restart"
stop
it_assert_eq "0" "$STOPPED" "the restarted chainfs exits 0 on SIGTERM"

# --- another filesystem's mount is left alone --------------------------------------
OTHER="$T/other"
mkdir -p "$OTHER"
mount -t tmpfs cfsit-other "$OTHER" || it_fail "mount a tmpfs"
INST2=$(systemd-escape --path "$OTHER")
run_pre "$INST2" || it_fail "ExecStartPre on a tmpfs"
it_assert_eq "tmpfs" "$(findmnt -n -o FSTYPE --mountpoint "$OTHER")" "ExecStartPre leaves another filesystem's mount alone"
status=0
start "$INST2" || status=$?
it_assert_eq "1" "$status" "ExecStart on another filesystem's mount point exits 1"
wait "$RPID" || true
RPID="" DPID=""
grep -q "already a mount point" "$IT_LOG" || it_fail "chainfs did not say why it refused"
umount "$OTHER"

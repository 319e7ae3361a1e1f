# shellcheck shell=bash
# private_libvirtd.sh — a libvirtd the test owns, for tests that must not
# touch the shared system daemon (kill -STOP it, crash it) or that need a
# daemon whose files are not this machine's files (a "remote" host).
#
# Source it after lib.sh, call it_init, then `pd_start [DIR...]`. It
#   - creates a throwaway user cfspd-<pid> (removed at exit),
#   - starts libvirtd as that user — a session daemon, qemu:///session —
#     in a mount namespace of its own (unshare -m, private propagation),
#     where every DIR given is hidden under an empty private tmpfs owned by
#     the user: the daemon and its QEMUs see other files at those paths
#     than this script does (put decoys of the same names there on the
#     host side, and checksum them: pd_tree_sums),
#   - keeps its socket, config and logs in $T/pd, reachable from here;
#   - sets PD_URI (for chainfs -c and virsh -c), PD_PID (exactly the
#     libvirtd process: kill -STOP/-CONT it), PD_USER, and points lib.sh at
#     the daemon: IT_URI=$PD_URI (it_virsh, it_mount, it_define, ... talk
#     to it) and IT_VIRT_TYPE=qemu (the user is not in group kvm: its QEMUs
#     always run under TCG, KVM or not).
# Images inside the private directories are made and read with the lib.sh
# helpers through `pd_in`, e.g. `pd_in it_make_image "$dir/base.qcow2" 64M`,
# `pd_in it_check_pattern ...`, and domains on them are defined with
# `pd_in it_define DOM FILE...` (it reads the images' formats); any command
# runs there with `pd_run CMD...`.
#
# At exit — pass, fail or signal — the daemon is continued if stopped,
# lib.sh's clean-up destroys the domains it_define made and unmounts, then
# pd_stop destroys and undefines every domain of the private daemon, kills
# the daemon by its pid and then every remaining process of the throwaway
# user by pid (its QEMUs, all started by this daemon), and deletes the
# user. Nothing else is touched. pd_stop may also be called earlier.

PD_USER=""
PD_UID=""
PD_GID=""
PD_DIR=""     # $T/pd: the daemon's home, XDG dirs, socket and log
PD_URI=""
PD_PID=""
PD_LOG=""
PD_PRIVATE=() # directories the daemon sees as its own tmpfs

# pd_start [DIR...] — start the private daemon (see above); DIRs must be
# existing directories inside $T.
pd_start() {
  local tool d i mounts=""
  [ -n "$T" ] || it_fail "pd_start before it_init"
  for tool in unshare nsenter setpriv useradd userdel libvirtd; do
    command -v "$tool" >/dev/null 2>&1 || it_skip "$tool is not installed (a private libvirtd needs it)"
  done
  unshare -m --propagation private true 2>/dev/null ||
    it_skip "cannot create a mount namespace here (unshare -m failed)"
  for d in "$@"; do
    case "$d" in "$T"/?*) ;; *) it_fail "pd_start: private dir $d is not inside $T" ;; esac
    [ -d "$d" ] || it_fail "pd_start: private dir $d does not exist"
  done
  PD_PRIVATE=("$@")

  PD_USER="cfspd-$$"
  id "$PD_USER" >/dev/null 2>&1 && it_fail "user $PD_USER already exists (not ours; left from a crashed run?)"
  PD_DIR="$T/pd"
  mkdir -p "$PD_DIR"
  chmod 0755 "$PD_DIR"
  trap pd_exit EXIT
  IT_CLEANUP_HOOKS+=(pd_stop)
  useradd --system --no-create-home --home-dir "$PD_DIR/home" --shell /usr/sbin/nologin \
    --user-group "$PD_USER" >/dev/null || { it_log "useradd $PD_USER failed"; PD_USER=""; it_fail "useradd"; }
  PD_UID=$(id -u "$PD_USER")
  PD_GID=$(id -g "$PD_USER")
  mkdir -p "$PD_DIR/home" "$PD_DIR/run" "$PD_DIR/config/libvirt" "$PD_DIR/cache"
  # QEMU's stdio straight to a file: no session virtlogd to chase.
  printf 'stdio_handler = "file"\n' >"$PD_DIR/config/libvirt/qemu.conf"
  chown -R "$PD_USER:$PD_USER" "$PD_DIR/home" "$PD_DIR/run" "$PD_DIR/config" "$PD_DIR/cache"
  chmod 0700 "$PD_DIR/run"
  PD_LOG="$PD_DIR/libvirtd.log"

  for d in "${PD_PRIVATE[@]}"; do
    mounts+="mount -t tmpfs -o mode=0755,uid=$PD_UID,gid=$PD_GID,size=512m cfspd '$d' && "
  done
  # unshare and sh exec in place: $! is the libvirtd process itself.
  unshare -m --propagation private -- sh -c "${mounts}exec setpriv --reuid=$PD_UID --regid=$PD_GID \
    --init-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME='$PD_DIR/home' \
    XDG_RUNTIME_DIR='$PD_DIR/run' XDG_CONFIG_HOME='$PD_DIR/config' XDG_CACHE_HOME='$PD_DIR/cache' \
    libvirtd" >"$PD_LOG" 2>&1 </dev/null &
  PD_PID=$!
  PD_URI="qemu:///session?socket=$PD_DIR/run/libvirt/libvirt-sock"
  for ((i = 0; i < 300; i++)); do
    virsh -q -c "$PD_URI" version >/dev/null 2>&1 && break
    kill -0 "$PD_PID" 2>/dev/null || { cat "$PD_LOG" >&2; it_fail "the private libvirtd exited at start"; }
    sleep 0.1
  done
  virsh -q -c "$PD_URI" version >/dev/null 2>&1 || it_fail "the private libvirtd does not answer on $PD_URI after 30 s"
  [ "$(cat "/proc/$PD_PID/comm")" = libvirtd ] || it_fail "pid $PD_PID is not the private libvirtd"
  [ "$(readlink "/proc/$PD_PID/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] ||
    it_fail "the private libvirtd shares this script's mount namespace"
  # shellcheck disable=SC2034 # lib.sh's
  IT_URI=$PD_URI
  # shellcheck disable=SC2034 # lib.sh's
  IT_VIRT_TYPE=qemu
  it_log "private libvirtd pid $PD_PID (user $PD_USER, own mount namespace, private: ${PD_PRIVATE[*]/#"$T"/\$T}) on $PD_URI"
}

# pd_run CMD... — run CMD in the private daemon's mount namespace, as its
# user: it sees the daemon's files.
pd_run() {
  nsenter -t "$PD_PID" -m -- setpriv --reuid="$PD_UID" --regid="$PD_GID" --init-groups -- "$@"
}

# pd_in FUNCTION ARGS... — a lib.sh image helper (it_make_image,
# it_write_pattern, it_check_pattern, it_chain, ...) on the daemon's side.
pd_in() {
  # shellcheck disable=SC2034 # read by the lib.sh helper called
  local IT_IMG_RUN=(pd_run)
  "$@"
}

# pd_tree_sums DIR... — every file and directory under DIR: type, mode,
# owner, size, mtime and (files) sha256; one line each, sorted. Compare the
# output before and after to prove nothing there changed.
pd_tree_sums() {
  local f
  find "$@" -printf '%y %m %u:%g %s %T@ %p\n' | sort -k6
  find "$@" -type f -print0 | sort -z | while IFS= read -r -d '' f; do sha256sum "$f"; done
}

# pd_exit — the EXIT trap: a stopped daemon could not destroy its domains.
pd_exit() {
  local rc=$?
  set +e
  [ -z "$PD_PID" ] || kill -CONT "$PD_PID" 2>/dev/null
  (exit "$rc")
  it_cleanup
}

# pd_stop — destroy and undefine every domain of the private daemon, stop
# it and every process of its user, delete the user. Idempotent.
pd_stop() {
  local dom pids i ok=0
  if [ -n "$PD_PID" ]; then
    kill -CONT "$PD_PID" 2>/dev/null
    for dom in $(timeout 30 virsh -q -c "$PD_URI" list --all --name 2>/dev/null); do
      timeout 30 virsh -q -c "$PD_URI" destroy "$dom" >/dev/null 2>&1
      timeout 30 virsh -q -c "$PD_URI" undefine --snapshots-metadata "$dom" >/dev/null 2>&1
    done
    if [ "$IT_RC" -ne 0 ] && [ "$IT_RC" -ne 77 ] && [ -s "$PD_LOG" ]; then
      echo "[$IT_NAME] ---- private libvirtd log (last 50 lines) ----" >&2
      tail -n 50 "$PD_LOG" >&2
    fi
    kill -TERM "$PD_PID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      kill -0 "$PD_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$PD_PID" 2>/dev/null
    wait "$PD_PID" 2>/dev/null
    PD_PID=""
  fi
  if [ -n "$PD_USER" ] && [ -n "$PD_UID" ]; then
    # Whatever still runs as the throwaway user was started by its daemon.
    for ((i = 0; i < 50; i++)); do
      pids=$(pgrep -u "$PD_UID" || true)
      [ -n "$pids" ] || break
      # shellcheck disable=SC2086 # a list of pids
      kill -KILL $pids 2>/dev/null
      sleep 0.1
    done
    if [ -n "$pids" ]; then
      echo "[$IT_NAME] FAIL: processes of $PD_USER survive: $pids" >&2
      ok=1
    fi
    userdel "$PD_USER" || { echo "[$IT_NAME] FAIL: userdel $PD_USER" >&2; ok=1; }
    PD_USER=""
  fi
  return "$ok"
}

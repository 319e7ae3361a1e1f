# shellcheck shell=bash
# host2_lib.sh — a second libvirt host for the tests (issue 12 item 2): a
# system-mode libvirtd (and its virtlogd) in a mount and network namespace
# of their own, reached from here over qemu+tcp://ADDR/system.
#
# Source it after lib.sh, call it_init, then `h2_start`. It
#   - starts a holder process (`sleep infinity`) in a new mount namespace
#     (private propagation) and a new network namespace. In the mount
#     namespace, private directories under $T/h2 are bind-mounted over
#     /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /etc/libvirt and
#     /var/log/libvirt (and an empty tmpfs over /run/dbus): the daemon has
#     its own sockets, domain state, configuration, capability cache and
#     logs; this machine's are neither read nor written by it;
#   - /etc/libvirt there is a copy of this machine's *.conf and nwfilter/
#     only: no domain, network, pool or secret definition and no hook of
#     this machine's (its domains would otherwise appear on the second host,
#     its hooks would run there); nothing is autostarted, so the network
#     driver starts no network and adds no firewall rule. The netns has
#     its own iptables/nft tables anyway; the host's are not reachable;
#   - the capability cache is copied from this machine's (a probe of QEMU
#     costs seconds; libvirt re-validates the copy itself);
#   - links the namespace to this one by a veth pair named h2a<pid> (here)
#     and h2b<pid> (there), a /30 of 10.222.0.0/16 chosen from the pid
#     (one that no interface or route here uses): H2_ADDR is the namespace's
#     end, H2_PEER this one's;
#   - starts virtlogd and `libvirtd --listen` in both namespaces, with
#     listen_tcp=1, auth_tcp="none", listen_addr=H2_ADDR and pid files in
#     $T/h2 (this machine's /run/libvirtd.pid and /run/virtlogd.pid are
#     not touched);
#   - sets H2_URI=qemu+tcp://H2_ADDR/system, H2_PID (exactly the libvirtd
#     process), H2_LOGD_PID, H2_HOLD_PID.
#
# Images: the namespace shares this machine's files everywhere except the
# five libvirt directories above, so images under $T (0755) are at the
# same path on both hosts, like shared storage. (A test that needs files
# only the second host sees can mount a tmpfs inside the namespace with
# `h2_run mount ...`.) QEMU runs there as libvirt-qemu, as on this host.
#
# The second host's own libvirt directories are reachable from here too,
# under $H2_DIR: run/ (its /run/libvirt), lib/, cache/, etc/ and log/ —
# e.g. a domain's QEMU log is $H2_DIR/log/qemu/DOM.log, not
# /var/log/libvirt/qemu/DOM.log (guest_lib.sh's helpers read the latter).
# Its libvirtd's own log (stderr) is $H2_LOG.
#
# Inside, /sys is a fresh sysfs of the network namespace, without this
# host's cgroup mounts: libvirt then runs its QEMUs without cgroups and
# makes no cgroup in this host's tree (a QEMU killed by h2_stop would leave
# one behind), and it lists only the namespace's interfaces.
#
# h2_kill kills that libvirtd with SIGKILL (the host goes away; its QEMUs,
# virtlogd and the namespaces stay, as when a libvirtd crashes) and
# h2_restart starts it again in the same namespaces with the same state:
# it reconnects to the QEMUs still running.
#
# At exit — pass, fail or signal — h2_stop (a lib.sh clean-up hook)
# destroys and undefines every domain of the second host (if its libvirtd
# answers), kills by pid every process left in its mount namespace (the
# daemons and QEMUs it started: nothing else can be in there), which
# removes the namespaces and their mounts, deletes the veth pair, and
# checks all of that is gone. Nothing else on the machine is touched.

H2_DIR=""      # $T/h2: the daemon's private directories, pid files, logs
H2_URI=""
H2_PID=""      # libvirtd
H2_LOGD_PID="" # virtlogd
H2_HOLD_PID="" # the holder of the namespaces
H2_ADDR=""     # the namespace's end of the veth
H2_PEER=""     # this namespace's end
H2_VETH=""     # this namespace's veth name
H2_VETH_NS=""  # the namespace's veth name
H2_LOG=""
H2_MNTNS=""    # the mount namespace's id (readlink /proc/PID/ns/mnt)
H2_NETNS=""

h2_log() { it_log "host2: $*"; }

# h2_virsh ARGS... — virsh on the second host.
h2_virsh() { virsh -q -c "$H2_URI" "$@"; }

# h2_run CMD... — run CMD (as root) inside the second host's namespaces.
h2_run() { nsenter -t "$H2_HOLD_PID" -m -n -- "$@"; }

# h2_pick_net — a /30 in 10.222.0.0/16 from the pid that nothing here uses.
h2_pick_net() {
  local n i a b
  n=$(($$ % 16384))
  for ((i = 0; i < 64; i++)); do
    a=$(((n / 64) % 256))
    b=$(((n % 64) * 4))
    if [ -z "$(ip -4 addr show to "10.222.$a.$b/30" 2>/dev/null)" ] &&
      ! ip -4 route show | grep -q "^10\.222\.$a\.$b/30 \|^10\.222\.$a\.$((b + 1)) \|^10\.222\.$a\.$((b + 2)) "; then
      H2_PEER="10.222.$a.$((b + 1))"
      H2_ADDR="10.222.$a.$((b + 2))"
      return 0
    fi
    n=$(((n + 1) % 16384))
  done
  it_fail "host2: no free /30 in 10.222.0.0/16"
}

# h2_prepare_dirs — the private directories the namespace mounts.
h2_prepare_dirs() {
  local d f
  mkdir -p "$H2_DIR"/{run,lib,cache,etc,log}
  chmod 0755 "$H2_DIR" "$H2_DIR/run" "$H2_DIR/lib" "$H2_DIR/log"
  chmod 0711 "$H2_DIR/cache"
  # /var/lib/libvirt: the directory skeleton with this machine's owners
  # and modes (qemu/ belongs to libvirt-qemu), none of its contents.
  for d in boot images qemu sanlock dnsmasq network; do
    [ -d "/var/lib/libvirt/$d" ] || continue
    mkdir "$H2_DIR/lib/$d"
    chown --reference="/var/lib/libvirt/$d" "$H2_DIR/lib/$d"
    chmod --reference="/var/lib/libvirt/$d" "$H2_DIR/lib/$d"
  done
  mkdir -p "$H2_DIR/log/qemu"
  # /var/cache/libvirt: the QEMU capability cache only.
  if [ -d /var/cache/libvirt/qemu ]; then
    cp -a /var/cache/libvirt/qemu "$H2_DIR/cache/"
  fi
  # /etc/libvirt: the daemons' *.conf and the nwfilter templates; no
  # definition, secret or hook of this machine's.
  for f in /etc/libvirt/*.conf; do cp -a "$f" "$H2_DIR/etc/"; done
  [ ! -d /etc/libvirt/nwfilter ] || cp -a /etc/libvirt/nwfilter "$H2_DIR/etc/"
  mkdir -p "$H2_DIR/etc/qemu/networks/autostart" "$H2_DIR/etc/qemu/autostart" \
    "$H2_DIR/etc/storage/autostart" "$H2_DIR/etc/secrets" "$H2_DIR/etc/hooks"
  chmod 0700 "$H2_DIR/etc/secrets"
  {
    printf '\n# host2_lib.sh: the second host listens on its veth address only\n'
    printf 'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n'
    printf 'listen_addr = "%s"\n' "$H2_ADDR"
  } >>"$H2_DIR/etc/libvirtd.conf"
}

# h2_start — create the namespaces, the veth pair and start the daemons.
h2_start() {
  local tool i
  [ -n "$T" ] || it_fail "h2_start before it_init"
  for tool in unshare nsenter ip libvirtd virtlogd; do
    command -v "$tool" >/dev/null 2>&1 || it_skip "$tool is not installed (a second libvirt host needs it)"
  done
  unshare -m -n --propagation private true 2>/dev/null ||
    it_skip "cannot create mount and network namespaces here (unshare -m -n failed)"
  H2_DIR="$T/h2"
  H2_VETH="h2a$$"
  H2_VETH_NS="h2b$$"
  ip link show "$H2_VETH" >/dev/null 2>&1 && it_fail "host2: interface $H2_VETH already exists (not ours)"
  h2_pick_net
  H2_URI="qemu+tcp://$H2_ADDR/system"
  H2_LOG="$H2_DIR/libvirtd.log"
  IT_CLEANUP_HOOKS+=(h2_stop)
  h2_prepare_dirs

  # The holder: its mounts, then lo up, then a mark; sh and unshare exec
  # in place, so $! is the process that keeps both namespaces alive.
  unshare -m -n --propagation private -- sh -c "
    set -e
    mount --bind '$H2_DIR/run' /run/libvirt
    mount --bind '$H2_DIR/lib' /var/lib/libvirt
    mount --bind '$H2_DIR/cache' /var/cache/libvirt
    mount --bind '$H2_DIR/etc' /etc/libvirt
    mount --bind '$H2_DIR/log' /var/log/libvirt
    if [ -d /run/dbus ]; then mount -t tmpfs -o mode=0755,size=1m h2dbus /run/dbus; fi
    umount -R /sys
    mount -t sysfs h2sys /sys
    ip link set lo up
    : >'$H2_DIR/holder.ready'
    exec sleep infinity" >"$H2_DIR/holder.log" 2>&1 </dev/null &
  H2_HOLD_PID=$!
  # Not a job of this shell: bash would print "Killed" and the whole
  # command line when h2_stop kills it. bash still reaps it.
  disown "$H2_HOLD_PID"
  for ((i = 0; i < 100; i++)); do
    [ -e "$H2_DIR/holder.ready" ] && break
    kill -0 "$H2_HOLD_PID" 2>/dev/null || { cat "$H2_DIR/holder.log" >&2; it_fail "host2: the namespace holder exited"; }
    sleep 0.05
  done
  [ -e "$H2_DIR/holder.ready" ] || it_fail "host2: the namespace holder did not get ready in 5 s"
  H2_MNTNS=$(readlink "/proc/$H2_HOLD_PID/ns/mnt")
  H2_NETNS=$(readlink "/proc/$H2_HOLD_PID/ns/net")
  [ "$H2_MNTNS" != "$(readlink /proc/self/ns/mnt)" ] || it_fail "host2: holder shares our mount namespace"
  [ "$H2_NETNS" != "$(readlink /proc/self/ns/net)" ] || it_fail "host2: holder shares our network namespace"

  ip link add "$H2_VETH" type veth peer name "$H2_VETH_NS" || it_fail "host2: ip link add $H2_VETH"
  ip link set "$H2_VETH_NS" netns "$H2_HOLD_PID" || it_fail "host2: move $H2_VETH_NS into the namespace"
  ip addr add "$H2_PEER/30" dev "$H2_VETH" || it_fail "host2: address $H2_PEER on $H2_VETH"
  ip link set "$H2_VETH" up || it_fail "host2: $H2_VETH up"
  h2_run ip addr add "$H2_ADDR/30" dev "$H2_VETH_NS" || it_fail "host2: address $H2_ADDR in the namespace"
  h2_run ip link set "$H2_VETH_NS" up || it_fail "host2: $H2_VETH_NS up"

  # nsenter without -p execs in place: $! is virtlogd itself.
  nsenter -t "$H2_HOLD_PID" -m -n -- virtlogd -p "$H2_DIR/virtlogd.pid" \
    >"$H2_DIR/virtlogd.log" 2>&1 </dev/null &
  H2_LOGD_PID=$!
  for ((i = 0; i < 100; i++)); do
    h2_run test -S /run/libvirt/virtlogd-sock && break
    kill -0 "$H2_LOGD_PID" 2>/dev/null || { cat "$H2_DIR/virtlogd.log" >&2; it_fail "host2: virtlogd exited at start"; }
    sleep 0.05
  done
  h2_run test -S /run/libvirt/virtlogd-sock || it_fail "host2: virtlogd has no socket after 5 s"
  h2_libvirtd_start
  h2_log "libvirtd pid $H2_PID, virtlogd pid $H2_LOGD_PID, namespaces held by pid $H2_HOLD_PID; veth $H2_VETH $H2_PEER <-> $H2_VETH_NS $H2_ADDR; $H2_URI"
}

# h2_libvirtd_start — start libvirtd in the namespaces (first start and
# restart alike) and wait until it answers on H2_URI.
h2_libvirtd_start() {
  local i
  if [ -z "$H2_HOLD_PID" ] || ! kill -0 "$H2_HOLD_PID" 2>/dev/null; then
    it_fail "host2: its namespaces are gone"
  fi
  printf -- '---- libvirtd start %s ----\n' "$(date +%T.%3N)" >>"$H2_LOG"
  nsenter -t "$H2_HOLD_PID" -m -n -- libvirtd --listen -f /etc/libvirt/libvirtd.conf \
    --pid-file "$H2_DIR/libvirtd.pid" >>"$H2_LOG" 2>&1 </dev/null &
  H2_PID=$!
  for ((i = 0; i < 600; i++)); do
    timeout 10 virsh -q -c "$H2_URI" version >/dev/null 2>&1 && break
    kill -0 "$H2_PID" 2>/dev/null || { tail -n 30 "$H2_LOG" >&2; H2_PID=""; it_fail "host2: libvirtd exited at start"; }
    sleep 0.1
  done
  timeout 10 virsh -q -c "$H2_URI" version >/dev/null 2>&1 ||
    it_fail "host2: libvirtd does not answer on $H2_URI after 60 s"
  [ "$(cat "/proc/$H2_PID/comm")" = libvirtd ] || it_fail "host2: pid $H2_PID is not libvirtd"
  [ "$(readlink "/proc/$H2_PID/ns/mnt")" = "$H2_MNTNS" ] || it_fail "host2: libvirtd is not in its mount namespace"
  [ "$(readlink "/proc/$H2_PID/ns/net")" = "$H2_NETNS" ] || it_fail "host2: libvirtd is not in its network namespace"
}

# h2_reap PID — wait for our child PID, quietly (bash reports a child
# killed by a signal as "Killed" with its command line: noise in the log).
h2_reap() {
  { wait "$1"; } 2>/dev/null || true
}

# h2_kill — the second host goes away: SIGKILL to its libvirtd (QEMUs,
# virtlogd and the namespaces stay). Waits until it is gone.
h2_kill() {
  [ -n "$H2_PID" ] || it_fail "h2_kill: the second libvirtd is not running"
  kill -KILL "$H2_PID" || it_fail "h2_kill: kill -9 $H2_PID"
  h2_reap "$H2_PID"
  H2_PID=""
  it_poll 5 sh -c "! virsh -q -c '$H2_URI' version" || it_fail "h2_kill: $H2_URI still answers"
  h2_log "libvirtd killed (SIGKILL)"
}

# h2_restart — start the second libvirtd again, same namespaces and state.
h2_restart() {
  [ -z "$H2_PID" ] || it_fail "h2_restart: libvirtd (pid $H2_PID) still runs; h2_kill first"
  h2_libvirtd_start
  h2_log "libvirtd restarted: pid $H2_PID"
}

# h2_ns_pids — every process in the second host's network namespace: the
# holder, the daemons and the QEMUs (libvirt starts each QEMU in a mount
# namespace of its own, a copy of the daemon's, so the mount namespace
# does not find them; the network namespace is inherited).
h2_ns_pids() {
  local p
  [ -n "$H2_NETNS" ] || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$H2_NETNS" ] && printf '%s\n' "${p#/proc/}"
  done
  return 0
}

# h2_stop — tear everything down (see the header). Idempotent.
h2_stop() {
  local dom pids pid alive i ok=0 nsfd=""
  local - # set +e for this function only: it also runs from a test's body
  set +e
  if [ -n "$H2_PID" ] && kill -0 "$H2_PID" 2>/dev/null; then
    for dom in $(timeout 30 virsh -q -c "$H2_URI" list --all --name 2>/dev/null); do
      timeout 30 virsh -q -c "$H2_URI" destroy "$dom" >/dev/null 2>&1
      timeout 30 virsh -q -c "$H2_URI" undefine --snapshots-metadata "$dom" >/dev/null 2>&1
    done
  fi
  if [ "${IT_RC:-0}" -ne 0 ] && [ "${IT_RC:-0}" -ne 77 ] && [ -n "$H2_LOG" ] && [ -s "$H2_LOG" ]; then
    echo "[$IT_NAME] ---- host2 libvirtd log (last 50 lines) ----" >&2
    tail -n 50 "$H2_LOG" >&2
  fi
  # Hold the network namespace open while its processes are looked for
  # and killed: the kernel gives a freed namespace's inode number to the
  # next namespace made, and another test's second host started meanwhile
  # would then carry H2_NETNS — its processes found, and killed, as ours.
  # Held, ours cannot be freed until we let go below; a holder already
  # gone leaves nothing to tell ours from another's: nothing is scanned.
  if [ -n "$H2_NETNS" ]; then
    nsfd=""
    if [ -n "$H2_HOLD_PID" ]; then
      # (braces: a redirection on exec itself would stay for the shell)
      { exec {nsfd}<"/proc/$H2_HOLD_PID/ns/net"; } 2>/dev/null || nsfd=""
    fi
    if [ -z "$nsfd" ] || [ "$(readlink "/proc/self/fd/$nsfd")" != "$H2_NETNS" ]; then
      [ -z "$nsfd" ] || exec {nsfd}<&-
      nsfd=""
      echo "[$IT_NAME] FAIL: host2: its namespace holder (pid ${H2_HOLD_PID:-?}) is gone: its namespace cannot be told from another's, nothing in it is killed" >&2
      H2_NETNS=""
      ok=1
    fi
  fi
  # The daemons first (politely), then whatever else is in there: QEMUs
  # the second libvirtd started (when it was killed or could not destroy
  # them), and the holder.
  for pid in $H2_PID $H2_LOGD_PID; do kill -TERM "$pid" 2>/dev/null; done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in $H2_PID $H2_LOGD_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for ((i = 0; i < 50; i++)); do
    pids=$(h2_ns_pids)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null
    sleep 0.1
  done
  for pid in $H2_PID $H2_LOGD_PID; do h2_reap "$pid"; done
  if [ -n "$(h2_ns_pids)" ]; then
    echo "[$IT_NAME] FAIL: host2: processes survive in its namespace: $(h2_ns_pids | tr '\n' ' ')" >&2
    ok=1
  fi
  [ -z "$nsfd" ] || exec {nsfd}<&-
  H2_PID="" H2_LOGD_PID="" H2_HOLD_PID=""
  if [ -n "$H2_VETH" ]; then
    # The namespace's end went with the namespace, and with it the pair;
    # delete ours if it is still there.
    ! ip link show "$H2_VETH" >/dev/null 2>&1 || ip link del "$H2_VETH" 2>/dev/null
    if ip link show "$H2_VETH" >/dev/null 2>&1; then
      echo "[$IT_NAME] FAIL: host2: $H2_VETH still exists" >&2
      ok=1
    fi
    H2_VETH=""
  fi
  H2_MNTNS="" H2_NETNS=""
  return "$ok"
}

# h2_mount_fleet [EXTRA_OPTS] — chainfs on $T/mnt with two hosts: this
# machine's libvirtd as "local" ($IT_URI) and the second host as "remote"
# ($H2_URI); state_dir $T/state (each host's journal in
# $T/state/hosts/NAME/), no overlay_dir (overlays beside the active
# image, on each disk's own host). Like it_mount: IT_PID, MNT, IT_LOG, and
# it_cleanup unmounts it; fault_remount-style restarts call it again.
h2_mount_fleet() {
  local opts="state_dir=$T/state"
  [ -n "$H2_URI" ] || it_fail "h2_mount_fleet before h2_start"
  [ -n "${1:-}" ] && opts="$opts,$1"
  MNT="$T/mnt"
  mkdir -p "$MNT"
  "$CHAINFS" -f -c "local=$IT_URI" -c "remote=$H2_URI" -o "$opts" "$MNT" >>"$IT_LOG" 2>&1 &
  IT_PID=$!
  it_poll 10 mountpoint -q "$MNT" || {
    kill -0 "$IT_PID" 2>/dev/null || it_fail "chainfs exited before mounting"
    it_fail "chainfs did not mount $MNT within 10 s"
  }
  it_log "chainfs (pid $IT_PID) mounted local=$IT_URI and remote=$H2_URI on $MNT"
}

# h2_fleet_journals_empty — after h2_mount_fleet: both hosts' journals
# ($T/state/hosts/NAME/journal) have no entry left.
h2_fleet_journals_empty() {
  local h
  for h in local remote; do
    if grep -q '[^[:space:]]' "$T/state/hosts/$h/journal" 2>/dev/null; then
      it_fail "the $h host's journal still has entries: $(cat "$T/state/hosts/$h/journal")"
    fi
  done
  it_log "ok: both hosts' journals (state/hosts/NAME/journal) are empty"
}

# h2_fleet_logs_named REMOTE_DOM LOCAL_DOM — every log line about either
# domain begins with its host's name (the two hosts number their jobs
# each from 1: "job 1" is on both).
h2_fleet_logs_named() {
  local pair h dom bare
  for pair in "remote $1" "local $2"; do
    h=${pair%% *} dom=${pair#* }
    bare=$(grep -E "chainfs [a-z]+: .*$dom" "$IT_LOG" | grep -vE "chainfs [a-z]+: host $h: " || true)
    [ -z "$bare" ] || it_fail "log lines about $dom without 'host $h:':"$'\n'"$bare"
  done
  it_log "ok: every log line about either domain names its host"
}

#!/usr/bin/env bash
# scale.sh — chainfs at scale (issue 12 item 5): many domains, deep chains,
# a second host. Every figure is printed beside a baseline measured in the
# same run (virsh, or the shallow chain), with the issue's target and
# PASS/MISS. Not part of CI:
#
#     sudo bash tests/bench/scale.sh                      # all parts
#     sudo N_DOMS=50 PARTS=A bash tests/bench/scale.sh    # a quick try
#     sudo DEPTH=1000 PARTS=B bash tests/bench/scale.sh
#
# Knobs (environment): PARTS ("A B C"), N_DOMS (1000), N_RUNNING (4; at
# most 4 under TCG), N_LEAK (= N_DOMS) and LEAK_ROUNDS (3) for the
# define/undefine loop, N_VIS (7) define-to-visible runs, N (7) runs of the
# short operations, N_CHAIN (3) runs of the whole-mount reads, IDLE_S (10)
# seconds of idle CPU, DEPTH (500) and SHALLOW (5) for part B, N_B (5) runs
# there, N_C (5) runs of part C. Time budgets (seconds): LOOP_MAX_S (120)
# for the per-domain virsh loop (then time per domain x N), VIS_MAX_S (300)
# for the define-to-visible runs, LEAK_MAX_S (300) per virsh batch of the
# loop, VIRSH_MAX_S (120) per virsh call. CHAINFS defaults to
# build/fs/fuse/chainfs; CHAINFS_VIRT_TYPE=qemu forces TCG.
#
# Nothing runs on this machine's shared libvirtd: every domain is defined
# on a second libvirtd of the script's own, in a mount and network
# namespace (tests/integration/host2_lib.sh), so that no other mount lists
# them. In parts A and B chainfs runs inside those namespaces, on
# qemu:///system there: the daemon is local to chainfs, as on a hypervisor
# (the measuring commands run in there too, through `--inner`). Part C
# mounts the same daemon from here over qemu+tcp: a remote host.
#
# A. N_DOMS domains, each on its own 3-layer qcow2 chain (4 KiB clusters,
#    relative backing names, copied from one template), defined by one
#    virsh process reading `define` lines; N_RUNNING of them started.
#    chainfs is started (`chainfs -f ... &`, its VmRSS read from
#    /proc/$!/status) and timed to the mount and to every domain listed;
#    then `ls MNT` (median of N), `cat MNT/*/vda/chain` against a loop of
#    `virsh domblklist` and one `virsh domstats --block --backing`, VmRSS,
#    define-to-visible (virsh define returned -> stat MNT/NAME succeeds,
#    polled every 2 ms; median and max of N_VIS), and the acceptance loop:
#    N_LEAK more names defined (one virsh) until all show, undefined until
#    none shows, LEAK_ROUNDS times; VmRSS before/after, and `ls MNT` equal
#    to `virsh list --all --name` at the end.
# B. A DEPTH-layer chain against a SHALLOW-layer one (shut off: libvirt 9.0
#    starts no domain on more than 200 layers), built with `qemu-img create
#    -u` (O(1) per layer) and 4 KiB clusters: cat chain, ls snapshots/,
#    stat of every snapshot directory (one stat(1) of all, per directory),
#    mkdir, rmdir of a middle layer + cat wait. Mutations run on their own
#    copy of the shallow chain each run, and on successive middle layers of
#    the deep one (its length moves by at most N_B).
# C. A running domain on the second host: mkdir / rmdir + cat wait through
#    the mount against `virsh -c URI snapshot-create-as --disk-only
#    --atomic` / `blockcommit --active --pivot --wait` over the same URI.
#    With a chainfs that takes several hosts (`-c NAME=URI`, issue 12),
#    the mount is `-c local=qemu:///system -c remote=URI` (when the local
#    libvirtd answers) and the domain is MNT/remote/DOM; else the remote
#    URI alone. Either way the images are on storage both hosts see.
#
# At exit (pass, fail, SIGINT, SIGTERM) everything is torn down: the
# mounts, the second libvirtd with all its domains and QEMUs, the veth, the
# files. A run killed with SIGKILL leaves its /var/tmp/cfsbench-PID.* and
# namespace: the next run removes those of dead PIDs (nothing else).
# shellcheck disable=SC2317 # functions called through ms, by name
set -euo pipefail
SCALE_SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

# ---- shared by both sides (here and --inner) --------------------------------

# now_us — microseconds, without a fork.
now_us() { local t=${EPOCHREALTIME//[!0-9]/}; printf '%s\n' "$t"; }
# fmt_ms MICROSECONDS — "12.345"
fmt_ms() { printf '%d.%03d\n' $(($1 / 1000)) $(($1 % 1000)); }
# ms CMD... — run CMD (output discarded), print its wall time in ms.
ms() {
  local t0 t1
  t0=${EPOCHREALTIME//[!0-9]/}
  "$@" >/dev/null || { echo "scale: failed: $*" >&2; return 1; }
  t1=${EPOCHREALTIME//[!0-9]/}
  fmt_ms $((t1 - t0))
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (!NR) print "fail"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maxof() { sort -n | awk 'END { print NR ? $1 : "fail" }'; }
# rss_kib PID — the process's VmRSS in KiB
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null || echo -; }
# put FILE KEY VALUE / get FILE KEY — results between the two sides
put() { printf '%s=%s\n' "$2" "$3" >>"$1"; }
get() { awk -F= -v k="$2" '$1 == k { v = substr($0, length(k) + 2) } END { print (v == "") ? "-" : v }' "$1"; }
slog() { printf '[scale %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }

# The domain XML: 64 MiB, no OS, one virtio qcow2 disk (it_domain_xml
# without its qemu-img call per file).
dom_xml() { # NAME FILE TYPE
  printf "<domain type='%s'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>" "$3" "$1"
  printf "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
  printf "<on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices>"
  printf "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>" "$2"
  printf "</devices></domain>\n"
}

# ---- inside the second host's namespaces (--inner) -----------------------

CFS_PID=""
CFS_MNT=""
inner_unmount() {
  local i st=0
  [ -n "$CFS_MNT" ] || return 0
  if mountpoint -q "$CFS_MNT"; then
    for ((i = 0; i < 20; i++)); do
      fusermount3 -u "$CFS_MNT" 2>/dev/null && break
      sleep 0.5
    done
    mountpoint -q "$CFS_MNT" && fusermount3 -u -z "$CFS_MNT"
  fi
  if [ -n "$CFS_PID" ]; then
    for ((i = 0; i < 100; i++)); do kill -0 "$CFS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$CFS_PID" 2>/dev/null && kill -TERM "$CFS_PID"
    wait "$CFS_PID" || st=$?
    slog "chainfs (pid $CFS_PID) exited $st"
    CFS_PID=""
  fi
  CFS_MNT=""
  return "$st"
}

# inner_mount DIR — chainfs -f on qemu:///system (the second host's own
# daemon, local here) on DIR/mnt; returns when mounted; times in DIR/results.
inner_mount() {
  local d=$1 t0 i
  CFS_MNT="$d/mnt"
  mkdir -p "$CFS_MNT" "$d/state" "$d/overlays"
  t0=$(now_us)
  "$CHAINFS" -f -c qemu:///system -o "state_dir=$d/state,overlay_dir=$d/overlays" "$CFS_MNT" >>"$d/chainfs.log" 2>&1 &
  CFS_PID=$!
  echo "$CFS_PID" >"$d/chainfs.pid"
  for ((i = 0; i < 12000; i++)); do
    mountpoint -q "$CFS_MNT" && break
    kill -0 "$CFS_PID" 2>/dev/null || { tail -n 20 "$d/chainfs.log" >&2; CFS_PID=""; return 1; }
    sleep 0.005
  done
  mountpoint -q "$CFS_MNT" || return 1
  put "$d/results" mount_us $(($(now_us) - t0))
  MOUNT_T0=$t0
}

# count_prefix DIR PREFIX — names in DIR starting with PREFIX
count_prefix() {
  local f n=0
  for f in "$1/$2"*; do [ ! -e "$f" ] || n=$((n + 1)); done
  echo "$n"
}

# wait_count DIR PREFIX N TIMEOUT_S — until DIR lists N names with PREFIX;
# prints the microseconds it took, or returns 1.
wait_count() {
  local t0 dl
  t0=$(now_us)
  dl=$((t0 + $4 * 1000000))
  until [ "$(count_prefix "$1" "$2")" -eq "$3" ]; do
    [ "$(now_us)" -lt "$dl" ] || return 1
    sleep 0.02
  done
  echo $(($(now_us) - t0))
}

# cpu_ticks PID — user + system clock ticks the process has used
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# vloop MAX_S — `virsh domblklist` of every domain, one process each (the
# per-domain loop a script would run). Stops after MAX_S seconds and
# prints the time it took per domain x the number of domains, and how
# many it did: "MS DONE".
vloop() {
  local n names t0 k=0 dl
  names=$(virsh -q -c qemu:///system list --all --name | sed '/^$/d')
  t0=$(now_us)
  dl=$((t0 + $1 * 1000000))
  for n in $names; do
    virsh -q -c qemu:///system domblklist "$n" >/dev/null || return 1
    k=$((k + 1))
    [ "$(now_us)" -lt "$dl" ] || break
  done
  awk -v us=$(($(now_us) - t0)) -v k="$k" -v n="$(printf '%s\n' "$names" | wc -l)" \
    'BEGIN { printf "%.3f %d\n", us / 1000 / k * n, k }'
}

# wait_dir DIR TIMEOUT_S — until DIR exists
wait_dir() {
  local dl=$(($(now_us) + $2 * 1000000))
  until [ -d "$1" ]; do
    [ "$(now_us)" -lt "$dl" ] || return 1
    sleep 0.02
  done
}

inner_a() {
  local d="$T/a" r="$T/a/results" m i k t name t0 t1 dl vis c0 l0 lv
  trap 'inner_unmount' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cat_all() { cat "$m"/*/vda/chain; }
  domstats_all() { timeout "$VIRSH_MAX_S" virsh -q -c qemu:///system domstats --block --backing; }

  # The baselines first, on a libvirtd nothing else queries.
  slog "A: baselines before the mount: virsh domstats --block --backing x$N_CHAIN, the domblklist loop (at most ${LOOP_MAX_S}s)"
  : >"$d/domstats.t"
  for ((i = 0; i <= N_CHAIN; i++)); do
    t=$(ms domstats_all) || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/domstats.t"
  done
  put "$r" domstats_ms "$(median <"$d/domstats.t")"
  t=$(vloop "$LOOP_MAX_S") || t="fail 0"
  put "$r" loop_ms "${t% *}"
  put "$r" loop_done "${t#* }"

  inner_mount "$d" || { put "$r" error "chainfs did not mount"; return 1; }
  m=$CFS_MNT
  slog "A: mounted; waiting for the $N_DOMS domains to show"
  if wait_count "$m" "$PFX-s" "$N_DOMS" 600 >/dev/null; then
    put "$r" ready_us $(($(now_us) - MOUNT_T0))
  else
    put "$r" ready_us fail
  fi
  put "$r" rss_ready "$(rss_kib "$CFS_PID")"
  # every chain there, 3 layers each (untimed check)
  put "$r" chains_ok "$(cat "$m"/"$PFX"-s*/vda/chain | grep -c '^layers: *3$' || true)"

  slog "A: ls MNT x$N, cat MNT/*/vda/chain x$N_CHAIN"
  : >"$d/ls.t"
  for ((i = 0; i <= N; i++)); do
    t=$(ms ls "$m") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/ls.t"
  done
  put "$r" ls_ms "$(median <"$d/ls.t")"
  : >"$d/chain.t"
  for ((i = 0; i <= N_CHAIN; i++)); do
    t=$(ms cat_all) || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/chain.t"
  done
  put "$r" chain_ms "$(median <"$d/chain.t")"
  put "$r" rss_reads "$(rss_kib "$CFS_PID")"

  slog "A: ${IDLE_S}s with nothing asked: chainfs's and libvirtd's CPU"
  c0=$(cpu_ticks "$CFS_PID")
  l0=$(cpu_ticks "$H2_PID")
  sleep "$IDLE_S"
  put "$r" cpu_idle "$(awk -v a="$c0" -v b="$(cpu_ticks "$CFS_PID")" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_S" 'BEGIN { printf "%.1f", (b - a) / hz / s * 100 }')"
  put "$r" cpu_libvirtd "$(awk -v a="$l0" -v b="$(cpu_ticks "$H2_PID")" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_S" 'BEGIN { printf "%.1f", (b - a) / hz / s * 100 }')"
  put "$r" rss_idle "$(rss_kib "$CFS_PID")"
  t=$(ms domstats_all) || t=fail
  put "$r" domstats_mounted_ms "$t"

  slog "A: define -> visible x$N_VIS (at most ${VIS_MAX_S}s)"
  : >"$d/vis.t"
  dl=$(($(now_us) + VIS_MAX_S * 1000000))
  for ((i = 1; i <= N_VIS; i++)); do
    [ "$(now_us)" -lt "$dl" ] || break
    name="$PFX-v$i"
    timeout "$VIRSH_MAX_S" virsh -q -c qemu:///system define "$d/xml/v$i.xml" >/dev/null || { echo fail >>"$d/vis.t"; continue; }
    t0=$(now_us)
    vis=1
    until [ -d "$m/$name" ]; do
      [ "$(now_us)" -lt $((t0 + 60000000)) ] || { vis=0; break; }
      sleep 0.002
    done
    t1=$(now_us)
    if [ "$vis" = 1 ]; then fmt_ms $((t1 - t0)) >>"$d/vis.t"; else echo "fail" >>"$d/vis.t"; fi
    timeout "$VIRSH_MAX_S" virsh -q -c qemu:///system undefine "$name" >/dev/null || true
    wait_count "$m" "$name" 0 60 >/dev/null || true
  done
  put "$r" vis_runs "$(wc -l <"$d/vis.t")"
  put "$r" vis_fails "$(grep -c fail "$d/vis.t" || true)"
  put "$r" vis_ms "$(grep -v fail "$d/vis.t" | median)"
  if grep -q fail "$d/vis.t"; then put "$r" vis_max_ms fail; else put "$r" vis_max_ms "$(maxof <"$d/vis.t")"; fi

  slog "A: the define/undefine loop: $N_LEAK names x$LEAK_ROUNDS rounds (each batch at most ${LEAK_MAX_S}s)"
  sleep 2
  put "$r" rss_leak0 "$(rss_kib "$CFS_PID")"
  put "$r" leak_rounds 0
  for ((k = 1; k <= LEAK_ROUNDS; k++)); do
    t0=$(now_us)
    for ((i = 1; i <= N_LEAK; i++)); do echo "define $d/xml/L$i.xml"; done |
      timeout "$LEAK_MAX_S" virsh -q -c qemu:///system >/dev/null 2>"$d/leak-define.err" || true
    t1=$(now_us)
    put "$r" leak_define_us_$k $((t1 - t0))
    lv=$(virsh -q -c qemu:///system list --all --name | grep -c "^$PFX-L" || true)
    put "$r" leak_defined_$k "$lv"
    t=$(wait_count "$m" "$PFX-L" "$lv" 300) || t=fail
    put "$r" leak_visible_us_$k "$t"
    put "$r" rss_leak_peak_$k "$(rss_kib "$CFS_PID")"
    t0=$(now_us)
    for ((i = 1; i <= N_LEAK; i++)); do echo "undefine $PFX-L$i"; done |
      timeout "$LEAK_MAX_S" virsh -q -c qemu:///system >/dev/null 2>"$d/leak-undefine.err" || true
    put "$r" leak_undefine_us_$k $(($(now_us) - t0))
    lv=$(virsh -q -c qemu:///system list --all --name | grep -c "^$PFX-L" || true)
    put "$r" leak_left_$k "$lv"
    t=$(wait_count "$m" "$PFX-L" "$lv" 300) || t=fail
    put "$r" leak_gone_us_$k "$t"
    put "$r" rss_leak_$k "$(rss_kib "$CFS_PID")"
    put "$r" leak_rounds "$k"
    slog "A: round $k: $(get "$r" "leak_defined_$k") defined in $(get "$r" "leak_define_us_$k") us, all shown after $(get "$r" "leak_visible_us_$k") us, undefined in $(get "$r" "leak_undefine_us_$k") us ($lv left), shown as libvirt has them after $t us, VmRSS $(rss_kib "$CFS_PID") KiB"
    [ "$(get "$r" "leak_defined_$k")" -eq "$N_LEAK" ] || { slog "A: the batch did not define all $N_LEAK in ${LEAK_MAX_S}s: no more rounds"; break; }
    [ "$lv" -eq 0 ] || { slog "A: the batch did not undefine all $N_LEAK in ${LEAK_MAX_S}s: no more rounds"; break; }
  done
  sleep 2
  put "$r" rss_leak_end "$(rss_kib "$CFS_PID")"
  # no stale entry: the mount lists exactly libvirt's domains
  # shellcheck disable=SC2012 # names are ours: [A-Za-z0-9-]
  ls -1 "$m" | sort >"$d/ls.end"
  virsh -q -c qemu:///system list --all --name | sed '/^$/d' | sort >"$d/virsh.end"
  put "$r" stale "$(comm -23 "$d/ls.end" "$d/virsh.end" | wc -l)"
  put "$r" missing "$(comm -13 "$d/ls.end" "$d/virsh.end" | wc -l)"
  put "$r" count_end "$(count_prefix "$m" "$PFX-s")"
  inner_unmount || put "$r" error "chainfs exited non-zero"
  # what a timed-out batch left defined goes now (quickly: nothing mounted)
  virsh -q -c qemu:///system list --all --name | grep "^$PFX-L" | sed 's/^/undefine /' |
    timeout "$LEAK_MAX_S" virsh -q -c qemu:///system >/dev/null 2>&1 || true
  put "$r" finished 1
}

inner_b() {
  local d="$T/b" r="$T/b/results" m i t n V S label
  trap 'inner_unmount' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  inner_mount "$d" || { put "$r" error "chainfs did not mount"; return 1; }
  m=$CFS_MNT
  for ((i = 0; i <= N_B; i++)); do
    wait_dir "$m/$PFX-sh$i" 120 || { put "$r" error "$PFX-sh$i did not show"; return 1; }
  done
  wait_dir "$m/$PFX-deep" 120 || { put "$r" error "$PFX-deep did not show"; return 1; }
  V="$m/$PFX-deep/vda"
  put "$r" deep_layers "$(sed -n 's/^layers: *//p' "$V/chain")"
  put "$r" shallow_layers "$(sed -n 's/^layers: *//p' "$m/$PFX-sh0/vda/chain")"
  stat_all() { stat -- "$1"/snapshots/* >/dev/null; }
  for label in deep shallow; do
    if [ "$label" = deep ]; then S=$V; else S="$m/$PFX-sh0/vda"; fi
    # shellcheck disable=SC2012 # names are ours: [A-Za-z0-9.-]
    n=$(ls -1 "$S/snapshots" | wc -l)
    put "$r" "${label}_snaps" "$n"
    : >"$d/$label.chain.t"
    : >"$d/$label.ls.t"
    : >"$d/$label.stat.t"
    : >"$d/$label.stat1.t"
    slog "B: $label: cat chain, ls snapshots/ ($n), stat of each, x$N"
    for ((i = 0; i <= N; i++)); do
      t=$(ms cat "$S/chain") || t=fail
      [ "$i" -eq 0 ] || echo "$t" >>"$d/$label.chain.t"
      t=$(ms ls "$S/snapshots") || t=fail
      [ "$i" -eq 0 ] || echo "$t" >>"$d/$label.ls.t"
      t=$(ms stat_all "$S") || t=fail
      [ "$i" -eq 0 ] || {
        echo "$t" >>"$d/$label.stat.t"
        [ "$t" = fail ] || awk -v t="$t" -v n="$n" 'BEGIN { printf "%.4f\n", t / n }' >>"$d/$label.stat1.t"
      }
    done
    put "$r" "${label}_chain_ms" "$(median <"$d/$label.chain.t")"
    put "$r" "${label}_ls_ms" "$(median <"$d/$label.ls.t")"
    put "$r" "${label}_stat_ms" "$(median <"$d/$label.stat.t")"
    put "$r" "${label}_stat1_ms" "$(median <"$d/$label.stat1.t")"
  done
  rmdir_wait() { # DISKDIR NAME
    rmdir "$1/snapshots/$2" && cat "$1/wait" >/dev/null &&
      grep -q '^state: *completed$' "$1/job"
  }
  slog "B: mkdir and rmdir of a middle layer + cat wait, x$N_B (+1 warm-up)"
  : >"$d/deep.mkdir.t"
  : >"$d/shallow.mkdir.t"
  : >"$d/deep.rmdir.t"
  : >"$d/shallow.rmdir.t"
  for ((i = 0; i <= N_B; i++)); do
    S="$m/$PFX-sh$i/vda"
    t=$(ms mkdir "$V/snapshots/m$i") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/deep.mkdir.t"
    t=$(ms mkdir "$S/snapshots/m$i") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/shallow.mkdir.t"
    t=$(ms rmdir_wait "$V" "l$((DEPTH / 2 + i))") || { t=fail; tail -n 3 "$V/job" >&2 || true; }
    [ "$i" -eq 0 ] || echo "$t" >>"$d/deep.rmdir.t"
    t=$(ms rmdir_wait "$S" "l$((SHALLOW / 2))") || { t=fail; tail -n 3 "$S/job" >&2 || true; }
    [ "$i" -eq 0 ] || echo "$t" >>"$d/shallow.rmdir.t"
  done
  for label in deep shallow; do
    put "$r" "${label}_mkdir_ms" "$(grep -v fail "$d/$label.mkdir.t" | median)"
    put "$r" "${label}_rmdir_ms" "$(grep -v fail "$d/$label.rmdir.t" | median)"
    put "$r" "${label}_fails" "$(cat "$d/$label".*.t | grep -c fail || true)"
  done
  inner_unmount || put "$r" error "chainfs exited non-zero"
  put "$r" finished 1
}

if [ "${1:-}" = --inner ]; then
  "inner_$2"
  exit
fi

# ---- here: set-up, the parts, the table -------------------------------------

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/../integration/lib.sh"
# shellcheck source=tests/integration/host2_lib.sh
. "$(dirname "$0")/../integration/host2_lib.sh"
IT_NAME=scale
IT_PREFIX="cfsbench-$$"
PARTS=${PARTS:-A B C}
N=${N:-7}
N_DOMS=${N_DOMS:-1000}
N_RUNNING=${N_RUNNING:-4}
N_LEAK=${N_LEAK:-$N_DOMS}
LEAK_ROUNDS=${LEAK_ROUNDS:-3}
N_VIS=${N_VIS:-7}
N_CHAIN=${N_CHAIN:-3}
LOOP_MAX_S=${LOOP_MAX_S:-120}
IDLE_S=${IDLE_S:-10}
VIS_MAX_S=${VIS_MAX_S:-300}
LEAK_MAX_S=${LEAK_MAX_S:-300}
VIRSH_MAX_S=${VIRSH_MAX_S:-120}
DEPTH=${DEPTH:-500}
SHALLOW=${SHALLOW:-5}
N_B=${N_B:-5}
N_C=${N_C:-5}
PFX=$IT_PREFIX

# sc_sweep — what an earlier run killed with SIGKILL left: its directory
# /var/tmp/cfsbench-PID.*, PID dead, with the second host's namespace
# holder recorded in it (killed with everything in its network namespace,
# after checking it is that holder), its veth h2aPID, its mounts here.
sc_sweep() {
  local dir pid hold p mnt
  for dir in /var/tmp/cfsbench-*.*; do
    [ -d "$dir" ] || continue
    pid=${dir#/var/tmp/cfsbench-}
    pid=${pid%%.*}
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    ! kill -0 "$pid" 2>/dev/null || continue
    slog "sweep: $dir (pid $pid is gone)"
    # its QEMUs (guest=cfsbench-PID-...) and daemons (pid files in its
    # directory), then its namespace holder (checked by its mounts)
    for p in /proc/[0-9]*; do
      case "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" in
        *"guest=cfsbench-$pid-"* | *"$dir/"*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
      esac
    done
    hold=$(cat "$dir/h2/holder.pid" 2>/dev/null || true)
    if [ -n "$hold" ] && [ "$(tr '\0' ' ' 2>/dev/null <"/proc/$hold/cmdline")" = "sleep infinity " ] &&
      grep -q " $dir/h2/run " "/proc/$hold/mountinfo" 2>/dev/null; then
      kill -KILL "$hold" 2>/dev/null || true
    fi
    sleep 1
    ! ip link show "h2a$pid" >/dev/null 2>&1 || ip link del "h2a$pid" 2>/dev/null || true
    # shellcheck disable=SC2013 # mount points under our own $T: no spaces
    for mnt in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts); do
      fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf "$dir"
  done
}

# sc_init — it_init without the shared libvirtd (nothing runs on it).
sc_init() {
  local tool
  [ "$(id -u)" -eq 0 ] || it_skip "the scale benchmark needs root (a libvirtd of its own, FUSE)"
  [ -c /dev/fuse ] || it_skip "no /dev/fuse"
  for tool in virsh qemu-img jq python3 fusermount3 mountpoint nsenter unshare; do
    command -v "$tool" >/dev/null 2>&1 || it_skip "$tool is not installed (run scripts/deps.sh)"
  done
  # shellcheck source=scripts/libvirtd.sh
  . "$IT_ROOT/scripts/libvirtd.sh"
  [ -x "$CHAINFS" ] || it_fail "no chainfs binary at $CHAINFS (build it: ninja -C build)"
  sc_sweep
  T=$(mktemp -d "/var/tmp/$IT_PREFIX.XXXXXX")
  chmod 0755 "$T"
  mkdir -p "$T/state" "$T/overlays"
  IT_LOG="$T/chainfs.log"
  trap it_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  IT_VIRT_TYPE=$(libvirtd_virt_type) || it_fail "CHAINFS_VIRT_TYPE=$CHAINFS_VIRT_TYPE: expected kvm or qemu"
  it_log "temp dir $T, domains $IT_PREFIX-* on a libvirtd of its own, virt type $IT_VIRT_TYPE"
}

# sc_cleanup — before h2_stop: the mounts inside the namespaces, then all
# the second host's domains in one virsh.
sc_cleanup() {
  local part pid i
  set +e
  for part in a b; do
    [ -f "$T/$part/chainfs.pid" ] || continue
    pid=$(cat "$T/$part/chainfs.pid")
    if [ -n "$H2_HOLD_PID" ] && kill -0 "$H2_HOLD_PID" 2>/dev/null &&
      h2_run mountpoint -q "$T/$part/mnt" 2>/dev/null; then
      h2_run fusermount3 -u "$T/$part/mnt" 2>/dev/null || h2_run fusermount3 -u -z "$T/$part/mnt"
    fi
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  if [ -n "$H2_PID" ] && kill -0 "$H2_PID" 2>/dev/null; then
    {
      h2_virsh list --name | sed '/^$/d; s/^/destroy /'
      h2_virsh list --all --name | sed '/^$/d; s/^/undefine --snapshots-metadata /'
    } | timeout 600 virsh -q -c "$H2_URI" >/dev/null 2>&1
  fi
  return 0
}

# tpl DIR N — a template chain of N layers (4 KiB clusters, relative names
# l0.qcow2 ... l(N-1).qcow2, the last one active) in DIR.
tpl() {
  local dir=$1 n=$2 i
  mkdir -p "$dir"
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$dir/l0.qcow2" 64M
  for ((i = 1; i < n; i++)); do
    qemu-img create -q -f qcow2 -o cluster_size=4096 -u -b "l$((i - 1)).qcow2" -F qcow2 "$dir/l$i.qcow2" 64M
  done
}

# replicate TPL DEST PREFIX N XMLDIR NAMEPREFIX — N copies DEST/PREFIX<i>/ of
# the template dir and each one's domain XML XMLDIR/PREFIX<i>.xml (one
# python process: thousands of cp(1) cost seconds).
replicate() {
  python3 - "$@" "$(it_virt_type)" <<'PY'
import os, shutil, sys
tpl, dest, pfx, n, xmldir, npfx, vt = sys.argv[1:8]
files = sorted(os.listdir(tpl), key=lambda f: int(f[1:].split(".")[0]))
os.makedirs(xmldir, exist_ok=True)
for i in range(1, int(n) + 1):
    d = os.path.join(dest, "%s%d" % (pfx, i))
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    for f in files:
        shutil.copyfile(os.path.join(tpl, f), os.path.join(d, f))
    src = os.path.join(d, files[-1])
    with open(os.path.join(xmldir, "%s%d.xml" % (pfx, i)), "w") as x:
        x.write("<domain type='%s'><name>%s%d</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
                "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
                "<on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices>"
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
                "<target dev='vda' bus='virtio'/></disk></devices></domain>\n" % (vt, npfx, i, src))
PY
}

# batch_define XMLDIR PREFIX N — one virsh process defines them all
batch_define() {
  local i out
  out=$(for ((i = 1; i <= $3; i++)); do echo "define $1/$2$i.xml"; done | h2_virsh 2>&1 >/dev/null) || true
  [ -z "$out" ] || it_fail "defining $3 domains: $(printf '%s' "$out" | head -n 5)"
}

run_inner() { # PART
  export T PFX N N_DOMS N_LEAK LEAK_ROUNDS N_VIS N_CHAIN DEPTH SHALLOW N_B CHAINFS \
    LOOP_MAX_S IDLE_S VIS_MAX_S LEAK_MAX_S VIRSH_MAX_S H2_PID
  h2_run bash "$SCALE_SELF" --inner "$1"
}

# ---- the table ---------------------------------------------------------------
ROWS=()
MISSED=0
row_abs() { # LABEL VALUE UNIT TARGET(<=)
  local v=$2 ok
  if [ "$v" != fail ] && [ "$v" != - ] && awk -v v="$v" -v t="$4" 'BEGIN { exit !(v <= t) }'; then ok=PASS; else ok=MISS; MISSED=1; fi
  ROWS+=("$(printf '%-50s %10s %10s %7s %10s  %s' "$1" "$v" "-" "-" "<= $4 $3" "$ok")")
}
row_ratio() { # LABEL MINE BASE TARGET(<= ratio, or - for none)
  local r ok
  if [ "$2" = fail ] || [ "$3" = fail ] || [ "$2" = - ] || [ "$3" = - ]; then
    r=-
  else
    r=$(awk -v c="$2" -v v="$3" 'BEGIN { printf "%.2f", (v > 0) ? c / v : 0 }')
  fi
  if [ "$4" = - ]; then
    ok="(shown)"
  elif [ "$r" != - ] && awk -v r="$r" -v t="$4" 'BEGIN { exit !(r <= t) }'; then
    ok=PASS
  else
    ok=MISS
    MISSED=1
  fi
  local tg="<= $4"
  [ "$4" != - ] || tg=-
  ROWS+=("$(printf '%-50s %10s %10s %7s %10s  %s' "$1" "$2" "$3" "$r" "$tg" "$ok")")
}
row_note() { ROWS+=("$(printf '%-50s %s' "$1" "$2")"); }
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.1f\n", k / 1024 }'; }
num() { case "$1" in '' | *[!0-9]*) echo fail ;; *) echo "$1" ;; esac; }
us_ms() { case "$1" in fail | - | "") echo "$1" ;; *) fmt_ms "$1" ;; esac; }

# ---- part A ------------------------------------------------------------------
part_a() {
  local d="$T/a" r="$T/a/results" nrun i k
  mkdir -p "$d"
  : >"$r"
  nrun=$N_RUNNING
  if [ "$(it_virt_type)" = qemu ] && [ "$nrun" -gt 4 ]; then
    it_log "A: TCG: $nrun running domains is too many for this machine; 4"
    nrun=4
  fi
  [ "$nrun" -le "$N_DOMS" ] || nrun=$N_DOMS
  it_log "A: images and XML for $N_DOMS domains (+$N_VIS, +$N_LEAK for the loop)"
  tpl "$d/tpl" 3
  replicate "$d/tpl" "$d/img" s "$N_DOMS" "$d/xml" "$PFX-s"
  replicate "$d/tpl" "$d/img" v "$N_VIS" "$d/xml" "$PFX-v"
  replicate "$d/tpl" "$d/img" L "$N_LEAK" "$d/xml" "$PFX-L"
  it_log "A: defining $N_DOMS domains (one virsh), starting $nrun"
  t0=$(now_us)
  batch_define "$d/xml" s "$N_DOMS"
  put "$r" define_us $(($(now_us) - t0))
  [ "$(h2_virsh list --all --name | grep -c "^$PFX-s")" -eq "$N_DOMS" ] || it_fail "A: not all $N_DOMS domains are defined"
  if [ "$nrun" -gt 0 ]; then
    for ((i = 1; i <= nrun; i++)); do echo "start $PFX-s$i"; done | h2_virsh >/dev/null ||
      it_fail "A: starting $nrun domains"
  fi
  [ "$(h2_virsh list --name | grep -c "^$PFX-s")" -eq "$nrun" ] || it_fail "A: $nrun domains do not run"
  put "$r" running "$nrun"
  it_log "A: defined in $(us_ms "$(get "$r" define_us)") ms; measuring inside the second host's namespaces"
  run_inner a || it_log "A: the inner part failed (rc $?)"
  [ "$(get "$r" finished)" = 1 ] || it_log "A: incomplete: $(get "$r" error)"
  # the running ones go now: part B and C want the CPU
  if [ "$nrun" -gt 0 ]; then
    for ((i = 1; i <= nrun; i++)); do echo "destroy $PFX-s$i"; done | h2_virsh >/dev/null 2>&1 || true
  fi
  it_log "A: undefining its domains"
  h2_virsh list --all --name | grep "^$PFX-" | sed 's/^/undefine /' | h2_virsh >/dev/null 2>&1 || true
  rm -rf "$d/img"

  row_note "A. $N_DOMS domains, 3-layer chains, $nrun running ($(it_virt_type))" "chainfs on the same host as libvirtd (qemu:///system in its namespaces)"
  row_note "   defining them: one virsh process" "$(us_ms "$(get "$r" define_us)") ms"
  row_note "   start -> mounted (ms)" "$(us_ms "$(get "$r" mount_us)")"
  row_abs "start -> ready, all domains listed (ms)" "$(us_ms "$(get "$r" ready_us)")" ms 5000
  row_note "   chains with 3 layers shown" "$(get "$r" chains_ok) of $N_DOMS"
  row_abs "ls MNT (median, ms)" "$(get "$r" ls_ms)" ms 20
  row_ratio "cat MNT/*/vda/chain vs virsh domblklist loop" "$(get "$r" chain_ms)" "$(get "$r" loop_ms)" 0.2
  [ "$(get "$r" loop_done)" = "$N_DOMS" ] ||
    row_note "   (the loop: $(get "$r" loop_done) of $N_DOMS domains in ${LOOP_MAX_S}s," "time per domain x $N_DOMS)"
  row_ratio "cat MNT/*/vda/chain vs domstats --block --backing" "$(get "$r" chain_ms)" "$(get "$r" domstats_ms)" -
  row_note "   (virsh figures: before the mount," "on a libvirtd nothing else queried)"
  row_abs "VmRSS when ready (MiB)" "$(mib "$(get "$r" rss_ready)")" MiB 64
  row_abs "VmRSS after the reads (MiB)" "$(mib "$(get "$r" rss_reads)")" MiB 64
  row_note "   chainfs CPU, ${IDLE_S}s with nothing asked" "$(get "$r" cpu_idle) % of a core; libvirtd meanwhile $(get "$r" cpu_libvirtd) %"
  row_ratio "domstats --block --backing: mounted vs before" "$(get "$r" domstats_mounted_ms)" "$(get "$r" domstats_ms)" -
  row_abs "define -> visible, median (ms)" "$(get "$r" vis_ms)" ms 1000
  row_abs "define -> visible, max (ms)" "$(get "$r" vis_max_ms)" ms 1000
  row_note "   define -> visible runs" "$(get "$r" vis_runs) (of $N_VIS in at most ${VIS_MAX_S}s), $(get "$r" vis_fails) not visible in 60 s or define failed"
  lr=$(num "$(get "$r" leak_rounds)")
  [ "$lr" != fail ] || lr=0
  for ((k = 1; k <= lr; k++)); do
    row_note "   loop $k: $(get "$r" "leak_defined_$k") of $N_LEAK defined (one virsh)" "in $(us_ms "$(get "$r" "leak_define_us_$k")") ms; all shown $(us_ms "$(get "$r" "leak_visible_us_$k")") ms later; VmRSS $(mib "$(get "$r" "rss_leak_peak_$k")") MiB"
    row_note "   loop $k: undefined (one virsh), $(get "$r" "leak_left_$k") left" "in $(us_ms "$(get "$r" "leak_undefine_us_$k")") ms; all gone $(us_ms "$(get "$r" "leak_gone_us_$k")") ms later; VmRSS $(mib "$(get "$r" "rss_leak_$k")") MiB"
  done
  if [ "$(get "$r" leak_rounds)" = "$LEAK_ROUNDS" ] && [ "$(get "$r" "leak_defined_$LEAK_ROUNDS")" = "$N_LEAK" ] &&
    [ "$(get "$r" "leak_left_$LEAK_ROUNDS")" = 0 ]; then
    row_ratio "loop: VmRSS after / before ($LEAK_ROUNDS rounds)" "$(mib "$(get "$r" rss_leak_end)")" "$(mib "$(get "$r" rss_leak0)")" 1.1
  else
    row_ratio "loop: VmRSS after / before (INCOMPLETE loop)" "$(mib "$(get "$r" rss_leak_end)")" "$(mib "$(get "$r" rss_leak0)")" 1.1
    MISSED=1
  fi
  local stale lr
  stale=$(num "$(get "$r" stale)")
  [ "$stale" = fail ] || [ "$(num "$(get "$r" missing)")" = fail ] || stale=$((stale + $(get "$r" missing)))
  row_abs "loop: stale or missing entries after" "$stale" "" 0
}

# ---- part B ------------------------------------------------------------------
part_b() {
  local d="$T/b" r="$T/b/results" i
  mkdir -p "$d"
  : >"$r"
  it_log "B: a $DEPTH-layer chain (qemu-img create -u) and $((N_B + 1)) copies of a $SHALLOW-layer one"
  t0=$(now_us)
  tpl "$d/deep" "$DEPTH"
  put "$r" build_us $(($(now_us) - t0))
  tpl "$d/tpl" "$SHALLOW"
  replicate "$d/tpl" "$d/img" sh "$((N_B + 1))" "$d/xml" "$PFX-sh"
  # replicate numbers from 1: sh1..sh(N_B+1); the domains are sh0..sh(N_B)
  for ((i = 0; i <= N_B; i++)); do
    dom_xml "$PFX-sh$i" "$d/img/sh$((i + 1))/l$((SHALLOW - 1)).qcow2" "$(it_virt_type)" >"$d/xml/b-sh$i.xml"
    h2_virsh define "$d/xml/b-sh$i.xml" >/dev/null || it_fail "B: define $PFX-sh$i"
  done
  dom_xml "$PFX-deep" "$d/deep/l$((DEPTH - 1)).qcow2" "$(it_virt_type)" >"$d/xml/deep.xml"
  h2_virsh define "$d/xml/deep.xml" >/dev/null || it_fail "B: define $PFX-deep"
  it_log "B: chain built in $(us_ms "$(get "$r" build_us)") ms; measuring inside the second host's namespaces"
  run_inner b || it_log "B: the inner part failed (rc $?)"
  [ "$(get "$r" finished)" = 1 ] || it_log "B: incomplete: $(get "$r" error)"
  for ((i = 0; i <= N_B; i++)); do h2_virsh undefine "$PFX-sh$i" >/dev/null 2>&1 || true; done
  h2_virsh undefine "$PFX-deep" >/dev/null 2>&1 || true

  row_note "B. $DEPTH layers vs $SHALLOW, shut off (ms, medians)" "chainfs on the same host as libvirtd; built in $(us_ms "$(get "$r" build_us)") ms"
  local shown
  shown=$(get "$r" deep_layers)
  case "$shown" in '' | *[!0-9]*) shown=0 ;; esac
  row_note "   layers in the deep chain's chain file" "$shown of $DEPTH"
  row_abs "layers of the $DEPTH-layer chain not shown" "$((DEPTH - shown))" "" 0
  row_note "   snapshots/ entries" "$(get "$r" deep_snaps) vs $(get "$r" shallow_snaps)"
  row_ratio "cat chain ($DEPTH vs $SHALLOW)" "$(get "$r" deep_chain_ms)" "$(get "$r" shallow_chain_ms)" -
  row_ratio "ls snapshots/" "$(get "$r" deep_ls_ms)" "$(get "$r" shallow_ls_ms)" 2
  row_ratio "stat of each snapshot dir (per dir)" "$(get "$r" deep_stat1_ms)" "$(get "$r" shallow_stat1_ms)" 2
  row_ratio "   stat of all of them (one stat(1))" "$(get "$r" deep_stat_ms)" "$(get "$r" shallow_stat_ms)" -
  row_ratio "mkdir snapshots/NAME" "$(get "$r" deep_mkdir_ms)" "$(get "$r" shallow_mkdir_ms)" 2
  row_ratio "rmdir of a middle layer + cat wait" "$(get "$r" deep_rmdir_ms)" "$(get "$r" shallow_rmdir_ms)" 2
  [ "$(get "$r" deep_fails)$(get "$r" shallow_fails)" = 00 ] ||
    row_note "   failed runs (not in the medians)" "$(get "$r" deep_fails) deep, $(get "$r" shallow_fails) shallow"
}

# ---- part C ------------------------------------------------------------------
part_c() {
  local d="$T/c" D="$PFX-remote" V fleet=0 i t how
  mkdir -p "$d/ov" "$d/state" "$d/overlays"
  chmod 0755 "$d" "$d/ov" "$d/overlays"
  if "$CHAINFS" --help 2>&1 | grep -q 'NAME=URI'; then
    if virsh -q -c qemu:///system version >/dev/null 2>&1; then fleet=1; else it_log "C: the local libvirtd does not answer: the remote host alone"; fi
  fi
  qemu-img create -q -f qcow2 "$d/base.qcow2" 256M
  dom_xml "$D" "$d/base.qcow2" "$(it_virt_type)" >"$d/$D.xml"
  h2_virsh define "$d/$D.xml" >/dev/null || it_fail "C: define $D"
  h2_virsh start "$D" >/dev/null || it_fail "C: start $D"
  MNT="$d/mnt"
  mkdir -p "$MNT"
  if [ "$fleet" = 1 ]; then
    how="-c local=qemu:///system -c remote=URI"
    "$CHAINFS" -f -c local=qemu:///system -c "remote=$H2_URI" -o "state_dir=$d/state,overlay_dir=$d/overlays" "$MNT" >>"$IT_LOG" 2>&1 &
    IT_PID=$!
    V="$MNT/remote/$D/vda"
  else
    how="-c URI (one host)"
    "$CHAINFS" -f -c "$H2_URI" -o "state_dir=$d/state,overlay_dir=$d/overlays" "$MNT" >>"$IT_LOG" 2>&1 &
    IT_PID=$!
    V="$MNT/$D/vda"
  fi
  it_wait_until 30 "C: mounted" mountpoint -q "$MNT"
  it_wait_until 30 "C: $D shows" test -d "$V"
  at_base_c() { [ "$(h2_virsh domblklist "$D" | awk '$1 == "vda" { print $2 }')" = "$d/base.qcow2" ]; }
  vs_merge() {
    h2_virsh blockcommit "$D" vda --active --pivot --wait >/dev/null &&
      h2_virsh snapshot-delete "$D" "$1" --metadata >/dev/null
  }
  cfs_merge() { rmdir "$V/snapshots/$1" && cat "$V/wait" >/dev/null && grep -q '^state: *completed$' "$V/job"; }
  : >"$d/mkdir.cfs"
  : >"$d/mkdir.virsh"
  : >"$d/rmdir.cfs"
  : >"$d/rmdir.virsh"
  it_log "C: mkdir / rmdir + wait on the remote host vs virsh over $H2_URI, x$N_C (+1 warm-up); mount $how"
  for ((i = 0; i <= N_C; i++)); do
    t=$(ms mkdir "$V/snapshots/m$i") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/mkdir.cfs"
    if [ "$t" != fail ]; then
      it_guest_write_h2 0x5a 0 8M
      t=$(ms cfs_merge "m$i") || t=fail
      [ "$i" -eq 0 ] || echo "$t" >>"$d/rmdir.cfs"
    fi
    it_poll 30 at_base_c || it_fail "C: chainfs's run $i did not come back to the base"
    t=$(ms h2_virsh snapshot-create-as "$D" "v$i" --disk-only --atomic --diskspec "vda,file=$d/ov/v$i.qcow2") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/mkdir.virsh"
    it_guest_write_h2 0x5b 0 8M
    t=$(ms vs_merge "v$i") || t=fail
    [ "$i" -eq 0 ] || echo "$t" >>"$d/rmdir.virsh"
    rm -f "$d/ov/v$i.qcow2"
    it_poll 30 at_base_c || it_fail "C: virsh's run $i did not come back to the base"
  done
  it_unmount || it_log "C: chainfs did not exit cleanly"
  MNT=""
  h2_virsh destroy "$D" >/dev/null 2>&1 || true
  h2_virsh undefine --snapshots-metadata "$D" >/dev/null 2>&1 || true
  row_note "C. a running domain on the second host (ms, medians)" "mount $how, from here over qemu+tcp"
  row_ratio "mkdir vs snapshot-create-as --disk-only" "$(grep -v fail "$d/mkdir.cfs" | median)" "$(grep -v fail "$d/mkdir.virsh" | median)" -
  row_ratio "rmdir+wait vs blockcommit --pivot --wait (8M)" "$(grep -v fail "$d/rmdir.cfs" | median)" "$(grep -v fail "$d/rmdir.virsh" | median)" -
  local f
  f=$(cat "$d/mkdir.cfs" "$d/rmdir.cfs" | grep -c fail || true)
  [ "$f" -eq 0 ] || { row_note "   chainfs runs that failed" "$f"; MISSED=1; }
}

# it_guest_write_h2 PATTERN OFFSET LEN — a write by the remote guest's disk
# device (HMP qemu-io over the remote URI), then a flush.
it_guest_write_h2() {
  local cmd
  for cmd in "write -P $1 $2 $3" "flush"; do
    h2_virsh qemu-monitor-command "$PFX-remote" --hmp \
      "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"$cmd\"" >/dev/null ||
      it_fail "remote guest $cmd"
  done
}

# ---- main --------------------------------------------------------------------
START_US=$(now_us)
sc_init
IT_CLEANUP_HOOKS+=(sc_cleanup)
h2_start
echo "$H2_HOLD_PID" >"$H2_DIR/holder.pid"
for p in $PARTS; do
  case "$p" in
    A) part_a ;;
    B) part_b ;;
    C) part_c ;;
    *) it_fail "PARTS: unknown part $p (A, B or C)" ;;
  esac
done

echo
printf 'chainfs scale benchmark: parts %s, %s, virt type %s, %s, %s\n' "$PARTS" \
  "$(git -C "$IT_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" "$(it_virt_type)" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "run took $(($(($(now_us) - START_US)) / 1000000)) s"
printf '%-50s %10s %10s %7s %10s  %s\n' "measure" chainfs baseline ratio target verdict
printf '%s\n' "${ROWS[@]}"
[ "$MISSED" -eq 0 ] || echo "(a target was missed)"

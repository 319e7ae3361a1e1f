#!/usr/bin/env bash
# rolling-snapshots.sh — rolling snapshots through a chainfs mount: on each
# run, one new snapshot of every VM (or of some), named
# PREFIX-YYYYmmddTHHMMSSZ (UTC, so names sort by time; with -d
# PREFIX-DISK-YYYYmmddTHHMMSSZ), then the oldest of this script's own
# snapshots beyond KEEP merged away, waiting until the merges have ended.
# A snapshot it did not make is never removed: its own are the ones named
# so whose info says they were taken at its level (`scope: domain`, or
# `disk` with -d).
#
#   usage: rolling-snapshots.sh [-d] [-p PREFIX] [-q] [-L LOCKFILE] [-W SECS] MOUNT KEEP [DOMAIN...]
#
#     MOUNT      the chainfs mount point (e.g. /vms)
#     KEEP       how many of its snapshots to keep per domain (per disk
#                with -d), the new one included; at least 1
#     DOMAIN     only these domains (default: every domain in MOUNT);
#                with -d, DOMAIN/DISK names one disk
#     -d         per disk: one snapshot of each disk on its own (a mkdir
#                in DOMAIN/DISK/snapshots/) instead of one snapshot of all
#                the domain's disks at one instant (DOMAIN/snapshots/);
#                a disk that fails does not hold the others back
#     -p PREFIX  the names' prefix (default: rolling): [A-Za-z0-9._-], not
#                starting with '.' or '-'; a name is at most 64
#                characters (a prefix of 47 at most, less with -d); runs
#                with different prefixes keep separate sets (hourly, daily)
#     -q         quiet: print only what went wrong
#     -L FILE    the lock file that keeps two runs from overlapping
#                (default /run/lock/chainfs-rolling-snapshots.lock)
#     -W SECS    wait at most SECS for a run in progress to end (default:
#                as long as it takes; 0: do not wait); then exit 75
#     -h         this help
#
#   e.g.: rolling-snapshots.sh /vms 7                   # every domain, keep 7
#         rolling-snapshots.sh -p hourly /vms 24 web01 db01
#         rolling-snapshots.sh -d -p data /vms 3 db01/vdb
#
#   installed: install -m 0755 /usr/share/doc/chainfs/examples/rolling-snapshots.sh /usr/local/sbin/
#   cron (/etc/cron.d/chainfs-rolling), a snapshot a day at 03:00, a week kept:
#     0 3 * * *  root  /usr/local/sbin/rolling-snapshots.sh -q /vms 7
#   systemd: examples/systemd/chainfs-rolling.service and chainfs-rolling.timer
#
# Each domain (each disk with -d) goes on its own: a refusal is reported
# (the errno's text; chainfs's log and DOMAIN/job say why) and the others
# go on. A domain whose new snapshot was refused keeps all its snapshots
# (nothing is pruned below what it had). What cannot have a snapshot at
# all (EROFS: a cdrom, a read-only or shareable disk, a domain with only
# such disks) is skipped with a line saying so, unless it was named: a
# DOMAIN without -d, a DOMAIN/DISK with -d (with -d, a DOMAIN's cdrom is
# skipped). A domain-level snapshot leaves such disks out by itself (its
# info's `taken:` names them). Snapshots are quiesced as
# the mount's -o quiesce says; each new one prints its `quiesced:`. The
# merges of pruned snapshots are waited for (`cat wait`): when the script
# is interrupted they go on in chainfs.
#
# Exit status: 0 when every snapshot was taken and every pruned one merged
# away; 1 otherwise (what failed is printed on stderr); 2 for a bad
# command line; 75 when another run held the lock longer than -W allows.
# Needs: bash, coreutils, util-linux (flock), jq.
set -u
shopt -s nullglob dotglob

prog=${0##*/}
usage() { awk '/^#   usage:/ { on = 1 } on && /^# [A-Z]/ { exit } on { sub(/^#/, ""); sub(/^   /, ""); print }' "$0"; }
die_usage() {
  printf '%s: %s\n' "$prog" "$1" >&2
  usage | head -n 1 >&2
  printf '%s -h for help\n' "$prog" >&2
  exit 2
}

per_disk=0 prefix=rolling quiet=0 lockfile=/run/lock/chainfs-rolling-snapshots.lock lockwait=""
while getopts ':dp:qL:W:h' opt; do
  case "$opt" in
    d) per_disk=1 ;;
    p) prefix=$OPTARG ;;
    q) quiet=1 ;;
    L) lockfile=$OPTARG ;;
    W) lockwait=$OPTARG ;;
    h) usage; exit 0 ;;
    :) die_usage "option -$OPTARG needs an argument" ;;
    *) die_usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
[ "$#" -ge 2 ] || die_usage "MOUNT and KEEP are needed"
mount=${1%/} keep=$2
shift 2
targets=("$@")

if ! [[ "$keep" =~ ^[0-9]{1,6}$ ]] || [ $((10#$keep)) -lt 1 ]; then
  die_usage "KEEP must be a number of snapshots, at least 1: $keep"
fi
keep=$((10#$keep))
# a snapshot name (docs/FILES.md, "Names in snapshots/"): 1 to 64 of
# [A-Za-z0-9._-], not starting with '.' or '-'; the timestamp adds 17
[[ "$prefix" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] ||
  die_usage "bad prefix '$prefix': [A-Za-z0-9._-] only, not starting with '.' or '-'"
[ "${#prefix}" -le 47 ] || die_usage "prefix longer than 47 characters: $prefix"
if [ -n "$lockwait" ] && ! [[ "$lockwait" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  die_usage "-W takes seconds: $lockwait"
fi
[ -n "$mount" ] || mount=/
[ -d "$mount" ] || die_usage "no such directory: $mount"
if command -v mountpoint >/dev/null 2>&1 && ! mountpoint -q "$mount"; then
  die_usage "$mount is not a mount point (is chainfs mounted there?)"
fi
for t in "${targets[@]}"; do
  case "$t" in
    */*/* | /* | */ | "") die_usage "not a domain name: '$t'" ;;
    */*) [ "$per_disk" -eq 1 ] || die_usage "DOMAIN/DISK ($t) needs -d" ;;
  esac
done
command -v jq >/dev/null 2>&1 || die_usage "jq is not installed"
command -v flock >/dev/null 2>&1 || die_usage "flock (util-linux) is not installed"

say() { [ "$quiet" -eq 1 ] || printf '%s\n' "$*"; }
problems=0
problem() {
  printf '%s: %s\n' "$prog" "$*" >&2
  problems=$((problems + 1))
}
# errtext OUTPUT — the errno's text at the end of a mkdir/rmdir message
errtext() { printf '%s' "${1##*: }"; }

# ---- the lock: one run at a time ------------------------------------------------
# fd 9 holds it until the script exits; no child that may outlive the
# script keeps fd 9 (9>&-)
if ! exec 9<>"$lockfile"; then
  die_usage "cannot open the lock file $lockfile"
fi
if ! flock -n 9; then
  # the holder's pid, when the holder is a run of this script (it writes
  # its pid there while it holds the lock)
  holder=$(head -c 64 "$lockfile" 2>/dev/null | tr -cd '0-9')
  if [ -n "$holder" ] && grep -qa rolling-snapshots "/proc/$holder/cmdline" 2>/dev/null; then
    holder="another run (pid $holder)"
  else
    holder="another run"
  fi
  if [ "$lockwait" = 0 ]; then
    printf '%s: %s holds %s; not waiting (-W 0)\n' "$prog" "$holder" "$lockfile" >&2
    exit 75
  fi
  say "waiting for $holder to end (lock $lockfile)"
  if ! flock ${lockwait:+-w "$lockwait"} 9; then
    printf '%s: %s still holds %s after %s s; giving up\n' "$prog" "$holder" "$lockfile" "$lockwait" >&2
    exit 75
  fi
fi
printf '%s\n' "$$" >"$lockfile" 2>/dev/null || true
# shellcheck disable=SC2317 # run at exit
release() { : >"$lockfile" 2>/dev/null; }
trap release EXIT

# The merges go on in chainfs when the script stops waiting for them.
# shellcheck disable=SC2317 # run by the traps
interrupted() {
  [ -n "${waiter:-}" ] && kill "$waiter" 2>/dev/null
  printf '%s: interrupted; merges already started go on in chainfs (see: cat %s/job)\n' "$prog" "${current:-$mount/DOMAIN}" >&2
  exit "$1"
}
trap 'interrupted 130' INT
trap 'interrupted 143' TERM
waiter="" current=""

# wait_file PATH — read PATH (a chainfs `wait` file) until it returns;
# prints what it returned. Runs in the background so that a signal stops
# the script at once.
wait_file() {
  local out rc
  out=$(mktemp "${TMPDIR:-/tmp}/rolling.XXXXXX") || return 1
  cat -- "$1" >"$out" 9>&- &
  waiter=$!
  rc=0
  wait "$waiter" || rc=$?
  waiter=""
  cat -- "$out"
  rm -f -- "$out"
  return "$rc"
}

# ---- what to snapshot -------------------------------------------------------------

# dirs: the directories that get a snapshot (a domain, or a disk with -d);
# named[dir]=1 when the user named it (or its domain)
dirs=()
declare -A named=()
# disks_of DOMAINDIR — a domain's disk directories (its own snapshots/ is none)
disks_of() {
  local d
  for d in "$1"/*/; do
    d=${d%/}
    [ "${d##*/}" = snapshots ] && continue
    [ -d "$d/snapshots" ] && printf '%s\n' "$d"
  done
}
add_domain() { # DOMAINDIR ISNAMED
  local d
  if [ "$per_disk" -eq 1 ]; then
    # a disk is named only as DOMAIN/DISK: a domain's cdrom is skipped
    while IFS= read -r d; do
      dirs+=("$d")
      named[$d]=0
    done < <(disks_of "$1")
  else
    dirs+=("$1")
    named[$1]=$2
  fi
}
if [ "${#targets[@]}" -eq 0 ]; then
  for d in "$mount"/*/; do
    add_domain "${d%/}" 0
  done
  [ "${#dirs[@]}" -gt 0 ] || { say "no domain in $mount"; exit 0; }
else
  for t in "${targets[@]}"; do
    if [ ! -d "$mount/${t%%/*}/snapshots" ]; then
      problem "no domain ${t%%/*} in $mount"
    elif [[ "$t" == */* ]]; then
      if [ -d "$mount/$t/snapshots" ] && [ "${t#*/}" != snapshots ]; then
        dirs+=("$mount/$t")
        named[$mount/$t]=1
      else
        problem "no disk ${t#*/} in domain ${t%%/*}"
      fi
    else
      add_domain "$mount/$t" 1
    fi
  done
fi

# label DIR — DOMAIN or DOMAIN/DISK, for messages
label() { printf '%s' "${1#"$mount"/}"; }
scope=domain
[ "$per_disk" -eq 1 ] && scope=disk

# stem DIR — the part of DIR's names before the timestamp: PREFIX, or
# with -d PREFIX-DISK (libvirt's snapshot names are the domain's, one
# name cannot be on two disks unless one snapshot took both)
stem() {
  if [ "$per_disk" -eq 1 ]; then
    printf '%s-%s' "$prefix" "${1##*/}"
  else
    printf '%s' "$prefix"
  fi
}

# own DIR — this script's snapshots in DIR/snapshots/, oldest first
own() {
  local s n sc st
  st=$(stem "$1")
  for s in "$1"/snapshots/"$st"-*; do
    n=${s##*/}
    if ! [[ "$n" =~ -[0-9]{8}T[0-9]{6}Z$ ]] || [ "${n%-*}" != "$st" ]; then
      continue
    fi
    # made at this level by a script like this one (a snapshot made
    # by hand under such a name at the other level is not ours)
    sc=$(jq -r '.scope // empty' "$s/info.json" 2>/dev/null) || continue
    [ "$sc" = "$scope" ] && printf '%s\n' "$n"
  done | sort
}

# ---- the names ---------------------------------------------------------------------
# one timestamp for the whole run; a new second when the last run took it
# (the domain's snapshots/ lists every name its disks have)
for ((i = 0; ; i++)); do
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  taken=""
  for d in "${dirs[@]}"; do
    dom=$d
    [ "$per_disk" -eq 1 ] && dom=${d%/*}
    [ -e "$dom/snapshots/$(stem "$d")-$stamp" ] && taken="$(stem "$d")-$stamp"
  done
  [ -z "$taken" ] && break
  [ "$i" -lt 3 ] || { problem "$taken exists already (is the clock right?)"; exit 1; }
  sleep 1
done

# ---- one domain (or disk) ---------------------------------------------------------

# errors_of DIR — the last errors chainfs recorded on DIR's disks, if any
errors_of() {
  if [ "$per_disk" -eq 1 ]; then
    jq -r '.error // empty' "$1/job.json" 2>/dev/null
  else
    jq -r '.disks[] | select(.error) | "\(.disk): \(.error)"' "$1/job.json" 2>/dev/null
  fi | sed 's/^/    last error: /'
}

# roll DIR — the new snapshot, then the pruning
roll() {
  local dir=$1 lbl out q gone=() n names why name
  lbl=$(label "$dir")
  current=$dir
  name="$(stem "$dir")-$stamp"
  if [ "${#name}" -gt 64 ]; then
    problem "$lbl: the name $name is longer than 64 characters: take a shorter prefix"
    return
  fi
  if ! out=$(LC_ALL=C mkdir -- "$dir/snapshots/$name" 2>&1); then
    case "$(errtext "$out")" in
      "Read-only file system")
        if [ "${named[$dir]}" -eq 0 ]; then
          if [ "$per_disk" -eq 1 ]; then
            why=$(jq -r '.error // empty' "$dir/job.json" 2>/dev/null)
            say "$lbl: skipped: it cannot have a snapshot (${why:-read-only, shareable, cdrom, ...})"
          else
            say "$lbl: skipped: no disk of it can have a snapshot (read-only, shareable, cdrom, ...)"
          fi
          return
        fi ;;
    esac
    problem "$lbl: snapshot $name refused: $(errtext "$out") (chainfs's log says why; see: cat $dir/job); nothing pruned"
    errors_of "$dir" >&2
    return
  fi
  q=$(sed -n 's/^quiesced: *//p' "$dir/snapshots/$name/info" 2>/dev/null)
  say "$lbl: snapshot $name taken (quiesced: ${q:--})"

  # every own snapshot but the new one, newest first: the first KEEP-1 stay
  mapfile -t names < <(own "$dir" | grep -vxF -- "$name" | sort -r)
  for n in "${names[@]:keep-1}"; do
    if out=$(LC_ALL=C rmdir -- "$dir/snapshots/$n" 2>&1); then
      gone+=("$n")
    else
      problem "$lbl: rmdir of $n refused: $(errtext "$out") (chainfs's log says why; see: cat $dir/job)"
      errors_of "$dir" >&2
    fi
  done
  [ "${#gone[@]}" -gt 0 ] || return
  say "$lbl: merging ${gone[*]} away"
  if ! wait_file "$dir/wait" >/dev/null; then
    problem "$lbl: waiting for the merges failed; see: cat $dir/job"
    return
  fi
  for n in "${gone[@]}"; do
    if [ -e "$dir/snapshots/$n" ]; then
      problem "$lbl: $n was not merged away: $(sed -n 's/^state: *//p' "$dir/snapshots/$n/info" 2>/dev/null | head -n 1); see: cat $dir/job"
      errors_of "$dir" >&2
    else
      say "$lbl: $n merged away"
    fi
  done
}

for d in "${dirs[@]}"; do
  roll "$d"
done
if [ "$problems" -gt 0 ]; then
  printf '%s: %d problem(s), see above\n' "$prog" "$problems" >&2
  exit 1
fi
exit 0

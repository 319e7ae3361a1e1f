#!/usr/bin/env bash
# jobs-watch.sh — every job in progress on a chainfs mount, one line each,
# refreshed like watch(1): domain, disk, type, state, snapshot, progress,
# bytes done of total, rate, time left, bandwidth limit, and a note
# (rmdirs queued behind it, a reader it waits for, the domain-level rmdir
# it is part of, a job chainfs did not start). It reads one small file per
# domain, DOMAIN/job.json, and nothing else of the tree (never a
# disk.raw); a domain that goes away while it reads is left out.
#
#   usage: jobs-watch.sh [-n SECS] [--once] [MOUNT [DOMAIN...]]
#
#     MOUNT    the chainfs mount point (default /vms)
#     DOMAIN   only these domains (default: every domain in MOUNT)
#     -n SECS  refresh every SECS seconds (default 2; fractions allowed)
#     --once   print the jobs once and exit: status 0 when a job is in
#              progress, 1 when none
#     -h       this help
#
#   e.g.: jobs-watch.sh                   # every job under /vms, every 2 s
#         jobs-watch.sh -n 0.5 /vms web01
#         while jobs-watch.sh --once /vms web01 >/dev/null; do sleep 5; done
#
# RATE is measured over the last 10 s or so of the job (since its start
# with --once, or until the watch has seen 10 s of it); LEFT is what is
# left at that rate. A job in `ready` (an active commit or a copy that
# mirrors until its pivot) has copied everything: no rate, no time left.
# LIMIT is the job's bandwidth limit (`bandwidth N` in the disk's ctl).
#
# Exit status (--once): 0 a job is in progress, 1 none, 2 a bad command
# line or no such mount. Needs: bash, jq, gawk or mawk.
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

interval=2 once=0
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -n)
      [ "$#" -ge 2 ] || die_usage "option -n needs an argument"
      if ! [[ "$2" =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v s="$2" 'BEGIN { exit !(s >= 0.1) }'; then
        die_usage "-n takes seconds, at least 0.1: $2"
      fi
      interval=$2
      shift 2 ;;
    --once) once=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    -*) die_usage "unknown option $1" ;;
    *) args+=("$1"); shift ;;
  esac
done
mount=${args[0]:-/vms}
domains=("${args[@]:1}")
[ -d "$mount" ] || die_usage "no such directory: $mount"
if command -v mountpoint >/dev/null 2>&1 && ! mountpoint -q "$mount"; then
  die_usage "$mount is not a mount point (is chainfs mounted there?)"
fi
command -v jq >/dev/null 2>&1 || die_usage "jq is not installed"

# One row per disk whose job is in progress (or that has rmdirs queued):
# tab-separated domain, disk, type, state, snapshot(s), percent, cur, end,
# bandwidth, started (epoch seconds, 0 unknown), note.
# shellcheck disable=SC2016 # jq's own $variables
jq_rows='
  .domain as $dom | (.group // {}) as $grp | .stale as $stale |
  .disks[] |
  select((.state | test("^(starting|running|ready|pivoting|finishing|cleanup)"))
         or ((.queue // []) | length > 0)) |
  [ $dom, .disk, .type, .state,
    (if (.snapshots // []) | length > 1 then .snapshots | join(",")
     else .snapshot // "-" end),
    .progress_percent, .cur, .end, .bandwidth,
    ((.started // "") | if . == "" then 0 else (try fromdateiso8601 catch 0) end),
    ([ (if .origin == "external" then "not started by chainfs" else empty end),
       (if .destination then "to \(.destination)" else empty end),
       (if .group and .group == $grp.id then "domain-level \($grp.operation // "rmdir") \($grp.snapshot // "")" else empty end),
       (if (.queue // []) | length > 0 then "queued: \([.queue[].snapshot] | join(","))" else empty end),
       (.queue // [] | map(select(.waiting)) | .[0].waiting // empty | "waiting: \(.)"),
       (if $stale then "stale (libvirt unreachable)" else empty end)
     ] | join("; ") | if . == "" then "-" else . end)
  ] | @tsv'

# per job (domain/disk/type/started): the sample the rate is measured from
declare -A ref_t=() ref_cur=() rate=()

# now_ms — the time in milliseconds
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

# rows — the rows of every domain asked for (DOMAIN/job.json only)
rows() {
  local f d json
  if [ "${#domains[@]}" -gt 0 ]; then
    for d in "${domains[@]}"; do
      f="$mount/$d/job.json"
      # a domain gone (or never there) has no file: nothing to show
      json=$(cat -- "$f" 2>/dev/null) || continue
      jq -r "$jq_rows" <<<"$json" 2>/dev/null
    done
  else
    for f in "$mount"/*/job.json; do
      json=$(cat -- "$f" 2>/dev/null) || continue
      jq -r "$jq_rows" <<<"$json" 2>/dev/null
    done
  fi
}

# frame — one listing on stdout; status 0 when it showed a job
frame() {
  local dom disk type state snap pct cur end bw started note key now r
  local -a out=()
  local -A seen=()
  now=$(now_ms)
  while IFS=$'\t' read -r dom disk type state snap pct cur end bw started note; do
    key="$dom/$disk/$type/$started"
    seen[$key]=1
    r=""
    case "$state" in
      running | starting)
        if [ "$once" -eq 0 ] && [ -n "${ref_t[$key]:-}" ] && [ $((now - ref_t[$key])) -ge 10000 ]; then
          rate[$key]=$(((cur - ref_cur[$key]) * 1000 / (now - ref_t[$key])))
          ref_t[$key]=$now ref_cur[$key]=$cur
        elif [ -z "${ref_t[$key]:-}" ]; then
          ref_t[$key]=$now ref_cur[$key]=$cur
        fi
        r=${rate[$key]:-}
        # until a window of its own: the average since the job started
        if [ -z "$r" ] && [ "$started" -gt 0 ] && [ $((now / 1000 - started)) -gt 0 ]; then
          r=$((cur / (now / 1000 - started)))
        fi ;;
    esac
    out+=("$dom"$'\t'"$disk"$'\t'"$type"$'\t'"$state"$'\t'"$snap"$'\t'"$pct"$'\t'"$cur"$'\t'"$end"$'\t'"${r:--}"$'\t'"$bw"$'\t'"$note")
  done < <(rows)
  # forget the jobs that ended
  for key in "${!ref_t[@]}"; do
    [ -n "${seen[$key]:-}" ] || unset "ref_t[$key]" "ref_cur[$key]" "rate[$key]"
  done
  if [ "${#out[@]}" -eq 0 ]; then
    echo "no job in progress"
    return 1
  fi
  printf '%s\n' "${out[@]}" | sort -t $'\t' -k1,1 -k2,2 | awk -F '\t' '
    function human(b,  i, u) {
      split("B KiB MiB GiB TiB PiB EiB", u, " ")
      for (i = 1; b >= 1023.95 && i < 7; i++) b /= 1024
      return i == 1 ? sprintf("%dB", b) : sprintf("%.1f%s", b, u[i])
    }
    function hms(s) {
      s = int(s)
      return s >= 3600 ? sprintf("%d:%02d:%02d", s / 3600, s % 3600 / 60, s % 60) : sprintf("%d:%02d", s / 60, s % 60)
    }
    {
      n++
      row[n, 1] = $1; row[n, 2] = $2; row[n, 3] = $3; row[n, 4] = $4; row[n, 5] = $5
      row[n, 6] = $6 "%"
      row[n, 7] = ($8 > 0) ? human($7) " / " human($8) : "-"
      row[n, 8] = ($9 == "-" || $9 <= 0) ? "-" : human($9) "/s"
      row[n, 9] = ($9 == "-" || $9 <= 0 || $8 <= $7) ? "-" : hms(($8 - $7) / $9)
      row[n, 10] = ($10 > 0) ? human($10) "/s" : "unlimited"
      row[n, 11] = $11
    }
    END {
      split("DOMAIN DISK TYPE STATE SNAPSHOT PROGRESS BYTES RATE LEFT LIMIT NOTE", h, " ")
      for (c = 1; c <= 11; c++) { row[0, c] = h[c]; w[c] = length(h[c]) }
      for (r = 1; r <= n; r++)
        for (c = 1; c <= 11; c++) if (length(row[r, c]) > w[c]) w[c] = length(row[r, c])
      for (r = 0; r <= n; r++) {
        line = ""
        for (c = 1; c <= 11; c++) {
          # numbers right-aligned, text left-aligned, the last column as it is
          if (c == 11) cell = row[r, c]
          else if (c >= 6 && c <= 9) cell = sprintf("%" w[c] "s", row[r, c])
          else cell = sprintf("%-" w[c] "s", row[r, c])
          line = line (c > 1 ? "  " : "") cell
        }
        print line
      }
    }'
  return 0
}

if [ "$once" -eq 1 ]; then
  frame
  exit
fi

tty=0
[ -t 1 ] && tty=1
while :; do
  if [ "$tty" -eq 1 ]; then
    printf '\033[H\033[2J'
  fi
  printf 'Every %ss: chainfs jobs on %s%s  %s\n\n' "$interval" "$mount" \
    "${domains[*]:+ (${domains[*]})}" "$(date '+%F %T')"
  if mountpoint -q "$mount" 2>/dev/null || ! command -v mountpoint >/dev/null 2>&1; then
    frame
  else
    echo "$mount is not mounted"
  fi
  [ "$tty" -eq 1 ] || echo
  sleep "$interval"
done

#!/usr/bin/env bash
# backup.sh — a live backup of every disk of some VMs (or of all), through a
# chainfs mount: for each domain, one snapshot of all its disks at one
# instant (mkdir DOMAIN/snapshots/NAME, quiesced by chainfs through the
# guest agent as the mount's -o quiesce says), for each disk a sparse copy
# of the disk as it was at that moment (DISK/snapshots/NAME/disk.raw) and a
# checksum, and the snapshot merged back on every disk (rmdir
# DOMAIN/snapshots/NAME) — also when a copy fails or the script is
# interrupted.
#
#   usage: backup.sh [-m MOUNT] [-o OUTDIR] [-q] [--all | DOMAIN...]
#
#     -m MOUNT   the chainfs mount point (default /vms)
#     -o OUTDIR  where the backups go (default: the current directory);
#                each disk becomes OUTDIR/DOMAIN/DISK.raw with, beside it,
#                DISK.raw.sha256, DISK.chain.json and DISK.info.json
#     -q         require a quiesced snapshot: a running domain whose
#                snapshot chainfs could not quiesce (no guest agent, the
#                agent did not answer, the mount's -o quiesce=off) is not
#                backed up (its snapshot is merged back, the summary says
#                why, exit 1); without -q such a backup is crash-consistent
#                and the summary says so
#     -c URI     ignored (older versions froze the guest with virsh)
#     --all      every domain in the mount
#     -h         this help
#
#   e.g.: backup.sh -o /backup/$(date +%F) web01 db01
#         backup.sh -q -o /srv/backup --all
#
# The disks of one domain are snapshotted together, at one instant: the
# backup of a domain is consistent across its disks (as after a power cut
# of the whole VM), and with the guest's filesystems frozen where the
# guest agent answers (the summary prints `quiesced:` per domain, from the
# snapshot's info). Disks that cannot have a snapshot (read-only, cdrom,
# shareable, network) are skipped. An earlier DISK.raw in OUTDIR is
# replaced only once the new copy is complete. Restoring:
# examples/restore.md.
#
# Exit status: 0 if every disk was copied and every snapshot merged back,
# 1 otherwise (the summary says what failed and what to run), 2 for a bad
# command line. Needs: bash, coreutils (cp, sha256sum); pv draws a
# progress bar when installed and stderr is a terminal.
set -u

prog=${0##*/}
# usage — the comment block above, from "usage:" to the paragraph after e.g.
usage() { awk '/^#   usage:/ { on = 1 } on && /^# [A-Z]/ { exit } on { sub(/^#/, ""); sub(/^   /, ""); print }' "$0"; }
die_usage() {
  printf '%s: %s\n' "$prog" "$1" >&2
  usage | head -n 1 >&2
  printf '%s -h for help\n' "$prog" >&2
  exit 2
}

mount=/vms outdir=. quiesce=0 all=0
domains=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -m | -o | -c)
      [ "$#" -ge 2 ] || die_usage "option $1 needs an argument"
      case "$1" in -m) mount=$2 ;; -o) outdir=$2 ;; -c) ;; esac
      shift 2 ;;
    -q) quiesce=1; shift ;;
    --all) all=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; domains+=("$@"); break ;;
    -*) die_usage "unknown option $1" ;;
    *) domains+=("${1%/}"); shift ;;
  esac
done
if [ "$all" -eq 1 ] && [ "${#domains[@]}" -gt 0 ]; then
  die_usage "give either --all or domain names, not both"
fi
if [ "$all" -eq 0 ] && [ "${#domains[@]}" -eq 0 ]; then
  die_usage "no domain given (name some, or --all)"
fi
# canonical: cp's open file is found in /proc/PID/fd by this path
mount=$(realpath -e -- "$mount" 2>/dev/null) || die_usage "no such mount point: $mount"
[ -d "$mount" ] || die_usage "not a directory: $mount"
if command -v mountpoint >/dev/null 2>&1 && ! mountpoint -q "$mount"; then
  die_usage "$mount is not a mount point (is chainfs mounted there?)"
fi
mkdir -p -- "$outdir" || die_usage "cannot create $outdir"
outdir=$(realpath -e -- "$outdir") || die_usage "no such directory: $outdir"
if [ "$all" -eq 1 ]; then
  for d in "$mount"/*/; do
    [ -d "$d" ] && domains+=("$(basename "$d")")
  done
  [ "${#domains[@]}" -gt 0 ] || { echo "$prog: no domain in $mount" >&2; exit 0; }
fi

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
# human SIZE — bytes as 1024-based units, one decimal
human() {
  awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB PiB", u, " "); i = 1
    while (b >= 1024 && i < 6) { b /= 1024; i++ }
    if (i == 1) printf "%dB", b; else printf "%.1f%s", b, u[i] }'
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d "${TMPDIR:-/tmp}/backup.XXXXXX") || exit 1
tty=0
[ -t 2 ] && tty=1

# Per disk, keyed by "DOMAIN/DISK", in the order they were met (keys):
#   result[k]  "backed up ..." / "FAILED: reason" / "skipped: reason"
#   snap[k]    the snapshot this run created, if the disk has it
#   ddir[k]    the disk's directory in the mount
#   dest[k]    OUTDIR/DOMAIN/DISK, once a copy began; copied[k] its size
# Per domain, in the order they were snapshotted (doms):
#   dsnap[d]   the domain-level snapshot this run created (or tried to)
#   quiesced[d] "yes (...)" / "no (...)" from the snapshot's info
#   merged[d]  "merged back" / "NOT merged back: reason; run: ..." once tried
keys=() doms=()
declare -A result=() snap=() ddir=() dest=() copied=()
declare -A dsnap=() quiesced=() merged=()
failed_domains=()
cp_pid="" pv_pid="" prog_pid=""

# ---- clean-up: on every exit, whatever happened -------------------------------

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local rc=$? k ok=1
  trap - EXIT
  # A second Ctrl-C stops waiting for a merge, not the clean-up: every
  # snapshot still gets its rmdir.
  trap ':' INT TERM
  # No reader may stay open: rmdir of a snapshot whose disk.raw is open
  # is refused (EBUSY). Background jobs of a script ignore Ctrl-C, so
  # they are stopped here.
  stop_copy
  for k in "${doms[@]}"; do
    [ -n "${dsnap[$k]:-}" ] && [ -z "${merged[$k]:-}" ] && merge_back "$k"
  done
  rm -rf -- "$work"

  echo
  [ "$rc" -eq 0 ] || ok=0
  for k in "${failed_domains[@]}"; do
    printf '%s: FAILED: %s\n' "${k%%: *}" "${k#*: }"
    ok=0
  done
  for k in "${doms[@]}"; do
    [ -n "${dsnap[$k]:-}" ] || continue
    [ -n "${quiesced[$k]:-}" ] &&
      printf '%s: snapshot %s quiesced: %s\n' "$k" "${dsnap[$k]}" "${quiesced[$k]}"
    printf '%s: snapshot %s %s\n' "$k" "${dsnap[$k]}" "${merged[$k]}"
    case "${merged[$k]}" in "merged back") ;; *) ok=0 ;; esac
  done
  for k in "${keys[@]}"; do
    : "${result[$k]:=FAILED: interrupted}"
    case "${result[$k]}" in "backed up"*) ;; *) drop_parts "$k" ;; esac
    printf '%s: %s\n' "$k" "${result[$k]}"
    case "${result[$k]}" in "backed up"* | skipped*) ;; *) ok=0 ;; esac
  done
  [ "$rc" -lt 128 ] || echo "interrupted (status $rc)"
  [ "$ok" -eq 1 ] && exit 0
  [ "$rc" -ge 128 ] && exit "$rc"
  exit 1
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_copy — kill the running cp and its progress display, and wait for
# them, so that disk.raw is closed.
stop_copy() {
  local p
  for p in "$prog_pid" "$pv_pid" "$cp_pid"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
  for p in "$prog_pid" "$pv_pid" "$cp_pid"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null
  done
  cp_pid="" pv_pid="" prog_pid=""
}

# drop_parts KEY — remove the .part files of a disk that was not backed
# up (only files: whatever else is in the way is not ours).
# shellcheck disable=SC2317 # run by cleanup
drop_parts() {
  local f
  [ -n "${dest[$1]:-}" ] || return 0
  for f in "${dest[$1]}".{raw,raw.sha256,chain.json,info.json}.part; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then rm -f -- "$f"; fi
  done
}

# merge_back DOMAIN — rmdir the domain-level snapshot this run made (every
# disk's merge, one job group), wait for the group to end, and record the
# outcome in merged[DOMAIN].
merge_back() {
  local dom=$1 name=${dsnap[$1]} out="" i job state err rem
  local path="$mount/$1/snapshots/$name"
  local run="run: rmdir '$path'"
  if [ ! -e "$path" ] && [ -z "${quiesced[$dom]:-}" ]; then
    # the mkdir failed (or was never made): nothing to merge
    dsnap[$dom]=""
    return
  fi
  for ((i = 0; i < 10; i++)); do
    # A reader just closed may still be released by chainfs (the kernel
    # sends the release after close returns): EBUSY, try again.
    out=$(LC_ALL=C rmdir -- "$path" 2>&1) && break
    case "$out" in
      *"busy"*) sleep 1 ;;
      *) break ;;
    esac
  done
  if [ -e "$path" ] && [ -n "$out" ]; then
    merged[$dom]="NOT merged back: ${out##*: }; $run"
    return
  fi
  log "$dom: merging snapshot $name back (every disk)"
  if ! job=$(cat -- "$mount/$dom/wait"); then
    merged[$dom]="NOT known to be merged back (waiting was interrupted); see: cat '$mount/$dom/job'"
    return
  fi
  # the domain's block is the first paragraph of its job
  job=$(sed '/^$/q' <<<"$job")
  state=$(sed -n 's/^state: *//p' <<<"$job")
  err=$(sed -n 's/^error: *//p' <<<"$job")
  [ "$err" = "-" ] && err=""
  if [ -e "$path" ]; then
    rem=$(sed -n 's/^remaining: *//p' "$path/info" 2>/dev/null)
    merged[$dom]="NOT merged back: merge $state${err:+: $err}${rem:+; remaining: $rem}; $run"
  else
    merged[$dom]="merged back"
  fi
}

# ---- the copy ----------------------------------------------------------------

# fd_of PID FILE — the descriptor PID has FILE open on, once it has.
fd_of() {
  local f i
  for ((i = 0; i < 100; i++)); do
    for f in /proc/"$1"/fd/*; do
      [ "$(readlink "$f" 2>/dev/null)" = "$2" ] && { echo "${f##*/}"; return 0; }
    done
    # an exited cp is a zombie until waited for: kill -0 still works
    [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ] && return 1
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# progress PID FD SIZE LABEL — without pv: a line every 2 s from the read
# offset of PID's FD (which jumps over holes, as cp does).
progress() {
  local pos
  while sleep 2; do
    pos=$(sed -n 's/^pos:[[:space:]]*//p' "/proc/$1/fdinfo/$2" 2>/dev/null) || break
    [ -n "$pos" ] || break
    printf '\r%s: %3d%%  %s of %s ' "$4" $((pos * 100 / ($3 > 0 ? $3 : 1))) \
      "$(human "$pos")" "$(human "$3")" >&2
  done
}

# copy_disk KEY — copy the snapshot's image, chain.json and info.json
# into .part files in OUTDIR/DOMAIN/ (copied[KEY] set); on failure
# result[KEY] says why.
copy_disk() {
  local k=$1 dir=${ddir[$1]} name=${snap[$1]} dom=${1%/*} disk=${1##*/}
  local src dst part fd size t0 rc out i
  src="$dir/snapshots/$name/disk.raw"
  dst="$outdir/$dom/$disk"
  part="$dst.raw.part"
  if [ ! -e "$src" ]; then
    result[$k]="FAILED: snapshots/$name has no disk.raw (a chainfs without disk.raw, or a remote connection)"
    return
  fi
  if ! out=$(mkdir -p -- "$outdir/$dom" 2>&1); then
    result[$k]="FAILED: ${out#mkdir: }"
    return
  fi
  size=$(stat -c %s -- "$src") || { result[$k]="FAILED: cannot stat $src"; return; }
  dest[$k]=$dst
  log "$k: copying snapshot $name ($(human "$size")) to $part"
  t0=$(date +%s)
  # -T: a directory in the way is an error, not a place to copy into
  cp --sparse=always -T -- "$src" "$part" 2>"$work/cp.err" &
  cp_pid=$!
  if [ "$tty" -eq 1 ] && fd=$(fd_of "$cp_pid" "$src"); then
    if command -v pv >/dev/null 2>&1; then
      pv -N "$k" -d "$cp_pid:$fd" &
      pv_pid=$!
    else
      progress "$cp_pid" "$fd" "$size" "$k" &
      prog_pid=$!
    fi
  fi
  wait "$cp_pid"
  rc=$?
  cp_pid=""
  # pv ends by itself once cp is gone (it looks once a second): its last
  # frame shows the end of the copy
  for ((i = 0; i < 30; i++)); do
    if [ -z "$pv_pid" ] || ! kill -0 "$pv_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  stop_copy
  [ "$tty" -eq 1 ] && printf '\n' >&2
  if [ "$rc" -ne 0 ]; then
    result[$k]="FAILED: $(tr '\n' ' ' <"$work/cp.err" | sed 's/ *$//')"
    [ -n "${result[$k]#FAILED: }" ] || result[$k]="FAILED: cp exited with status $rc"
    return
  fi
  # the disk's chain and the snapshot's info, while the snapshot exists
  if ! out=$(cp -- "$dir/chain.json" "$dst.chain.json.part" 2>&1) ||
    ! out=$(cp -- "$dir/snapshots/$name/info.json" "$dst.info.json.part" 2>&1); then
    result[$k]="FAILED: $out"
    return
  fi
  copied[$k]=$size
  log "$k: copied in $(($(date +%s) - t0)) s"
}

# finish_disk KEY — once the snapshot is merged back (it need not wait
# for the checksum): DISK.raw.sha256, then every file under its name, the
# image last.
finish_disk() {
  local k=$1 dst=${dest[$1]:-} disk=${1##*/} sum
  [ -n "${copied[$k]:-}" ] || return
  log "$k: checksumming"
  if ! sum=$(sha256sum <"$dst.raw.part" | cut -d' ' -f1) || [ -z "$sum" ]; then
    result[$k]="FAILED: sha256sum of $dst.raw.part"
    return
  fi
  if ! printf '%s  %s\n' "$sum" "$disk.raw" >"$dst.raw.sha256.part" ||
    ! mv -f -- "$dst.raw.sha256.part" "$dst.raw.sha256" ||
    ! mv -f -- "$dst.chain.json.part" "$dst.chain.json" ||
    ! mv -f -- "$dst.info.json.part" "$dst.info.json" ||
    ! mv -f -- "$dst.raw.part" "$dst.raw"; then
    result[$k]="FAILED: could not write the files beside $dst.raw"
    return
  fi
  result[$k]="backed up to $dst.raw ($(human "${copied[$k]}"), $(human $(($(stat -c %b -- "$dst.raw") * 512))) of data)"
}

# ---- one domain ---------------------------------------------------------------

# excluded_why INFO DISK — why the domain-level snapshot left DISK out,
# from its info's "taken: domain (vda; not: hdc cdrom, vdc read-only)".
excluded_why() {
  sed -n 's/^taken: *[^;]*; *not: *\(.*\))$/\1/p; s/^taken: *[^(]*(not: *\(.*\))$/\1/p' "$1" |
    tr ',' '\n' | sed 's/^ *//' | awk -v d="$2" '$1 == d { $1 = ""; sub(/^ /, ""); print; exit }'
}

# backup_domain DOMAIN — one snapshot of every disk at once, copy each
# disk, merge the snapshot back on every disk.
backup_domain() {
  local dom=$1 d k name out q qwhy why mine=()
  if [ ! -d "$mount/$dom" ]; then
    failed_domains+=("$dom: no such domain in $mount")
    return
  fi
  for d in "$mount/$dom"/*/; do
    d=${d%/}
    # the domain's own snapshots/ is not a disk
    if [ "${d##*/}" = snapshots ] || [ ! -d "$d/snapshots" ]; then continue; fi
    k="$dom/${d##*/}"
    keys+=("$k")
    ddir[$k]=$d
    mine+=("$k")
  done
  if [ "${#mine[@]}" -eq 0 ]; then
    if [ "$all" -eq 1 ]; then
      log "$dom: no disk to back up"
    else
      failed_domains+=("$dom: no disk with snapshots/ in $mount/$dom")
    fi
    return
  fi
  name="backup-$stamp-$$"
  # recorded before the mkdir: an interrupted run merges back what exists
  doms+=("$dom")
  dsnap[$dom]=$name
  if ! out=$(LC_ALL=C mkdir -- "$mount/$dom/snapshots/$name" 2>&1); then
    dsnap[$dom]=""
    for k in "${mine[@]}"; do
      case "$out" in
        *"Read-only file system"*) result[$k]="skipped: no disk of $dom can have a snapshot (read-only)" ;;
        *) result[$k]="FAILED: no snapshot: ${out##*: }" ;;
      esac
    done
    return
  fi
  q=$(sed -n 's/^quiesced: *//p' "$mount/$dom/snapshots/$name/info")
  qwhy=$(sed -n 's/^quiesce: *//p' "$mount/$dom/snapshots/$name/info")
  quiesced[$dom]="${q:--}${qwhy:+ ($qwhy)}"
  log "$dom: snapshot $name taken, quiesced: ${quiesced[$dom]}"
  for k in "${mine[@]}"; do
    if [ -d "${ddir[$k]}/snapshots/$name" ]; then
      snap[$k]=$name
    else
      why=$(excluded_why "$mount/$dom/snapshots/$name/info" "${k##*/}")
      result[$k]="skipped: not in the snapshot${why:+ ($why)}"
    fi
  done
  # -q: consistent or nothing (a shut-off domain needs no freeze)
  if [ "$quiesce" -eq 1 ] && [ "$q" != yes ] && [ "$qwhy" != "domain shut off" ]; then
    log "$dom: the snapshot is not quiesced: not backed up (-q)"
    for k in "${mine[@]}"; do
      [ -n "${snap[$k]:-}" ] && result[$k]="FAILED: not quiesced (-q): ${qwhy:-unknown}"
    done
    merge_back "$dom"
    return
  fi
  for k in "${mine[@]}"; do
    [ -n "${snap[$k]:-}" ] && copy_disk "$k"
  done
  merge_back "$dom"
  for k in "${mine[@]}"; do
    [ -n "${snap[$k]:-}" ] && finish_disk "$k"
  done
}

log "backing up ${domains[*]} from $mount into $outdir"
for dom in "${domains[@]}"; do
  backup_domain "$dom"
done
exit 0

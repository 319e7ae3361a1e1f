#!/usr/bin/env bash
# backup.sh — a live backup of every disk of some VMs (or of all), through a
# chainfs mount: for each disk, a snapshot (mkdir), a sparse copy of the
# disk as it was at that moment (snapshots/NAME/disk.raw), a checksum, and
# the snapshot merged back (rmdir) — also when the copy fails or the script
# is interrupted.
#
#   usage: backup.sh [-m MOUNT] [-o OUTDIR] [-c URI] [-q] [--all | DOMAIN...]
#
#     -m MOUNT   the chainfs mount point (default /vms)
#     -o OUTDIR  where the backups go (default: the current directory);
#                each disk becomes OUTDIR/DOMAIN/DISK.raw with, beside it,
#                DISK.raw.sha256, DISK.chain.json and DISK.info.json
#     -c URI     libvirt connection for virsh (only -q uses virsh; default:
#                virsh's own, e.g. $LIBVIRT_DEFAULT_URI)
#     -q         quiesce: freeze the guest's filesystems (virsh domfsfreeze,
#                needs the QEMU guest agent in the guest) while the
#                snapshots of a domain are taken, thaw right after; without
#                an agent the backup goes on crash-consistent
#     --all      every domain in the mount
#     -h         this help
#
#   e.g.: backup.sh -o /backup/$(date +%F) web01 db01
#         backup.sh -q -o /srv/backup --all
#
# The disks of one domain are snapshotted one right after the other: each
# disk is crash-consistent (as after a power cut), the disks together only
# with -q. Read-only disks (cdroms) are skipped. An earlier DISK.raw in
# OUTDIR is replaced only once the new copy is complete. Restoring:
# examples/restore.md.
#
# Exit status: 0 if every disk was copied and every snapshot merged back,
# 1 otherwise (the summary says what failed and what to run), 2 for a bad
# command line. Needs: bash, coreutils (cp, sha256sum), and virsh for -q;
# pv draws a progress bar when installed and stderr is a terminal.
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

mount=/vms outdir=. uri="" quiesce=0 all=0
domains=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -m | -o | -c)
      [ "$#" -ge 2 ] || die_usage "option $1 needs an argument"
      case "$1" in -m) mount=$2 ;; -o) outdir=$2 ;; -c) uri=$2 ;; esac
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

virsh_() {
  if [ -n "$uri" ]; then virsh -q -c "$uri" "$@"; else virsh -q "$@"; fi
}
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
#   snap[k]    the snapshot this run created on the disk, if any
#   merged[k]  "merged back" / "NOT merged back: reason; run: ..." once tried
#   ddir[k]    the disk's directory in the mount
#   dest[k]    OUTDIR/DOMAIN/DISK, once a copy began; copied[k] its size
keys=()
declare -A result=() snap=() merged=() ddir=() dest=() copied=()
failed_domains=()
cp_pid="" pv_pid="" prog_pid="" frozen=""

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
  if [ -n "$frozen" ]; then
    if virsh_ domfsthaw "$frozen" >/dev/null; then
      log "$frozen: filesystems thawed"
    else
      log "$frozen: domfsthaw failed; run: virsh domfsthaw $frozen"
    fi
    frozen=""
  fi
  for k in "${keys[@]}"; do
    [ -n "${snap[$k]:-}" ] && [ -z "${merged[$k]:-}" ] && merge_back "$k"
  done
  rm -rf -- "$work"

  echo
  [ "$rc" -eq 0 ] || ok=0
  for k in "${failed_domains[@]}"; do
    printf '%s: FAILED: %s\n' "${k%%: *}" "${k#*: }"
    ok=0
  done
  for k in "${keys[@]}"; do
    : "${result[$k]:=FAILED: interrupted}"
    case "${result[$k]}" in "backed up"*) ;; *) drop_parts "$k" ;; esac
    printf '%s: %s\n' "$k" "${result[$k]}"
    case "${result[$k]}" in "backed up"* | skipped*) ;; *) ok=0 ;; esac
    if [ -n "${snap[$k]:-}" ]; then
      printf '%s: snapshot %s %s\n' "$k" "${snap[$k]}" "${merged[$k]}"
      case "${merged[$k]}" in "merged back") ;; *) ok=0 ;; esac
    fi
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

# merge_back KEY — rmdir the snapshot this run made on the disk, wait for
# the merge, and record the outcome in merged[KEY].
merge_back() {
  local k=$1 dir=${ddir[$1]} name=${snap[$1]} out i job state err
  local path="$dir/snapshots/$name"
  local run="run: rmdir '$path'"
  for ((i = 0; i < 10; i++)); do
    # The reader just closed may still be released by chainfs (the
    # kernel sends the release after close returns): EBUSY, try again.
    out=$(LC_ALL=C rmdir -- "$path" 2>&1) && break
    case "$out" in
      *"busy"*) sleep 1 ;;
      *) break ;;
    esac
  done
  if [ -e "$path" ] && [ -n "$out" ]; then
    merged[$k]="NOT merged back: ${out##*: }; $run"
    return
  fi
  log "$k: merging snapshot $name back"
  if ! job=$(cat -- "$dir/wait"); then
    merged[$k]="NOT known to be merged back (waiting was interrupted); see: cat '$dir/job'"
    return
  fi
  state=$(sed -n 's/^state: *//p' <<<"$job")
  err=$(sed -n 's/^error: *//p' <<<"$job")
  if [ -e "$path" ]; then
    merged[$k]="NOT merged back: merge $state${err:+: $err}; $run"
  else
    merged[$k]="merged back"
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

# backup_domain DOMAIN — snapshot every disk (frozen with -q), copy each,
# merge each back.
backup_domain() {
  local dom=$1 d disk k name out state mine=()
  if [ ! -d "$mount/$dom" ]; then
    failed_domains+=("$dom: no such domain in $mount")
    return
  fi
  for d in "$mount/$dom"/*/; do
    d=${d%/}
    [ -d "$d/snapshots" ] || continue
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
  state=$(sed -n 's/^state: *//p' "${ddir[${mine[0]}]}/chain")
  if [ "$quiesce" -eq 1 ]; then
    case "$state" in
      running*)
        if out=$(virsh_ domfsfreeze "$dom" 2>&1); then
          frozen=$dom
          log "$dom: filesystems frozen"
        else
          # virsh's last "error:" line is the reason (others are noise)
          out=$(sed -n 's/^error: //p' <<<"$out" | tail -n 1)
          log "$dom: cannot freeze the filesystems (no guest agent?): $out"
          log "$dom: going on; the snapshots are crash-consistent"
        fi ;;
      *) log "$dom: not running ($state): nothing to freeze" ;;
    esac
  fi
  for k in "${mine[@]}"; do
    disk=${k##*/}
    # libvirt's snapshot names are per domain: one name per disk
    name="backup-$stamp-$$-$(printf '%s' "$disk" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-24)"
    if out=$(LC_ALL=C mkdir -- "${ddir[$k]}/snapshots/$name" 2>&1); then
      snap[$k]=$name
      log "$k: snapshot $name taken"
    else
      case "$out" in
        *"Read-only file system"*) result[$k]="skipped: read-only disk" ;;
        *) result[$k]="FAILED: no snapshot: ${out##*: }" ;;
      esac
    fi
  done
  if [ -n "$frozen" ]; then
    if virsh_ domfsthaw "$dom" >/dev/null; then
      log "$dom: filesystems thawed"
    else
      log "$dom: domfsthaw failed; run: virsh domfsthaw $dom"
    fi
    frozen=""
  fi
  for k in "${mine[@]}"; do
    [ -n "${snap[$k]:-}" ] || continue
    copy_disk "$k"
    merge_back "$k"
    finish_disk "$k"
  done
}

log "backing up ${domains[*]} from $mount into $outdir"
for dom in "${domains[@]}"; do
  backup_domain "$dom"
done
exit 0

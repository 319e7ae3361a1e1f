#!/usr/bin/env bash
# snapshot-around-upgrade.sh — take a live snapshot of one VM disk, run a
# command (an upgrade in the guest, a risky migration, ...), and merge the
# snapshot back when the command succeeds. When it fails the snapshot is
# kept: the disk as it was before the command is its `frozen:` layer.
#
#   usage: snapshot-around-upgrade.sh MOUNTPOINT DOMAIN DISK COMMAND [ARG...]
#   e.g.:  snapshot-around-upgrade.sh /vms web01 vda ssh web01 'apt-get -y full-upgrade'
set -euo pipefail

if [ "$#" -lt 4 ]; then
  sed -n 's/^#   //p' "$0" >&2
  exit 2
fi
mnt=$1 dom=$2 disk=$3
shift 3
dir="$mnt/$dom/$disk"
name="pre-upgrade-$(date +%Y%m%d-%H%M%S)"

mkdir "$dir/snapshots/$name"
echo "snapshot $name taken; the disk before it is: $(sed -n 's/^frozen: *//p' "$dir/snapshots/$name/info")"

if "$@"; then
  echo "command succeeded; merging $name back"
  rmdir "$dir/snapshots/$name"
  if grep -q '^state: *completed$' "$dir/wait"; then
    echo "merged; chain is now:"
    cat "$dir/chain"
  else
    echo "merge did not complete:" >&2
    cat "$dir/job" >&2
    exit 1
  fi
else
  rc=$?
  echo "command failed (status $rc); snapshot $name kept:" >&2
  cat "$dir/snapshots/$name/info" >&2
  exit "$rc"
fi

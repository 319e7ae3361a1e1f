#!/usr/bin/env bash
# list-snapshots.sh — every snapshot of every VM on the host, one line each,
# from a chainfs mount: domain, disk, snapshot, depth (0 = active layer),
# allocated bytes of its overlay, and the overlay file.
#
#   usage: list-snapshots.sh [MOUNTPOINT]      (default /vms)
set -euo pipefail
mnt=${1:-/vms}

printf '%-20s %-6s %-24s %5s %12s  %s\n' DOMAIN DISK SNAPSHOT DEPTH ALLOCATED FILE
for chain in "$mnt"/*/*/chain.json; do
  [ -e "$chain" ] || continue
  jq -r '.domain as $d | .disk as $k | .layers[] | select(.snapshot)
         | [$d, $k, .snapshot, .index, .allocation, .file] | @tsv' "$chain"
done | while IFS=$'\t' read -r dom disk snap depth alloc file; do
  printf '%-20s %-6s %-24s %5s %12s  %s\n' "$dom" "$disk" "$snap" "$depth" "$alloc" "$file"
done

#!/usr/bin/env bash
# allocation.sh — ALLOCATED in `chain` (and allocation in chain.json) is
# the data each layer's file holds on the host (st_blocks * 512, what
# qemu-img info calls actual-size), for a shut-off and a running domain
# alike. domstats' allocation of a running domain is QEMU's highest
# written offset, 0 for every backing layer: a raw base holding 1 MiB
# showed 0B.
# Chain: top.qcow2 (active, empty) -> mid.qcow2 (2 MiB written) ->
# base.raw (64 MiB sparse, 1 MiB written).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-allocation"
base="$T/base.raw"
mid="$T/mid.qcow2"
top="$T/top.qcow2"
truncate -s 64M "$base"
it_write_pattern "$base" 0x11 0 1M
it_make_image "$mid" 64M "$base"
it_write_pattern "$mid" 0x22 1M 2M
it_make_image "$top" 64M "$mid"
held() { echo $(($(stat -c '%b * %B' "$1"))); }
it_assert_eq 1048576 "$(held "$base")" "the raw base holds 1 MiB on the host"
it_define "$D" "$top"
it_mount
it_wait_dom "$D"

# alloc_ok — chain.json's allocation of every layer is what its file holds
# now, and the text's ALLOCATED column says the same (base: 1.0MiB).
alloc_ok() {
  local f want got row
  for f in "$top" "$mid" "$base"; do
    want=$(held "$f")
    got=$(jq -r --arg f "$f" '.layers[] | select(.file == $f) | .allocation' "$MNT/$D/vda/chain.json")
    if [ "$got" != "$want" ]; then
      echo "chain.json: $(it_short "$f") allocation $got, the file holds $want" >&2
      return 1
    fi
  done
  row=$(awk -v f="$base" '$NF == f { print $6 }' "$MNT/$D/vda/chain")
  if [ "$row" != "1.0MiB" ]; then
    echo "chain: the base's ALLOCATED is '$row', not 1.0MiB" >&2
    return 1
  fi
}

# check STATE — wait (10 s) for chainfs to show STATE, then alloc_ok.
check() {
  it_wait_until 10 "chainfs shows the domain $1" grep -q "^state: *$1$" "$MNT/$D/vda/chain"
  if ! it_poll 10 alloc_ok; then
    alloc_ok || true
    cat "$MNT/$D/vda/chain" >&2
    it_fail "ALLOCATED of a $1 domain's layers is not the data they hold"
  fi
  it_log "ok: $1: every layer's ALLOCATED is the data its file holds (base 1.0MiB)"
}

check shutoff
it_start "$D"
check running
it_destroy "$D"
check shutoff

#!/usr/bin/env bash
# backend_list_race.sh — the bulk listing (list_stats, issue 12) lists a
# domain that starts or stops while it runs. It read the shut-off domains
# and the running ones in two libvirt calls, so a domain destroyed
# between them was in neither, and the engine took it for undefined: its
# directory vanished until the next refresh (an rmdir right after
# `virsh destroy` failed with ENOENT in destroy_rmdir). Through
# tests/tools/beop (list-stats: the backend's call, as the engine makes
# it, in a loop) against the real libvirtd while the domain is started
# and destroyed ROUNDS times; no chainfs mount.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
BEOP=${BEOP:-$IT_ROOT/build/tests/beop}
[ -x "$BEOP" ] || it_fail "no beop tool at $BEOP (build it: ninja -C build)"

D="$IT_PREFIX-listrace"
ROUNDS=${ROUNDS:-6}
it_make_image "$T/a.qcow2" 16M
it_define "$D" "$T/a.qcow2"

"$BEOP" "$IT_URI" list-stats "$D" "$T/stop" >"$T/out" 2>&1 &
lister=$!
for ((i = 1; i <= ROUNDS; i++)); do
  it_virsh start "$D" >/dev/null || it_fail "round $i: start"
  it_virsh destroy "$D" >/dev/null || it_fail "round $i: destroy"
done
touch "$T/stop"
rc=0
wait "$lister" || rc=$?
it_log "beop list-stats: $(tr '\n' ' ' <"$T/out")"
it_assert_eq 0 "$rc" "beop list-stats ran"
read -r _ listed _ missing <<<"$(grep '^listed ' "$T/out")"
[ "${listed:-0}" -gt 0 ] || it_fail "no listing made"
it_assert_eq 0 "$missing" "$D listed by every one of $listed listings while it started and stopped $ROUNDS times"

#!/usr/bin/env bash
# cwd_undefine.sh — a shell sits in MNT/DOM1/vda/snapshots (its working
# directory) while DOM1 is destroyed and undefined. Its later reads, `ls .`
# and `cat ../chain`, fail with ENOENT (and so do os.listdir('.') and
# open('../chain'), checked by errno); the daemon keeps serving: ls MNT no
# longer lists DOM1, DOM2's chain reads fine, and a snapshot of DOM2 is
# taken and merged away meanwhile. DOM1's images are left as they were.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D1="$IT_PREFIX-cwd1"
D2="$IT_PREFIX-cwd2"
# DOM1's images live apart: once DOM1 is undefined they are in no chain,
# and that is not an orphan chainfs made.
D1DIR=$(it_tmpdir)
base1="$D1DIR/base1.qcow2"
top1="$D1DIR/$D1.vda.s1.qcow2"
base2="$FAULT_IMAGES/base2.qcow2"
top2="$FAULT_IMAGES/$D2.vda.t1.qcow2"
it_make_image "$base1" 64M
it_write_pattern "$base1" 0x11 0 4M
it_make_image "$top1" 64M "$base1"
it_write_pattern "$top1" 0x22 2M 4M
it_make_image "$base2" 64M
it_write_pattern "$base2" 0x33 0 4M
it_make_image "$top2" 64M "$base2"
it_write_pattern "$top2" 0x44 2M 4M
it_define "$D1" "$top1"
it_define "$D2" "$top2"
it_start "$D1"
it_start "$D2"
it_mount
it_wait_dom "$D1"
it_wait_dom "$D2"

# The shell that sits in the mount. It reports through files in $T and
# exits on its own once it has read; the clean-up kills it (by its pid) if
# the test fails before, as it would keep the mount busy.
CWD="$T/cwd"
mkdir "$CWD"
# The interpreter itself: a pyenv-style python3 shim would first try to
# chdir to the (by then vanished) working directory and fail.
PY=$(python3 -c 'import sys; print(sys.executable)')
(
  set +e
  cd "$MNT/$D1/vda/snapshots" || exit 1
  ls . >"$CWD/before" 2>&1
  touch "$CWD/ready"
  while [ ! -e "$CWD/go" ]; do sleep 0.05; done
  ls . >"$CWD/ls" 2>&1
  echo "rc=$?" >>"$CWD/ls"
  cat ../chain >"$CWD/cat" 2>&1
  echo "rc=$?" >>"$CWD/cat"
  "$PY" - >"$CWD/errno" 2>&1 <<'PY'
import errno, os
def probe(what, fn):
    try:
        fn()
    except OSError as e:
        print("%s %s" % (what, errno.errorcode.get(e.errno, e.errno)))
    else:
        print("%s OK" % what)
probe("listdir", lambda: os.listdir("."))
probe("open", lambda: open("../chain", "rb").read())
probe("stat", lambda: os.stat("info-of-nothing"))
PY
) &
CWD_PID=$!
# shellcheck disable=SC2016 # evaluated at exit
fault_on_exit 'kill "$CWD_PID" 2>/dev/null; wait "$CWD_PID" 2>/dev/null'
it_wait_until 10 "the shell is in $D1/vda/snapshots" test -e "$CWD/ready"
it_assert_eq "s1" "$(tr -d '\n' <"$CWD/before")" "ls . in the shell shows s1 before"

it_destroy "$D1"
it_virsh undefine "$D1" >/dev/null || it_fail "virsh undefine $D1"
it_log "$D1 destroyed and undefined under the shell"
gone() { [ ! -e "$MNT/$D1" ]; }
it_wait_until 5 "$D1 leaves the mount" gone
touch "$CWD/go"
wait "$CWD_PID" || true # its findings are in $CWD
it_log "shell: ls . -> $(tr '\n' ' ' <"$CWD/ls")"
it_log "shell: cat ../chain -> $(tr '\n' ' ' <"$CWD/cat")"
it_assert_contains "$(cat "$CWD/ls")" "No such file or directory" "ls . in the shell: No such file or directory"
it_assert_contains "$(cat "$CWD/ls")" "rc=2" "ls . in the shell fails"
it_assert_contains "$(cat "$CWD/cat")" "No such file or directory" "cat ../chain in the shell: No such file or directory"
it_assert_contains "$(cat "$CWD/cat")" "rc=1" "cat ../chain in the shell fails"
it_assert_eq "listdir ENOENT open ENOENT stat ENOENT" "$(tr '\n' ' ' <"$CWD/errno" | sed 's/ $//')" \
  "os.listdir('.'), open('../chain') and a lookup in the old cwd: ENOENT"

# The daemon goes on serving.
it_assert_eq "$D2" "$(it_ls "$MNT" | tr ' ' '\n' | grep "^$IT_PREFIX-" | tr '\n' ' ' | sed 's/ $//')" \
  "ls MNT lists $D2 and no longer $D1"
it_check_chain "$D2" vda "$top2" "$base2"
mkdir "$MNT/$D2/vda/snapshots/t2" || it_fail "mkdir $D2/vda/snapshots/t2"
it_guest_write "$D2" 0x55 8M 2M
rmdir "$MNT/$D2/vda/snapshots/t2" || it_fail "rmdir $D2/vda/snapshots/t2"
out=$(it_wait_job "$D2" vda 60)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "a merge on $D2 completes after $D1 went away"
it_assert_eq "t1" "$(it_snapshots "$D2" vda)" "$D2's snapshots/ shows t1"
fault_check_invariants "$D2" vda

it_destroy "$D2"
fault_check_patterns "$top2" "0x33 0 2M" "0x44 2M 4M" "0x55 8M 2M"
# DOM1's chain, untouched by its undefinition.
it_assert_eq "$top1 $base1" "$(it_chain "$top1" | tr '\n' ' ' | sed 's/ $//')" "$D1's images still chain as before"
fault_check_patterns "$top1" "0x11 0 2M" "0x22 2M 4M"

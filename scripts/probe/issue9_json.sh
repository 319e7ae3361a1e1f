#!/bin/bash
# Probe for docs/design/issue9.md §1.2: qemu-nbd opening the frozen chain
# exactly as libvirt's model has it (json: pseudo-filename, every layer's
# driver and file explicit, relative backing paths resolved by the caller),
# and without a socket file: --socket in an abstract or private directory.
set -u
T=$(mktemp -d /tmp/issue9json.XXXXXX); P=
trap '[ -n "$P" ] && kill $P 2>/dev/null; sleep 0.2; rm -rf "$T"' EXIT
cd "$T" || exit 1
qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 0x11 0 1M' base.raw >/dev/null
mkdir sub; qemu-img create -q -f qcow2 -F raw -b ../base.raw sub/s1.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' sub/s1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b s1.qcow2 sub/s2.qcow2
J='json:{"driver":"qcow2","file":{"driver":"file","filename":"'$T'/sub/s1.qcow2"},"backing":{"driver":"raw","file":{"driver":"file","filename":"'$T'/base.raw"}}}'
echo "\$ qemu-nbd --read-only --socket=... --persistent --shared=0 '$J'"
mkdir -m 700 sock
qemu-nbd --read-only --socket="$T/sock/a.sock" --persistent --shared=0 "$J" & P=$!
for i in $(seq 50); do [ -S sock/a.sock ] && break; sleep 0.05; done
echo "  socket after $((i*50)) ms"
nbdinfo --map "nbd+unix:///?socket=$T/sock/a.sock" | sed 's/^/  /'
qemu-img convert -U -O raw sub/s1.qcow2 ref.raw
nbdcopy "nbd+unix:///?socket=$T/sock/a.sock" out.raw; cmp ref.raw out.raw && echo "  json: chain == qemu-img convert of sub/s1.qcow2"
echo "-- lock held on the raw base through the json chain? (qemu-io rw on base.raw)"
qemu-io -f raw -c 'write -P 0x66 0 64k' base.raw 2>&1 | sed 's/^/  /'
echo "-- backing:null on a qcow2 layer hides what is below (a wrong json would be silent): map"
kill $P; wait $P 2>/dev/null
qemu-nbd --read-only --socket="$T/sock/b.sock" --persistent 'json:{"driver":"qcow2","file":{"driver":"file","filename":"'$T'/sub/s1.qcow2"},"backing":null}' & P=$!
for i in $(seq 50); do [ -S sock/b.sock ] && break; sleep 0.05; done
nbdinfo --map "nbd+unix:///?socket=$T/sock/b.sock" | sed 's/^/  /'
kill $P; wait $P 2>/dev/null; P=
echo "-- start-up time of qemu-nbd until the socket accepts (5 runs, ms)"
for n in 1 2 3 4 5; do
  s=$(date +%s%N); qemu-nbd --read-only --socket="$T/sock/c.sock" --persistent "$J" & P=$!
  until nbdinfo --size "nbd+unix:///?socket=$T/sock/c.sock" >/dev/null 2>&1; do sleep 0.005; done
  e=$(date +%s%N); echo "  $(( (e-s)/1000000 ))"; kill $P; wait $P 2>/dev/null; P=
done

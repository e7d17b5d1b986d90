#!/usr/bin/env bash
# ferry across a veth pair between two network namespaces (MTU 1500 unless MTU=…), the
# way a real NIC sees it: 1472-byte datagrams, no loopback shortcut. ferryd in one
# namespace, ferry in the other, files on tmpfs, default (fair) policy and AES-128-GCM.
# Runs an upload and a download ROUNDS times for each BIN_DIR given, alternating, so two
# builds are compared side by side in one sitting; prints each rate and the client's and
# ferryd's CPU seconds per GiB. iperf3 UDP (1472 B, one datagram per call) and TCP on the
# same pair give the ceiling when installed. As root.
# Usage: benches/scripts/veth.sh BIN_DIR [BIN_DIR…]   (env: SIZE_MIB=512 ROUNDS=3 MTU=1500)
set -u
[[ $# -ge 1 ]] || { echo "usage: $0 BIN_DIR [BIN_DIR…]" >&2; exit 2; }
bins=(); for b in "$@"; do bins+=("$(realpath "$b")"); done; set -- "${bins[@]}"   # the run cds away
SIZE_MIB=${SIZE_MIB:-512}; ROUNDS=${ROUNDS:-3}; MTU=${MTU:-1500}
NS=ferryveth$$; A=$NS-a; B=$NS-b
W=$(mktemp -d /tmp/ferry-veth.XXXXXX); mount -t tmpfs -o size=$((SIZE_MIB * 4 + 256))m tmpfs "$W"
cleanup() {
  kill $(jobs -p) 2>/dev/null; pkill -f "ferryd run --config srv[0-9]" 2>/dev/null; wait 2>/dev/null
  sleep 0.5
  ip netns del "$A" 2>/dev/null; ip netns del "$B" 2>/dev/null
  cd / || true   # the shell itself works inside the tmpfs: leave it, or the umount is refused
  for _ in 1 2 3 4 5 6 7 8 9 10; do umount "$W" 2>/dev/null && break; sleep 1; done
  rmdir "$W" 2>/dev/null || echo "veth.sh: could not unmount $W; umount it by hand" >&2
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add va type veth peer name vb
ip link set va netns "$A"; ip link set vb netns "$B"
ip -n "$A" addr add 10.88.0.1/24 dev va; ip -n "$B" addr add 10.88.0.2/24 dev vb
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set va mtu "$MTU" up; ip -n "$B" link set vb mtu "$MTU" up
echo "machine: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); veth MTU $MTU, $SIZE_MIB MiB on tmpfs"
cd "$W" || exit 1
ssh-keygen -q -t ed25519 -N '' -f id -C accept
head -c $((SIZE_MIB * 1048576)) /dev/urandom > src.bin
mkdir back

if command -v iperf3 >/dev/null; then
  ip netns exec "$B" iperf3 -s -D -p 5301 >/dev/null 2>&1; sleep 0.5
  u=$(ip netns exec "$A" iperf3 -c 10.88.0.2 -p 5301 -u -b 0 -l 1472 -t 5 -J 2>/dev/null |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
  t=$(ip netns exec "$A" iperf3 -c 10.88.0.2 -p 5301 -t 5 -J 2>/dev/null |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
  echo "iperf3 UDP 1472 B: $u Gbit/s; TCP: $t Gbit/s"
  pkill -f "iperf3 -s -D -p 5301"
fi

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
tick=$(getconf CLK_TCK)
i=0
for bin in "$@"; do
  i=$((i + 1))
  "$bin/ferryd" init "srv$i" >/dev/null; cat id.pub >> "srv$i/authorized_keys"
  ip netns exec "$B" "$bin/ferryd" run --config "srv$i/ferryd.toml" --tcp-port $((33100 + i)) \
      --udp-port $((33100 + i)) --ctl-socket "$W/ctl$i.sock" > "out$i" 2> "err$i" &
done
sleep 1
for round in $(seq 1 "$ROUNDS"); do
  i=0
  for bin in "$@"; do
    i=$((i + 1)); port=$((33100 + i))
    server=$(pgrep -f "ferryd run --config srv$i/ferryd.toml" | head -1)
    for dir in send recv; do
      rm -f "srv$i/docroot/src.bin" back/*
      [[ $dir == recv ]] && cp src.bin "srv$i/docroot/src.bin"
      if [[ $dir == send ]]; then args=(src.bin accept@10.88.0.2:/); else args=(accept@10.88.0.2:/src.bin back/); fi
      s0=$(cpu_of "$server")
      /usr/bin/time -f "%U %S" -o cputime ip netns exec "$A" "$bin/ferry" "$dir" -P "$port" -i id \
          --known-hosts kh --accept-new --json "${args[@]}" > r.json 2>/dev/null
      s1=$(cpu_of "$server")
      python3 - "$bin" "$dir" "$round" "$SIZE_MIB" "$(cat cputime)" "$(( s1 - s0 ))" "$tick" <<'PY'
import json, sys
bin_, d, rnd, mib, cpu, srv, tick = sys.argv[1:]
last = [json.loads(l) for l in open("r.json") if l.startswith("{")][-1]
gib = int(mib) / 1024
client = sum(float(x) for x in cpu.split())
print(f"round {rnd} {bin_} {'upload' if d == 'send' else 'download'}: {last.get('rate_bps', 0)/1e9:.2f} Gbit/s "
      f"({last.get('status')}); CPU s/GiB client {client/gib:.2f} ferryd {int(srv)/int(tick)/gib:.2f}")
PY
    done
  done
done

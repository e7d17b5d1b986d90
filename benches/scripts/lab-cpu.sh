#!/usr/bin/env bash
# What the WAN lab's emulator costs: brings up a lab of its own (namespaces NAME-a/NAME-b),
# then for iperf3 TCP CUBIC, TCP BBR and UDP (1400-byte datagrams at 90 % of the rate) runs
# 10 s A -> B with ping A -> B alongside, and prints per test the emulator's CPU over the run
# (% of one core, utime + stime of all its threads from /proc/PID/stat; softirq work done in
# its write() counts, this kernel has no IRQ time accounting), iperf3's rate, UDP loss and
# the ping average under load. With LOSS > 0 the UDP test runs at 300 Mbit/s (the
# acceptance script's setting). TCP buffers in both namespaces are raised to 64 MiB. Takes the lab down at the end.
# Usage (root): [TESTS='cubic bbr udp'] benches/scripts/lab-cpu.sh [NAME] [RTT_MS] [RATE_MBPS] [LOSS] [lab up args..]
set -euo pipefail
NAME=${1:-labcpu}; RTT=${2:-100}; RATE=${3:-500}; LOSS=${4:-0}; shift $(( $# < 4 ? $# : 4 ))
cd "$(dirname "$0")/../.."
cargo xtask lab up --name "$NAME" --rtt-ms "$RTT" --rate-mbps "$RATE" --loss "$LOSS" "$@" >/dev/null
trap 'cargo xtask lab down --name "$NAME" >/dev/null 2>&1 || true' EXIT
A=$NAME-a; B=$NAME-b; BIP=10.77.0.2
# Hosts tuned for a long fat path: TCP may use 64 MiB windows (the kernel's 6 MiB default
# caps one flow at ~250 Mbit/s on 100 ms); net.ipv4.tcp_{r,w}mem are per namespace.
for ns in $A $B; do
  ip netns exec $ns sysctl -qw net.ipv4.tcp_rmem="4096 131072 67108864" net.ipv4.tcp_wmem="4096 16384 67108864"
done
PID=$(tr -d '\n' < "/run/ferry-lab/$NAME/emulator.pid")
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
port=5310
run() { # label, iperf3 client args...
  local label=$1; shift; port=$((port + 1))
  ip netns exec "$B" iperf3 -s -1 -p $port >/dev/null 2>&1 & local srv=$!
  sleep 0.3
  ip netns exec "$A" ping -i 0.2 -c 45 -q $BIP > /tmp/$NAME.ping 2>&1 & local png=$!
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(ticks)
  ip netns exec "$A" iperf3 -c $BIP -p $port -t 10 -J "$@" > /tmp/$NAME.json || true
  t1=$(date +%s.%N); c1=$(ticks)
  wait $png || true; wait $srv 2>/dev/null || true
  python3 - "$label" "$t0" "$t1" "$c0" "$c1" "$HZ" /tmp/$NAME.json /tmp/$NAME.ping <<'PY'
import json, re, sys
label, t0, t1, c0, c1, hz, jf, pf = sys.argv[1:]
cpu = (float(c1) - float(c0)) / float(hz) / (float(t1) - float(t0)) * 100
j = json.load(open(jf))
s = j["end"].get("sum_received") or j["end"]["sum"]
loss = j["end"].get("sum", {}).get("lost_percent")
m = re.search(r"= [0-9.]+/([0-9.]+)/([0-9.]+)/", open(pf).read())
out = f"{label:10} {s['bits_per_second']/1e6:6.0f} Mbit/s  emulator {cpu:4.0f} % of a core"
if loss is not None and "-u" in label: out += f"  udp loss {loss:.2f} %"
out += f"  ping avg {m.group(1)} max {m.group(2)} ms" if m else "  ping: none"
print(out)
PY
}
echo "# rtt ${RTT} ms, rate ${RATE} Mbit/s, loss ${LOSS}, lab args: $* ; $(uptime | sed 's/.*load/load/')"
TESTS=${TESTS:-cubic bbr udp}
[[ $TESTS == *cubic* ]] && run "tcp cubic" -C cubic
[[ $TESTS == *bbr* ]] && run "tcp bbr" -C bbr
if [[ $LOSS == 0 || $LOSS == 0.0 ]]; then udp=$((RATE * 9 / 10)); else udp=300; fi
[[ $TESTS == *udp* ]] && run "udp -u ${udp}m" -u -b ${udp}m -l 1400
tail -4 "/run/ferry-lab/$NAME/emulator.log" | cut -c1-220 || true

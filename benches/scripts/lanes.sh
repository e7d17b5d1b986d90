#!/usr/bin/env bash
# How ferryd scales across cores: N concurrent loopback uploads into one ferryd with one
# pinned data lane per session (cores 0..N-1), clients pinned on the upper half of the
# cores, files on /dev/shm, default (fair) policy. Prints, for N = 1, 2, 4, 8 (as far as
# the machine has 2N cores), the sum of the sessions' data-phase rates.
# Usage: benches/scripts/lanes.sh [BIN_DIR] [SIZE_MIB]   (BIN_DIR default target/release)
set -u
BIN=$(cd "${1:-$(dirname "$0")/../../target/release}" && pwd)
SIZE_MIB=${2:-512}
W=/dev/shm/ferry-lanes.$$; rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
cores=$(nproc)
echo "cores=$cores $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"$BIN/ferryd" init srv >/dev/null
# KEY=FILE uses an existing ed25519 key (its .pub beside it) where ssh-keygen is missing.
if [[ -n ${KEY:-} ]]; then cp "$KEY" id; cp "$KEY.pub" id.pub; chmod 600 id
else ssh-keygen -q -t ed25519 -N '' -f id -C accept; fi
cat id.pub >> srv/authorized_keys
head -c $((SIZE_MIB * 1048576)) /dev/urandom > src.bin
for lanes in 1 2 4 8; do
  (( 2 * lanes <= cores )) || break
  sed -i "s/^cores = .*/cores = [$(seq -s, 0 $((lanes - 1)))]/" srv/ferryd.toml
  "$BIN/ferryd" run --config srv/ferryd.toml --tcp-port 0 --udp-port 0 --ctl-socket "$W/ctl.sock" > out.txt 2> err.txt &
  server=$!; sleep 0.5
  port=$(sed -n 's/.*tcp=[^ ]*:\([0-9]*\).*/\1/p' out.txt)
  pids=()
  for n in $(seq 1 "$lanes"); do mkdir -p "c$n"; cp src.bin "c$n/f$n.bin"; done
  for n in $(seq 1 "$lanes"); do
    taskset -c $((cores / 2 + (n - 1) % (cores / 2))) "$BIN/ferry" send -P "$port" -i id \
      --known-hosts kh --accept-new --json "c$n/f$n.bin" accept@127.0.0.1:/ > "r$n.json" 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  python3 - "$lanes" <<'PY'
import json, sys
n = int(sys.argv[1])
rs = [json.loads([l for l in open(f"r{i}.json") if l.startswith("{")][-1])["rate_bps"] for i in range(1, n + 1)]
print(f"lanes={n}: {sum(rs)/1e9:.1f} Gbit/s in all; per session " + " ".join(f"{r/1e9:.1f}" for r in rs))
PY
  kill "$server"; wait "$server" 2>/dev/null; rm -f srv/docroot/*
done

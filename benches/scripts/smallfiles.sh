#!/usr/bin/env bash
# What a small file costs: one big file and a tree of 10,000 files of 1-64 KiB (the tree
# shared/acceptance/multisession.sh sends), uploaded over loopback into one ferryd, side by
# side, REPS times; files on a tmpfs. Prints each run's data-phase rates and their ratio.
# With PERF=1 the last run of each is recorded (perf record -a) and the CPU of ferryd and
# of the client is split by the system call (or io_uring worker, or AES) it was spent in,
# as microseconds per file of the tree and per MiB, so per-file costs show apart from
# per-byte ones; KEEP_PERF=DIR keeps the recordings (big.perf, small.perf) there. As root
# (tmpfs, perf).
# Usage: benches/scripts/smallfiles.sh [BIN_DIR] [REPS] [BIG_MIB]   (env SESSIONS=3)
set -euo pipefail
BIN=$(realpath "${1:-$(dirname "$0")/../../target/release}")
REPS=${2:-3}
BIG_MIB=${3:-1024}
SESSIONS=${SESSIONS:-3}
FILES=10000
W=$(mktemp -d /tmp/ferry-small.XXXXXX)
mount -t tmpfs -o size=$((BIG_MIB * 2 + 1024))m tmpfs "$W"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  [[ -n ${KEEP_PERF:-} ]] && cp "$W"/*.perf "$KEEP_PERF"/ 2>/dev/null; cd / && umount "$W" && rmdir "$W"
}
trap cleanup EXIT
cd "$W"
"$BIN/ferryd" init srv >/dev/null
ssh-keygen -q -t ed25519 -N '' -f id -C bench
cat id.pub >> srv/authorized_keys
"$BIN/ferryd" run --config srv/ferryd.toml --tcp-port 0 --udp-port 0 --ctl-socket "$W/ctl.sock" \
  > ferryd.out 2> ferryd.err &
server=$!
for _ in $(seq 1 100); do grep -q '^ready ' ferryd.out && break; sleep 0.1; done
port=$(sed -n 's/.*tcp=[^ ]*:\([0-9]*\).*/\1/p' ferryd.out)
head -c $((BIG_MIB * 1048576)) /dev/urandom > big.bin
python3 - small "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2]); rnd = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 65536)))
PY
small_mib=$(du -sm --apparent-size small | cut -f1)

# send NAME ARGS...: one upload, its JSON in NAME.json; recorded as NAME.perf on the last run.
send() {
  local name=$1; shift
  local cmd=("$BIN/ferry" send -P "$port" -i id --known-hosts kh --accept-new --json "$@" bench@127.0.0.1:/)
  if [[ -n ${PERF:-} && $last == 1 ]]; then
    perf record -q -F 2999 -g -a -o "$name.perf" -- "${cmd[@]}" > "$name.json" 2>/dev/null
  else
    "${cmd[@]}" > "$name.json"
  fi
}
rate() { python3 -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])["rate_bps"])' "$1"; }

for i in $(seq 1 "$REPS"); do
  last=$(( i == REPS ))
  rm -rf srv/docroot/*
  send big big.bin
  rm -rf srv/docroot/*
  send small --sessions "$SESSIONS" small
  diff -r small srv/docroot/small >/dev/null || { echo "FAIL: the tree differs"; exit 1; }
  python3 - "$(rate big.json)" "$(rate small.json)" <<'PY'
import sys
b, s = (float(x) for x in sys.argv[1:])
print(f"big {b/1e9:.2f} Gbit/s  small files {s/1e9:.2f} Gbit/s  small/big {s/b:.2f}")
PY
done

[[ -n ${PERF:-} ]] || exit 0
# CPU by process and by where it went, from the recorded call chains: the outermost system
# call in a sample's chain names it; io_uring workers, AES and the rest are their own rows,
# and the control plane's threads (SSH, manifest, planning; the client's main thread) one.
for name in big small; do
  echo "== $name: CPU per file and per MiB ($( [[ $name == big ]] && echo "$BIG_MIB MiB, 1 file" || echo "$small_mib MiB, $FILES files"))"
  perf script -i "$name.perf" -F comm,pid,ip,sym 2>/dev/null | awk \
    -v ferryd="$server" -v hz=2999 -v files=$([[ $name == big ]] && echo 1 || echo "$FILES") \
    -v mib=$([[ $name == big ]] && echo "$BIG_MIB" || echo "$small_mib") '
    function emit() {
      if (!have) return
      if (comm ~ /^tokio-rt|^ferry-control$|^ferry$/) cat = "control-plane"
      if (cat == "") cat = (comm == "swapper" ? "" : "other")
      if (cat != "") n[who " " cat]++
      have = 0
    }
    /^[^ \t]/ { emit(); have = 1; comm = $1; cat = ""; pid = $2 + 0
                who = (pid == ferryd ? "ferryd" : (comm == "swapper" ? "idle" : (comm ~ /^ferry/ || comm ~ /^iou-wrk/ ? "client" : "other"))); next }
    /^[ \t]*$/ { emit(); next }
    { s = $2
      if (s ~ /^__x64_sys_|^__do_sys_/) { sub(/^__x64_sys_|^__do_sys_/, "", s); cat = s }
      else if (s == "io_wq_worker") cat = "io_uring-worker"
      else if (cat == "" && s ~ /aes_gcm/) cat = "aes-gcm" }
    END {
      emit()
      for (k in n) {
        split(k, a, " "); if (a[1] == "other" || a[1] == "idle") continue
        us = n[k] / hz * 1e6
        total[a[1]] += us
        if (files > 1) printf "%-7s %-18s %7.2f us/file %7.1f us/MiB\n", a[1], a[2], us / files, us / mib
        else printf "%-7s %-18s %7.1f us/MiB\n", a[1], a[2], us / mib
      }
      for (w in total) printf "%-7s %-18s %7.1f ms in all %7.1f us/MiB\n", w, "=", total[w] / 1e3, total[w] / mib
    }' | sort -k1,1 -k3,3rn | awk '$(NF - 1) + 0 >= 5'
done

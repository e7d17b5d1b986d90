#!/usr/bin/env python3
"""One file over 1 and over N sessions on loopback, side by side, with what each side spent.

    python3 benches/scripts/sessions.py [--size-mib 2048] [--sessions 2] [--runs 3]

A warm-up round of both comes first and is not counted; then the order alternates.

Builds nothing: run `cargo build --release --bins` first. Files live on a tmpfs (the
engine is measured, not the disk); needs root for the mount. Each run alternates one
session and N sessions, so both see the same machine. For each: the data-phase rate
(`rate_bps` of ferry's last JSON line), and the CPU seconds the client (ferry) and the
server (ferryd) spent, as cycles per byte at the CPU's nominal clock: sessions add cores,
not cycles, so the per-byte cost is what carries over to bigger hosts.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")


def cpu_hz():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1e6
    raise SystemExit("no 'cpu MHz' in /proc/cpuinfo")


def proc_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ferry-sessions.")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={a.size_mib * 3 + 512}m", "tmpfs", work],
                   check=True)
    ferryd = None
    try:
        subprocess.run([f"{BIN}/ferryd", "init", f"{work}/srv"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{work}/id", "-C", "bench"],
                       check=True)
        with open(f"{work}/srv/authorized_keys", "a") as ak:
            ak.write(open(f"{work}/id.pub").read())
        ferryd = subprocess.Popen(
            [f"{BIN}/ferryd", "run", "--config", f"{work}/srv/ferryd.toml", "--tcp-port", "0",
             "--udp-port", "0", "--ctl-socket", f"{work}/ctl.sock"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = ferryd.stdout.readline()
        port = ready.split("tcp=")[1].split()[0].rsplit(":", 1)[1]
        src = f"{work}/big.bin"
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        size = a.size_mib << 20
        hz = cpu_hz()
        rows = []
        # Run 0 warms up and is not counted: on a VM whose host takes free memory back, the
        # first transfer into fresh tmpfs pages pays for touching them again. The order
        # then alternates, so neither count always goes first.
        for run in range(0, a.runs + 1):
            for n in ((1, a.sessions) if run % 2 else (a.sessions, 1)):
                shutil.rmtree(f"{work}/srv/docroot", ignore_errors=True)
                os.makedirs(f"{work}/srv/docroot")
                before_srv = proc_cpu(ferryd.pid)
                before_cli = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run(
                    [f"{BIN}/ferry", "send", "-P", port, "-i", f"{work}/id", "--known-hosts",
                     f"{work}/known_hosts", "--accept-new", "--json", "--retry", "0",
                     "--sessions", str(n), src, "bench@127.0.0.1:/"],
                    capture_output=True, text=True)
                time.sleep(0.2)
                after_cli = resource.getrusage(resource.RUSAGE_CHILDREN)
                srv = proc_cpu(ferryd.pid) - before_srv
                cli = (after_cli.ru_utime - before_cli.ru_utime) + (after_cli.ru_stime - before_cli.ru_stime)
                done = json.loads(out.stdout.strip().splitlines()[-1])
                if done.get("status") != "ok":
                    raise SystemExit(f"transfer failed: {done}")
                if run > 0:
                    rows.append((run, n, done["rate_bps"] / 1e9, cli * hz / size, srv * hz / size))
        print(f"# {a.size_mib} MiB over 1 and {a.sessions} sessions, loopback, tmpfs; "
              f"{os.cpu_count()} cores at {hz / 1e9:.2f} GHz; "
              f"{time.strftime('%Y-%m-%d %H:%M')}; python3 benches/scripts/sessions.py "
              f"--size-mib {a.size_mib} --sessions {a.sessions} --runs {a.runs}")
        print("| run | sessions | Gbit/s | client cycles/B | server cycles/B | total cycles/B |")
        print("|---|---|---|---|---|---|")
        for run, n, g, c, s in rows:
            print(f"| {run} | {n} | {g:.2f} | {c:.2f} | {s:.2f} | {c + s:.2f} |")
        for n in (1, a.sessions):
            gs = sorted(r[2] for r in rows if r[1] == n)
            print(f"median over {len(gs)} runs, {n} session(s): {gs[len(gs) // 2]:.2f} Gbit/s")
    finally:
        if ferryd:
            ferryd.kill()
            ferryd.wait()
        subprocess.run(["umount", work], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

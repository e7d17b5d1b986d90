#!/usr/bin/env bash
# How fast a fresh tmpfs takes new pages, one GiB at a time, up to MAX_GIB (default 8).
# On a VM whose host takes freed memory back (virtio-balloon free page reporting, see
# /sys/module/page_reporting), the first write to a page the host has reclaimed costs an
# exit to the host: such GiBs run at ~0.5 GB/s instead of 2-3. Recently freed memory is
# warm again for a while, so the first few GiBs are often fast and the rest slow. Every
# receiver writing into tmpfs (acceptance scripts, `cargo xtask bench`) is bounded by this,
# so run it before comparing rates between sittings. As root.
set -euo pipefail
MAX_GIB=${MAX_GIB:-8}
M=$(mktemp -d /tmp/ferry-memtemp.XXXXXX)
mount -t tmpfs -o size=$((MAX_GIB + 1))g tmpfs "$M"
trap 'umount "$M"; rmdir "$M"' EXIT
r=/sys/module/page_reporting/parameters/reported_kib
[[ -r $r ]] && echo "free memory reported to the host so far: $(( $(cat $r) / 1048576 )) GiB"
for i in $(seq 1 "$MAX_GIB"); do
  echo "GiB $i: $(dd if=/dev/zero of="$M/$i" bs=1M count=1024 2>&1 | tail -1 | awk '{print $(NF-1), $NF}')"
done

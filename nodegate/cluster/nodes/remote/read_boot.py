"""Node-side: what identifies the node and its current boot, as one JSON line (nodegate.cluster.node_identity).

/etc/machine-id (machine-id(5)), the boot id, /proc/uptime (the clock that starts at boot, proc(5)),
the node's wall clock, and the pending-reboot marker update-notifier writes.
"""
import json
import os
import time


def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


up = read("/proc/uptime")
now = time.time()
pkgs = read("/var/run/reboot-required.pkgs") or ""
print(json.dumps({
    "machine_id": (read("/etc/machine-id") or "").strip(),
    "boot_id": (read("/proc/sys/kernel/random/boot_id") or "").strip(),
    "uptime": float(up.split()[0]) if up else None,
    "now": now,
    "reboot_required": os.path.exists("/var/run/reboot-required"),
    "reboot_packages": [p for p in pkgs.split() if p],
}))

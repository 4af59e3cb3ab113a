#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Snapshot figures, in one run: a full snapshot of 1 GiB written into a 4 GiB volume
against `qemu-img convert -O qcow2` of the same data; an incremental snapshot after a 1%
change; create-volume from a snapshot at 1 GiB and 64 GiB; first-touch reads of a lazily
restored volume against the same reads once hydrated.

Usage: bench/snapshot_perf.py [--build DIR] [--out FILE.json]
Runs its own ebsimd on a private home under /var/tmp and removes everything it made."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

GIB = 1 << 30
MIB = 1 << 20


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


class Ebsim:
    def __init__(self, build, home):
        self.build, self.home = build, home

    def __call__(self, *args):
        out = sh(os.path.join(self.build, "ebsim"), "--home", self.home, *map(str, args))
        return json.loads(out) if out.strip() else {}

    def snapshot(self, vol):
        t0 = time.monotonic()
        s = self("create-snapshot", "--volume-id", vol)["SnapshotId"]
        while self("describe-snapshots", "--snapshot-ids", s)["Snapshots"][0]["State"] == "pending":
            time.sleep(0.01)
        return s, time.monotonic() - t0


def write_random(path, off, size, bs=16 * MIB):
    fd = os.open(path, os.O_WRONLY)
    try:
        for o in range(0, size, bs):
            os.pwrite(fd, os.urandom(min(bs, size - o)), off + o)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rate(path, off, size, bs=MIB):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    import mmap
    buf = mmap.mmap(-1, bs)
    t0 = time.monotonic()
    try:
        for o in range(0, size, bs):
            os.preadv(fd, [buf], off + o)
    finally:
        os.close(fd)
    return size / (time.monotonic() - t0) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="ebsim-snapperf-", dir="/var/tmp")
    build = os.path.abspath(a.build)
    sh(os.path.join(build, "ebsimd"), "--home", home)
    e = Ebsim(build, home)
    res = {}
    try:
        v = e("create-volume", "--size", 4)
        write_random(v["LocalPath"], 0, GIB)
        sync_t0 = time.monotonic()
        os.sync()
        s1, t_full = e.snapshot(v["VolumeId"])
        res["full_snapshot_1GiB_s"] = round(t_full, 3)
        res["full_snapshot_GBps"] = round(GIB / t_full / 1e9, 3)
        q = os.path.join(home, "convert.qcow2")
        t0 = time.monotonic()
        sh("qemu-img", "convert", "-O", "qcow2",
           os.path.join(home, "volumes", v["VolumeId"], "data"), q)
        sh("sync")
        res["qemu_img_convert_s"] = round(time.monotonic() - t0, 3)
        os.unlink(q)
        # 1% change: 41 MiB of the 4 GiB volume, in 64 KiB pieces spread over the 1 GiB written
        fd = os.open(v["LocalPath"], os.O_WRONLY)
        for i in range(656):
            os.pwrite(fd, os.urandom(64 * 1024), (i * 1597 % 16384) * 65536)
        os.fsync(fd)
        os.close(fd)
        s2, t_inc = e.snapshot(v["VolumeId"])
        res["incremental_1pct_s"] = round(t_inc, 3)
        res["incremental_over_full"] = round(t_inc / t_full, 3)
        # create-volume latency at 1 GiB and 64 GiB
        v1 = e("create-volume", "--size", 1)
        write_random(v1["LocalPath"], 0, 64 * MIB)
        s3, _ = e.snapshot(v1["VolumeId"])
        v64 = e("create-volume", "--size", 64)
        write_random(v64["LocalPath"], 32 * GIB, 64 * MIB)
        s4, _ = e.snapshot(v64["VolumeId"])
        for name, snap in (("create_volume_1GiB_ms", s3), ("create_volume_64GiB_ms", s4)):
            t0 = time.monotonic()
            e("create-volume", "--snapshot-id", snap)
            res[name] = round((time.monotonic() - t0) * 1000, 1)
        # first touch (lazy) against hydrated
        r = e("create-volume", "--snapshot-id", s1)
        res["first_touch_read_MBps"] = round(read_rate(r["LocalPath"], 0, 512 * MIB), 1)
        r2 = e("create-volume", "--snapshot-id", s1)
        e("initialize-volume", "--volume-id", r2["VolumeId"])
        while True:
            d = e("describe-volumes", "--volume-ids", r2["VolumeId"])["Volumes"][0]
            st = d.get("InitializationStatusDetails")
            if not st or st.get("Progress") == 100:
                break
            time.sleep(0.1)
        res["hydrated_read_MBps"] = round(read_rate(r2["LocalPath"], 0, 512 * MIB), 1)
        del sync_t0
    finally:
        subprocess.run([os.path.join(build, "ebsimd"), "--home", home, "--stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

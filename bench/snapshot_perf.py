#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Snapshot figures: a full snapshot of 1 GiB written into a 4 GiB volume against
`qemu-img convert -O qcow2` of the same data (plus a sync: both end durable); an
incremental snapshot after a 1% change, and its fraction of the full one; create-volume
from a snapshot at 1 GiB and 64 GiB (median of 5 calls each); first-touch reads of a lazily
restored volume against the same reads once hydrated.

Usage: bench/snapshot_perf.py [--build DIR] [--repeats N] [--full-only] [--fs xfs]
                              [--out FILE.json]
--fs xfs runs everything (the daemon's home, the qemu-img and dd comparisons) on an XFS
with reflink=1 made for the run: a sparse 12 GiB image under --scratch on a loop device,
mounted on a private directory; unmounted, detached (by its name) and removed at the end.
There a snapshot clones new chunks into its packs instead of copying them; the phases then
also give "cloned" (bytes that entered the packs as clones).
--full-only measures only the full snapshot and the disk's bound (a quick A/B of the
snapshot writer). Each sample also carries the full snapshot's per-phase seconds as the
daemon logged them ("full_phases": read, zero-test+hash, pack put, pack commit, manifest).
Runs its own ebsimd on a private home under /var/tmp (or --scratch DIR) and removes
everything it made. `make bench` runs it too (bench.py: the "snapshots" section of
bench/results/latest.{json,md}). Each repeat uses fresh volumes; the result gives every
sample and, per figure, the median with min and max, and the load average around the run
(other work on the host's 2 CPUs shows up there)."""
import argparse
import json
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

GIB = 1 << 30
MIB = 1 << 20

# name -> (unit, better, description) in report order
FIGURES = {
    "full_snapshot_1GiB_s": ("s", "lower", "full snapshot, 1 GiB written in a 4 GiB volume"),
    "full_snapshot_GBps": ("GB/s", "higher", "full snapshot throughput"),
    "qemu_img_convert_s": ("s", "lower", "`qemu-img convert -O qcow2` of the same data + sync"),
    "full_vs_qemu_img": ("ratio", "higher", "qemu-img time / full snapshot time (> 1: faster)"),
    "disk_copy_1GiB_s": ("s", "lower", "the disk's bound: `dd` of the same 1 GiB to a new file, `conv=fdatasync`"),
    "disk_copy_GBps": ("GB/s", "higher", "that copy's throughput: no durable 1 GiB snapshot can beat it"),
    "full_vs_disk_copy": ("ratio", "higher", "copy time / full snapshot time (1: at the disk's bound)"),
    "incremental_1pct_s": ("s", "lower", "incremental snapshot after a 1% change (656 chunks)"),
    "incremental_over_full": ("ratio", "lower", "incremental time / full time"),
    "create_volume_1GiB_ms": ("ms", "lower", "create-volume from a 1 GiB snapshot (CLI round trip)"),
    "create_volume_64GiB_ms": ("ms", "lower", "create-volume from a 64 GiB snapshot (CLI round trip)"),
    "first_touch_read_MBps": ("MB/s", "higher", "first-touch sequential read, lazily restored (1 MiB O_DIRECT)"),
    "hydrated_read_MBps": ("MB/s", "higher", "the same reads once hydrated"),
}


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
        st = self("describe-snapshots", "--snapshot-ids", s)["Snapshots"][0]["State"]
        if st != "completed":
            raise RuntimeError(f"snapshot {s} ended {st}")
        return s, time.monotonic() - t0

    def hydrate(self, vol, timeout=None):
        """initialize-volume vol and wait until it is done; returns the seconds taken."""
        t0 = time.monotonic()
        self("initialize-volume", "--volume-id", vol, "--no-wait")
        while True:
            st = self("describe-volumes", "--volume-ids", vol)["Volumes"][0] \
                .get("InitializationStatusDetails")
            if not st or st.get("Progress") == 100:
                return time.monotonic() - t0
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise RuntimeError(f"initialize-volume {vol}: not done after {timeout} s")
            time.sleep(0.1)


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
    buf = mmap.mmap(-1, bs)
    t0 = time.monotonic()
    try:
        for o in range(0, size, bs):
            os.preadv(fd, [buf], off + o)
    finally:
        os.close(fd)
    return size / (time.monotonic() - t0) / 1e6


CLONED_RE = re.compile(r"bytes new, (\d+) of them cloned")
PHASE_RE = re.compile(r"seconds: read ([0-9.]+), zero-test\+hash ([0-9.]+), pack put ([0-9.]+), "
                      r"pack commit ([0-9.]+), manifest ([0-9.]+)")


def phases(home, snap):
    """The per-phase seconds the daemon logged for snapshot snap, or None. The line is
    logged just after the state turns 'completed': wait up to a second for it."""
    for _ in range(100):
        try:
            with open(os.path.join(home, "ebsimd.log")) as f:
                for line in f:
                    m = PHASE_RE.search(line) if f"snapshot {snap} of" in line else None
                    if m:
                        ph = dict(zip(("read", "hash", "put", "commit", "manifest"),
                                      map(float, m.groups())))
                        c = CLONED_RE.search(line)
                        if c:
                            ph["cloned"] = int(c.group(1))
                        return ph
        except OSError:
            return None
        time.sleep(0.01)
    return None


def disk_copy(res, home, src, t_full):
    """The disk's bound: a plain durable copy of the same bytes."""
    c = os.path.join(home, "copy.raw")
    t0 = time.monotonic()
    sh("dd", "if=" + src, "of=" + c, "bs=1M", "count=1024", "conv=fdatasync", "status=none")
    res["disk_copy_1GiB_s"] = round(time.monotonic() - t0, 3)
    res["disk_copy_GBps"] = round(GIB / res["disk_copy_1GiB_s"] / 1e9, 3)
    res["full_vs_disk_copy"] = round(res["disk_copy_1GiB_s"] / t_full, 3)
    os.unlink(c)


def one_repeat(e, home, full_only=False):
    """One sample of every figure, on fresh volumes."""
    res = {}
    v = e("create-volume", "--size", 4)
    write_random(v["LocalPath"], 0, GIB)
    sh("sync", "-f", home)  # the home's file system (a global sync waits on every writer)
    s1, t_full = e.snapshot(v["VolumeId"])
    res["full_snapshot_1GiB_s"] = round(t_full, 3)
    res["full_snapshot_GBps"] = round(GIB / t_full / 1e9, 3)
    res["full_phases"] = phases(home, s1)
    if full_only:
        disk_copy(res, home, os.path.join(home, "volumes", v["VolumeId"], "data"), t_full)
        e("delete-volume", "--volume-id", v["VolumeId"])
        e("delete-snapshot", "--snapshot-id", s1)
        return res
    q = os.path.join(home, "convert.qcow2")
    t0 = time.monotonic()
    sh("qemu-img", "convert", "-O", "qcow2",
       os.path.join(home, "volumes", v["VolumeId"], "data"), q)
    sh("sync", q)
    res["qemu_img_convert_s"] = round(time.monotonic() - t0, 3)
    res["full_vs_qemu_img"] = round(res["qemu_img_convert_s"] / t_full, 3)
    os.unlink(q)
    disk_copy(res, home, os.path.join(home, "volumes", v["VolumeId"], "data"), t_full)
    # 1% change: 41 MiB of the 4 GiB volume, in 64 KiB pieces spread over the 1 GiB written
    fd = os.open(v["LocalPath"], os.O_WRONLY)
    for i in range(656):
        os.pwrite(fd, os.urandom(64 * 1024), (i * 1597 % 16384) * 65536)
    os.fsync(fd)
    os.close(fd)
    s2, t_inc = e.snapshot(v["VolumeId"])
    res["incremental_1pct_s"] = round(t_inc, 3)
    res["incremental_over_full"] = round(t_inc / t_full, 3)
    # create-volume latency at 1 GiB and 64 GiB (median of 5 calls)
    v1 = e("create-volume", "--size", 1)
    write_random(v1["LocalPath"], 0, 64 * MIB)
    s3, _ = e.snapshot(v1["VolumeId"])
    v64 = e("create-volume", "--size", 64)
    write_random(v64["LocalPath"], 32 * GIB, 64 * MIB)
    s4, _ = e.snapshot(v64["VolumeId"])
    made = []
    for name, snap in (("create_volume_1GiB_ms", s3), ("create_volume_64GiB_ms", s4)):
        ts = []
        for _ in range(5):
            t0 = time.monotonic()
            made.append(e("create-volume", "--snapshot-id", snap)["VolumeId"])
            ts.append((time.monotonic() - t0) * 1000)
        res[name] = round(statistics.median(ts), 1)
    # first touch (lazy) against hydrated
    r = e("create-volume", "--snapshot-id", s1)
    res["first_touch_read_MBps"] = round(read_rate(r["LocalPath"], 0, 512 * MIB), 1)
    r2 = e("create-volume", "--snapshot-id", s1)
    e.hydrate(r2["VolumeId"])
    res["hydrated_read_MBps"] = round(read_rate(r2["LocalPath"], 0, 512 * MIB), 1)
    # free the space for the next repeat
    for vid in made + [r["VolumeId"], r2["VolumeId"], v["VolumeId"], v1["VolumeId"],
                       v64["VolumeId"]]:
        e("delete-volume", "--volume-id", vid)
    for s in (s1, s2, s3, s4):
        e("delete-snapshot", "--snapshot-id", s)
    return res


def summary(samples):
    out = {}
    for k in FIGURES:
        v = [s[k] for s in samples if k in s]
        if v:
            out[k] = dict(median=statistics.median(v), min=min(v), max=max(v), n=len(v))
    return out


def measure(build, home, repeats, say=print, full_only=False):
    """Start ebsimd on home (an empty directory), take `repeats` samples, stop it.
    Returns {"samples": [...], "summary": {figure: {median, min, max, n}}, "loadavg": ...}."""
    load0 = [round(x, 1) for x in os.getloadavg()]
    sh(os.path.join(build, "ebsimd"), "--home", home)
    e = Ebsim(build, home)
    samples = []
    try:
        for rep in range(repeats):
            s = one_repeat(e, home, full_only)
            s["loadavg"] = [round(x, 1) for x in os.getloadavg()]
            samples.append(s)
            if full_only:
                say(f"snapshots rep {rep + 1}/{repeats}: full {s['full_snapshot_1GiB_s']} s "
                    f"phases {s['full_phases']}, disk copy {s['disk_copy_1GiB_s']} s "
                    f"(load {s['loadavg'][0]})")
                continue
            say(f"snapshots rep {rep + 1}/{repeats}: full {s['full_snapshot_1GiB_s']} s "
                f"phases {s['full_phases']} "
                f"(qemu-img {s['qemu_img_convert_s']} s), incremental "
                f"{s['incremental_1pct_s']} s, create-volume 64 GiB "
                f"{s['create_volume_64GiB_ms']} ms, first touch "
                f"{s['first_touch_read_MBps']} MB/s (load {s['loadavg'][0]})")
    finally:
        subprocess.run([os.path.join(build, "ebsimd"), "--home", home, "--stop"],
                       capture_output=True)
    return dict(samples=samples, summary=summary(samples), loadavg_start=load0,
                loadavg_end=[round(x, 1) for x in os.getloadavg()])


def fmt(v):
    if isinstance(v, (int, float)) and abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def measure_on_xfs(build, scratch, repeats, say=print, full_only=False, home_cb=None):
    """measure() with the home on a reflink XFS file system made for the run: a sparse
    12 GiB image in scratch, on a loop device, mounted under scratch; all of it removed by
    exact name afterwards. home_cb(home), if given, is told the home before the daemon
    starts (bench.py's cleanup ledger)."""
    img = dev = mnt = None
    try:
        fd, img = tempfile.mkstemp(prefix="ebsim-snapperf-", suffix=".img", dir=scratch)
        os.ftruncate(fd, 12 * GIB)
        os.close(fd)
        dev = sh("losetup", "-f", "--show", img).strip()
        sh("mkfs.xfs", "-q", "-m", "reflink=1", dev)
        mnt = tempfile.mkdtemp(prefix="ebsim-snapperf-mnt-", dir=scratch)
        sh("mount", dev, mnt)
        home = tempfile.mkdtemp(prefix="ebsim-snapperf-", dir=mnt)
        if home_cb:
            home_cb(home)
        try:
            return measure(build, home, repeats, say=say, full_only=full_only)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    finally:
        if mnt:
            subprocess.run(["umount", mnt], capture_output=True)
            if subprocess.run(["mountpoint", "-q", mnt]).returncode != 0:
                os.rmdir(mnt)
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        if img:
            os.unlink(img)


def md_section(snap, title="Snapshots (bench/snapshot_perf.py)"):
    """The markdown section bench.py puts in latest.md."""
    L = [f"## {title}", "",
         f"{len(snap['samples'])} repeat(s) on fresh volumes; load average "
         f"{snap['loadavg_start'][0]} at the start, {snap['loadavg_end'][0]} at the end.", "",
         "| figure | median (min–max) | unit | what |", "|---|---|---|---|"]
    for k, (unit, better, desc) in FIGURES.items():
        v = snap["summary"].get(k)
        if not v:
            continue
        cell = fmt(v["median"]) + ("" if v["n"] < 2 else f" ({fmt(v['min'])}–{fmt(v['max'])})")
        L.append(f"| {k} | {cell} | {unit} ({better} is better) | {desc} |")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--scratch", default="/var/tmp", help="parent of the private home")
    ap.add_argument("--out", default=None)
    ap.add_argument("--full-only", action="store_true",
                    help="only the full snapshot and the disk copy (quick A/B)")
    ap.add_argument("--fs", choices=("scratch", "xfs"), default="scratch",
                    help="xfs: run on a reflink XFS loop image made for the run")
    a = ap.parse_args()
    say = lambda *x: print(*x, file=sys.stderr)  # noqa: E731
    if a.fs == "xfs":
        res = measure_on_xfs(os.path.abspath(a.build), a.scratch, a.repeats, say=say,
                             full_only=a.full_only)
    else:
        home = tempfile.mkdtemp(prefix="ebsim-snapperf-", dir=a.scratch)
        try:
            res = measure(os.path.abspath(a.build), home, a.repeats, say=say,
                          full_only=a.full_only)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    res["fs"] = a.fs
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

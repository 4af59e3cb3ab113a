#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""launch_vs_copy.py - how long run-instances takes from an EBS-backed AMI (request to
reply, when the root is restored and mounted), for a 1 GiB and an 8 GiB image holding the
same 256 MiB file, against copying each image in full (cp --sparse=never of the image's
volume file, i.e. what a launch would cost if it copied the image).

Usage: sudo /usr/bin/python3 bench/launch_vs_copy.py [--runs N] [--data-mib M]

Design notes: everything lives in a scratch directory under $EBSIM_BENCH_DIR (default
/var/tmp): a private ebsimd home (--no-base-images) and the copies. Cleanup always runs
(finally): instances terminated, the loop device and mount it made removed by exact name,
the daemon stopped by --stop (then by its PID), the scratch directory removed. Binaries
come from $EBSIM_BUILD (default build/).
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("EBSIM_BUILD", os.path.join(ROOT, "build"))
MIB, GIB = 1 << 20, 1 << 30


def sh(*cmd):
    p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{cmd} -> {p.returncode}: {p.stderr}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="launches per image (median)")
    ap.add_argument("--data-mib", type=int, default=256, help="size of the file in each image")
    a = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="ebsim-launch.",
                               dir=os.environ.get("EBSIM_BENCH_DIR", "/var/tmp"))
    home = os.path.join(scratch, "home")
    mnt = os.path.join(scratch, "build-mnt")
    cli = [os.path.join(BUILD, "ebsim"), "--home", home]
    loop = None
    insts = []
    rows = []

    def ok(*args):
        return json.loads(sh(*cli, *args))

    try:
        sh(os.path.join(BUILD, "ebsimd"), "--home", home, "--no-base-images")
        rnd = random.Random(1)
        data = b"".join(rnd.randbytes(MIB) for _ in range(a.data_mib))
        for gib in (1, 8):
            v = ok("create-volume", "--size", gib)
            sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", v["LocalPath"])
            loop = sh("losetup", "-f", "--show", "--direct-io=on", v["LocalPath"]).strip()
            os.makedirs(mnt, exist_ok=True)
            sh("mount", loop, mnt)
            with open(os.path.join(mnt, "data.bin"), "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
            sh("umount", mnt)
            sh("losetup", "-d", loop)
            loop = None
            snap = ok("create-snapshot", "--volume-id", v["VolumeId"])["SnapshotId"]
            while ok("describe-snapshots", "--snapshot-ids", snap)["Snapshots"][0]["State"] != "completed":
                time.sleep(0.2)
            bdm = json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])
            ami = ok("register-image", "--name", f"bench-{gib}g", "--root-device-name",
                     "/dev/xvda", "--block-device-mappings", bdm)["ImageId"]
            times = []
            for _ in range(a.runs):
                t0 = time.monotonic()
                inst = ok("run-instances", "--image-id", ami, "--instance-type", "t3.micro")
                times.append(time.monotonic() - t0)
                i = inst["Instances"][0]
                insts.append(i["InstanceId"])
                assert os.path.ismount(i["RootMount"]), i
                ok("terminate-instances", "--instance-ids", i["InstanceId"])
                insts.remove(i["InstanceId"])
            copy = os.path.join(scratch, "copy.img")
            sh("sync", "-f", scratch)
            t0 = time.monotonic()
            sh("cp", "--sparse=never", v["LocalPath"], copy)
            sh("sync", copy)
            tc = time.monotonic() - t0
            os.unlink(copy)
            rows.append((gib, statistics.median(times), tc))
        print(f"image with a {a.data_mib} MiB file; run-instances = request to reply, root "
              f"restored lazily and mounted (median of {a.runs}); full copy = "
              f"cp --sparse=never of the image's volume file + sync")
        for gib, tl, tc in rows:
            print(f"  {gib} GiB AMI: run-instances {tl * 1000:7.0f} ms   full copy "
                  f"{tc:6.2f} s   ({tc / tl:.0f}x)")
    finally:
        for i in insts:
            subprocess.run([*cli, "terminate-instances", "--instance-ids", i],
                           capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", mnt], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run([os.path.join(BUILD, "ebsimd"), "--home", home, "--stop"],
                       capture_output=True)
        if not os.path.ismount(os.path.join(home, "mnt")):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"left {scratch}: its FUSE mount is still there")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""ab.py - A/B of ebsim builds or options: daemons side by side, one fio job at a time.

usage: bench/ab.py [options] NAME=BUILD_DIR[:EBSIMD_ARGS][+CREATE_VOLUME_ARGS] ...

Each NAME gets its own home under --scratch (default: a new directory in /var/tmp), an
ebsimd from BUILD_DIR (started with EBSIMD_ARGS, e.g. ":--io-engine psync"), a 1 GiB
volume (created with CREATE_VOLUME_ARGS, e.g. "+--encrypted"), a loop device on it
(direct-io on), and the bench's preconditioning: one sequential pass of 1 MiB writes
through the loop device. Then, for --rounds rounds, every job runs once on every daemon,
the daemons in a new random order each time, so that the host's drift hits them alike.

Output: per job and daemon the median IOPS (min-max over rounds) and the daemon's CPU time
(all its threads, from /proc) per I/O; then, for each daemon after the first, the median
(min-max) of the per-round ratios against the first one. The first NAME is the reference.

options:
  --rounds N      rounds (default 4)
  --runtime S     seconds per fio run (default 3)
  --jobs LIST     comma-separated, from: rr1 rr rw mix sr sw (default rr,rw,mix)
                  rr1 = 4k random read QD1, rr/rw = 4k random read/write QD32,
                  mix = 70/30 4k random QD16, sr/sw = 1 MiB sequential read/write QD8
  --via file|loop fio on the FUSE file or on the loop device (default loop)
  --scratch DIR   an empty directory for the homes (removed at the end)

Design notes: a ledger of what was made (loop devices by name, daemons by home) is undone
in reverse order on exit, on an error and on SIGINT/SIGTERM; a loop device is detached
only by the name losetup gave it, a daemon stopped only through its own home. This is a
tool for comparing builds (speed figures belong to `make bench`, bench/bench.py).
"""
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from snapshot_perf import sh  # noqa: E402

JOBS = dict(rr1=dict(rw="randread", iodepth=1), rr=dict(rw="randread", iodepth=32),
            rw=dict(rw="randwrite", iodepth=32),
            mix=dict(rw="randrw", rwmixread=70, iodepth=16),
            sr=dict(rw="read", bs="1M", iodepth=8), sw=dict(rw="write", bs="1M", iodepth=8))


def usage(msg=None):
    if msg:
        print(f"ab.py: {msg}", file=sys.stderr)
    print(__doc__.split("Design notes")[0].rstrip(), file=sys.stderr if msg else sys.stdout)
    sys.exit(2 if msg else 0)


def cpu_seconds(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def parse(argv):
    opts = dict(rounds="4", runtime="3", jobs="rr,rw,mix", via="loop", scratch=None)
    specs = []
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            usage()
        if a.startswith("--"):
            key, eq, val = a[2:].partition("=")
            if key not in opts:
                usage(f"unknown option --{key}")
            opts[key] = val if eq else next(it, None)
            if opts[key] is None:
                usage(f"--{key} needs a value")
        elif "=" in a:
            name, rest = a.split("=", 1)
            rest, _, vargs = rest.partition("+")
            bdir, _, dargs = rest.partition(":")
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or any(s["name"] == name for s in specs):
                usage(f"bad or repeated name {name!r}")
            for b in ("ebsimd", "ebsim"):
                if not os.access(os.path.join(bdir, b), os.X_OK):
                    usage(f"{bdir}/{b} is not an executable")
            specs.append(dict(name=name, bdir=bdir, dargs=dargs.split(), vargs=vargs.split()))
        else:
            usage(f"unexpected argument {a!r}")
    if not specs:
        usage("name at least one NAME=BUILD_DIR")
    jobs = opts["jobs"].split(",")
    bad = [j for j in jobs if j not in JOBS]
    if bad:
        usage(f"unknown job(s) {','.join(bad)}")
    if opts["via"] not in ("file", "loop"):
        usage("--via is file or loop")
    try:
        rounds, runtime = int(opts["rounds"]), int(opts["runtime"])
        assert rounds > 0 and runtime > 0
    except (ValueError, AssertionError):
        usage("--rounds and --runtime are positive integers")
    return specs, jobs, rounds, runtime, opts["via"], opts["scratch"]


def main():
    specs, jobs, rounds, runtime, via, scratch = parse(sys.argv[1:])
    if os.geteuid() != 0:
        usage("needs root (FUSE mounts and loop devices)")
    if scratch:
        if not os.path.isdir(scratch) or os.listdir(scratch):
            usage(f"--scratch {scratch} is not an empty directory")
    else:
        scratch = tempfile.mkdtemp(prefix="ebsim-ab-", dir="/var/tmp")
    undo = []  # callables, run in reverse order

    def cleanup(*_):
        while undo:
            try:
                undo.pop()()
            except Exception as e:  # keep undoing the rest
                print(f"ab.py: cleanup: {e}", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
        if _:
            sys.exit(130)

    signal.signal(signal.SIGINT, cleanup)
    signal.signal(signal.SIGTERM, cleanup)
    try:
        for s in specs:
            home = os.path.join(scratch, s["name"])
            os.makedirs(home)
            undo.append(lambda s=s, h=home: subprocess.run(
                [f"{s['bdir']}/ebsimd", "--home", h, "--stop"], capture_output=True))
            sh(f"{s['bdir']}/ebsimd", "--home", home, *s["dargs"])
            with open(os.path.join(home, "ebsimd.pid")) as f:
                s["pid"] = int(f.read())
            vol = json.loads(sh(f"{s['bdir']}/ebsim", "--home", home, "create-volume",
                                "--size", "1", *s["vargs"]))["VolumeId"]
            s["file"] = os.path.join(home, "mnt", vol)
            s["dev"] = sh("losetup", "-f", "--show", "--direct-io=on", s["file"]).strip()
            undo.append(lambda d=s["dev"]: subprocess.run(["losetup", "-d", d]))
            sh("fio", "--name=fill", f"--filename={s['dev']}", "--direct=1",
               "--ioengine=io_uring", "--rw=write", "--bs=1M", "--iodepth=8", "--size=1G")
            s["res"] = {}
        for r in range(rounds):
            for j in jobs:
                order = specs[:]
                random.shuffle(order)
                for s in order:
                    p = dict(bs="4k")
                    p.update(JOBS[j])
                    c0 = cpu_seconds(s["pid"])
                    out = sh("fio", "--name=ab", f"--filename={s['dev' if via == 'loop' else 'file']}",
                             "--direct=1", "--ioengine=io_uring", "--time_based",
                             f"--runtime={runtime}", "--size=1G", "--output-format=json",
                             *[f"--{k}={v}" for k, v in p.items()])
                    cpu = cpu_seconds(s["pid"]) - c0
                    job = json.loads(out)["jobs"][0]
                    iops = job["read"]["iops"] + job["write"]["iops"]
                    s["res"].setdefault(j, []).append((iops, cpu / (iops * runtime) * 1e6))
            print(f"round {r + 1}/{rounds}", file=sys.stderr)
        print(f"{'job':5} " + " ".join(f"{s['name']:>26}" for s in specs))
        for j in jobs:
            cells = []
            for s in specs:
                io = sorted(x[0] for x in s["res"][j])
                us = statistics.median(x[1] for x in s["res"][j])
                cells.append(f"{statistics.median(io) / 1e3:.1f}k "
                             f"({io[0] / 1e3:.0f}-{io[-1] / 1e3:.0f}) {us:.1f}us")
            print(f"{j:5} " + " ".join(f"{c:>26}" for c in cells))
        ref = specs[0]
        for j in jobs:
            for s in specs[1:]:
                rs = sorted(a[0] / b[0] for a, b in zip(s["res"][j], ref["res"][j]))
                print(f"ratio {j} {s['name']}/{ref['name']}: median "
                      f"{statistics.median(rs):.3f} ({rs[0]:.2f}-{rs[-1]:.2f})")
    finally:
        cleanup()


if __name__ == "__main__":
    main()

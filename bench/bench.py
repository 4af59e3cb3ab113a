#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench.py - the ebsim benchmark driver: one interleaved fio matrix over ebsim, the raw
disk and qemu-storage-daemon, reported as JSON, a markdown table and a gnuplot chart.

Design notes
------------
Tables.  What the run measures is described by the tables below:
  MODES     full and quick: file size, runtime, ramp, repeats;
  BACKINGS  how to build one thing to measure (a raw file, an ebsim volume on a daemon
            with a given I/O engine, a volume restored from a snapshot, cold or hydrated,
            a qemu-storage-daemon FUSE export); its kind picks the setup function in SETUP
            (fresh_each: a new restored volume before every fio run, so each run is a
            first touch);
  TARGETS   a backing seen one way: as its file ("file") or through a loop device
            ("loop");
  JOBS      what is run against each target: a fio profile, or any other callable that
            returns one sample (``run`` is a function of (ctx, job, target) that returns a
            sample dict, or None when the job does not apply to that target);
  CRITERIA  the issue's goals, judged on the summaries.
Adding a target or a job is one entry in the matching table (plus, for a new kind of
backing, its setup function in SETUP).

Interleaving.  Each repeat runs every job over every target; for each (repeat, job) the
target order is shuffled by one seeded RNG whose seed is logged, so machine drift hits all
targets alike.  Ratios against a reference target are computed per repeat (paired) and
then summarised, so a slow minute moves numerator and denominator together.  Every figure
is the median of the repeats with its min-max spread.

Preconditioning.  A fresh sparse volume is a trap (PERF-NOTES): first writes allocate.
Each backing is first measured once fresh (4k random write QD32 for a few seconds,
reported apart, never mixed into the matrix) and then written in full with 1 MiB writes,
so the matrix measures allocated storage.

Cleanup.  Every resource is appended to SCRATCH/ledger.jsonl (fsynced) the moment it
exists: ebsimd homes (before the daemon starts), qemu-storage-daemon PIDs and mount points
(spawned with signals blocked, so no signal lands between spawn and record), and loop
devices.  cleanup() runs from a finally block here and again from run.sh's trap
(``--cleanup``): loops first (only those whose backing file is under SCRATCH, found by
ledger and by scan, so a reused loop number is never detached), then qsd by PID (checked
against /proc/PID/cmdline so a reused PID is never killed), then ebsimd (--stop, then its
PID), then any mount left under SCRATCH, then SCRATCH itself (never while anything is
mounted in it).  cleanup() is idempotent and ignores signals while it runs.
"""
import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snapshot_perf  # noqa: E402  (bench/snapshot_perf.py: the snapshot figures)
BUILD = os.environ.get("EBSIM_BUILD", os.path.join(ROOT, "build"))
GIB = 1 << 30
MIB = 1 << 20

# ----------------------------------------------------------------------------------------
# The tables.

# Run modes. size: bytes of each test file (fio --size); fresh_s: the fresh-write probe.
MODES = {
    "full": dict(size=1 * GIB, runtime=5, ramp=0.5, repeats=3, fresh_s=3),
    "quick": dict(size=512 * MIB, runtime=1, ramp=0.25, repeats=2, fresh_s=1),
}

# kind selects the setup function in SETUP; the rest are its parameters.
BACKINGS = {
    "raw": dict(kind="raw", desc="a preallocated raw file on the host filesystem"),
    "raw-cached": dict(kind="raw", desc="a second raw file, used only through a loop device "
                       "without direct I/O, i.e. through the host page cache"),
    "ebsim-uring": dict(kind="ebsim", engine="io_uring", desc="ebsim volume, io_uring engine"),
    "ebsim-furing": dict(kind="ebsim", engine="io_uring", transport="io_uring",
                         desc="ebsim volume, io_uring engine, FUSE over io_uring "
                         "(ebsimd --fuse-transport io_uring)"),
    "ebsim-libaio": dict(kind="ebsim", engine="libaio", desc="ebsim volume, libaio engine"),
    "ebsim-psync": dict(kind="ebsim", engine="psync", desc="ebsim volume, psync engine"),
    "ebsim-enc": dict(kind="ebsim", engine="io_uring", encrypted=True,
                      desc="encrypted ebsim volume (--encrypted), io_uring engine"),
    # file_opts: extra options of qsd's file node. None = qsd's defaults (cache.direct=off,
    # aio=threads), as users run it and as ebsim runs: both go through the host page cache.
    "qsd-raw": dict(kind="qsd", fmt="raw", file_opts=None,
                    desc="qemu-storage-daemon FUSE export of a raw file"),
    "qsd-qcow2": dict(kind="qsd", fmt="qcow2", file_opts=None,
                      desc="qemu-storage-daemon FUSE export of a qcow2 overlay on a raw base"),
    # Restored from one snapshot of the whole volume, written with random bytes (setup
    # _restored). fresh_each: every fio run gets a volume restored just before it, so each
    # run is a first touch (blocks fetched from the snapshot, lazily). precondition=False:
    # a fill would overwrite what is being measured.
    "ebsim-restored-cold": dict(kind="ebsim-restored", engine="io_uring", precondition=False,
                                fresh_each=True,
                                desc="ebsim volume restored from a snapshot, cold: each run on "
                                "a volume restored just before it (first touch, blocks "
                                "fetched from the snapshot as they are read or written)"),
    "ebsim-restored-hydrated": dict(kind="ebsim-restored", engine="io_uring",
                                    precondition=False, hydrate=True,
                                    desc="ebsim volume restored from a snapshot, then hydrated "
                                    "(initialize-volume) before the runs"),
}

# via: "file" = fio on the backing's file; "loop" = fio on a loop device over it.
# quick: also in --quick runs. plain: the unencrypted twin of an encrypted target.
# loop_dio=False: a loop without --direct-io, so its file is read and written through the
# host page cache, as ebsim and qsd use their backing files (a yardstick for that, not a
# goal). It has a file of its own: direct I/O on a shared file would drop its cache.
TARGETS = [
    dict(name="raw", backing="raw", via="file", quick=True),
    dict(name="raw-loop", backing="raw", via="loop"),
    dict(name="raw-loop-cached", backing="raw-cached", via="loop", loop_dio=False),
    dict(name="ebsim-uring", backing="ebsim-uring", via="file", quick=True),
    dict(name="ebsim-uring-loop", backing="ebsim-uring", via="loop", quick=True),
    dict(name="ebsim-furing", backing="ebsim-furing", via="file"),
    dict(name="ebsim-furing-loop", backing="ebsim-furing", via="loop", quick=True),
    dict(name="ebsim-libaio", backing="ebsim-libaio", via="file"),
    dict(name="ebsim-libaio-loop", backing="ebsim-libaio", via="loop"),
    dict(name="ebsim-psync", backing="ebsim-psync", via="file"),
    dict(name="ebsim-psync-loop", backing="ebsim-psync", via="loop"),
    dict(name="ebsim-enc", backing="ebsim-enc", via="file", plain="ebsim-uring"),
    dict(name="ebsim-enc-loop", backing="ebsim-enc", via="loop", quick=True,
         plain="ebsim-uring-loop"),
    dict(name="ebsim-restored-cold-loop", backing="ebsim-restored-cold", via="loop"),
    dict(name="ebsim-restored-hydrated-loop", backing="ebsim-restored-hydrated", via="loop"),
    dict(name="qsd-raw", backing="qsd-raw", via="file"),
    dict(name="qsd-raw-loop", backing="qsd-raw", via="loop"),
    dict(name="qsd-qcow2", backing="qsd-qcow2", via="file"),
    dict(name="qsd-qcow2-loop", backing="qsd-qcow2", via="loop", quick=True),
]

REF_RAW = "raw"
REF_QSD = "qsd-qcow2-loop"


def run_fio_job(ctx, job, target):
    """A JOBS runner: one fio run of job["fio"] on the target's path (on a newly restored
    volume for a fresh_each backing)."""
    if BACKINGS[target["backing"]].get("fresh_each"):
        renew_restored(ctx, target)
    return fio_sample(ctx, ctx.fio_cmd(target, job["fio"], ctx.runtime, ctx.ramp))


# metric: "iops" (read+write IOs per second) or "MB/s" (10^6 bytes per second).
# `ebsim bench` (tools/ebsim.c, cli_bench_profiles) runs the same fio profiles: keep in step.
# better: "higher" or "lower" (a future timing job, in seconds, would say "lower").
JOBS = [
    dict(name="rr4k-qd1", desc="4k random read, QD1", metric="iops", better="higher",
         run=run_fio_job, fio=dict(rw="randread", bs="4k", iodepth=1)),
    dict(name="rr4k-qd32", desc="4k random read, QD32", metric="iops", better="higher",
         run=run_fio_job, fio=dict(rw="randread", bs="4k", iodepth=32)),
    dict(name="rw4k-qd32", desc="4k random write, QD32", metric="iops", better="higher",
         run=run_fio_job, fio=dict(rw="randwrite", bs="4k", iodepth=32)),
    dict(name="mix4k-qd16", desc="4k random 70% read / 30% write, QD16", metric="iops",
         better="higher", run=run_fio_job,
         fio=dict(rw="randrw", rwmixread=70, bs="4k", iodepth=16)),
    dict(name="sr1m-qd8", desc="1 MiB sequential read, QD8", metric="MB/s",
         better="higher", run=run_fio_job, fio=dict(rw="read", bs="1M", iodepth=8)),
    dict(name="sw1m-qd8", desc="1 MiB sequential write, QD8", metric="MB/s",
         better="higher", run=run_fio_job, fio=dict(rw="write", bs="1M", iodepth=8)),
    # Later (snapshots), non-fio jobs, e.g.
    # dict(name="snap-full-1g", desc="full snapshot of 1 GiB", metric="s", better="lower",
    #      run=run_snapshot_full),  # returns None for targets it does not apply to
]

# The goals. who: which targets; vs: the reference (a target name, "plain" for the
# target's unencrypted twin, or None for an absolute floor); min: the least acceptable
# ratio (or absolute value when vs is None).
def _ebsim_plain(t, via):
    return BACKINGS[t["backing"]]["kind"] == "ebsim" and t["via"] in via and \
        not BACKINGS[t["backing"]].get("encrypted")


CRITERIA = [
    dict(goal="ebsim loop >= 1.5x qsd-qcow2 loop", jobs=["rr4k-qd32", "rw4k-qd32"],
         who=lambda t: _ebsim_plain(t, ("loop",)), vs=REF_QSD, min=1.5),
    dict(goal="ebsim loop >= 70% of raw", jobs=["rr4k-qd32", "rw4k-qd32"],
         who=lambda t: _ebsim_plain(t, ("loop",)), vs=REF_RAW, min=0.7),
    dict(goal="ebsim FUSE file >= 46k IOPS", jobs=["rr4k-qd32"],
         who=lambda t: _ebsim_plain(t, ("file",)), vs=None, min=46000),
    dict(goal="ebsim 1M sequential >= 90% of raw", jobs=["sr1m-qd8", "sw1m-qd8"],
         who=lambda t: _ebsim_plain(t, ("file", "loop")), vs=REF_RAW, min=0.9),
    dict(goal="encrypted >= 80% of unencrypted", jobs=["rr4k-qd1", "rr4k-qd32", "rw4k-qd32",
                                                        "mix4k-qd16"],
         who=lambda t: "plain" in t, vs="plain", min=0.8),
]

# ----------------------------------------------------------------------------------------
# Small helpers.


class Interrupted(Exception):
    pass


def on_signal(sig, _frame):
    for s in SIGNALS:  # the first signal wins; the cleanup that follows must not be cut
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signal.Signals(sig).name)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(*a):
    print("bench:", *a, flush=True)


def run(cmd, check=True, timeout=120, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p


def unescape_mount(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def mounts():
    with open("/proc/self/mountinfo") as f:
        return [unescape_mount(line.split()[4]) for line in f]


def is_mounted(path):
    return os.path.realpath(path) in mounts()


def under(path, scratch):
    return path == scratch or path.startswith(scratch.rstrip("/") + "/")


def loops():
    """{loop device: backing file} for every loop device on the host."""
    p = run(["losetup", "-l", "-J", "-O", "NAME,BACK-FILE"], check=False)
    if p.returncode != 0 or not p.stdout.strip():
        return {}
    out = {}
    for d in json.loads(p.stdout).get("loopdevices", []):
        back = (d.get("back-file") or "").removesuffix(" (deleted)")
        out[d["name"]] = back
    return out


def pid_matches(pid, needle, arg):
    """Is PID alive and running a command named like needle with arg among its words?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = [w.decode(errors="replace") for w in f.read().split(b"\0")]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return bool(words) and needle in os.path.basename(words[0]) and \
        any(arg in w for w in words)


def pid_alive(pid):
    """Alive and not a zombie (a daemon's zombie waits for an init that may never reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pid, seconds):
    for _ in range(int(seconds * 20)):
        if not pid_alive(pid):
            return True
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid, needle, arg):
    """TERM, then KILL, a process we started, identified by PID and checked by cmdline."""
    if not pid_matches(pid, needle, arg):
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, 10):
        say(f"pid {pid} ignored SIGTERM; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)


def umount(path):
    for cmd in (["umount", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return
        run(cmd, check=False)


class Ledger:
    """Every resource of the run, one JSON line each, fsynced as soon as it exists."""

    def __init__(self, scratch):
        self.path = os.path.join(scratch, "ledger.jsonl")

    def add(self, kind, **kw):
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(kind=kind, **kw)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def entries(self):
        try:
            with open(self.path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except (FileNotFoundError, json.JSONDecodeError):
            return []


def cleanup(scratch, keep=False):
    """Remove everything the run made under scratch, in dependency order; idempotent."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    scratch = os.path.realpath(scratch)
    if not os.path.isdir(scratch):
        return True
    ledger = Ledger(scratch).entries()

    # Loop devices: ours only if their backing file is under scratch, checked just now.
    devs = [e["dev"] for e in ledger if e["kind"] == "loop"]
    devs += [d for d, back in loops().items() if under(back, scratch)]
    for dev in dict.fromkeys(devs):
        back = loops().get(dev)
        if back is not None and under(back, scratch):
            run(["losetup", "-d", dev], check=False)
    for _ in range(200):  # loop teardown is asynchronous; the daemons must outlive it
        if not any(under(b, scratch) for b in loops().values()):
            break
        time.sleep(0.05)
    else:
        say("warning: loop devices still attached:",
            [d for d, b in loops().items() if under(b, scratch)])

    for e in ledger:
        if e["kind"] == "qsd":
            stop_pid(e["pid"], "qemu-storage-daemon", e["mountpoint"])
            umount(e["mountpoint"])

    for e in ledger:
        if e["kind"] != "ebsimd":
            continue
        home = e["home"]
        try:
            with open(os.path.join(home, "ebsimd.pid")) as f:
                pid = int(f.read().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid and pid_matches(pid, "ebsimd", home):
            p = run([e["ebsimd"], "--home", home, "--stop"], check=False, timeout=60)
            if p.returncode != 0:
                say(f"ebsimd --stop on {home}: {p.stderr.strip()}")
            if not wait_gone(pid, 10):
                stop_pid(pid, "ebsimd", home)
        umount(os.path.join(home, "mnt"))

    for m in sorted((m for m in mounts() if under(m, scratch)), key=len, reverse=True):
        umount(m)
    left = [m for m in mounts() if under(m, scratch)]
    if left:
        say("warning: still mounted, keeping", scratch, left)
        return False
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


class Critical:
    """Signals held off while a resource is created and recorded."""

    def __enter__(self):
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def __exit__(self, *exc):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def child_unblock():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)


# ----------------------------------------------------------------------------------------
# Setup of backings and targets.


class Ctx:
    def __init__(self, args, mode):
        self.args = args
        self.scratch = os.path.realpath(args.scratch)
        self.ledger = Ledger(self.scratch)
        self.size = mode["size"]
        self.runtime = args.runtime or mode["runtime"]
        self.ramp = mode["ramp"]
        self.repeats = args.repeats or mode["repeats"]
        self.fresh_s = mode["fresh_s"]
        self.homes = {}  # engine -> home
        self.paths = {}  # backing -> file path
        self.devs = {}  # target -> loop device
        self.loop_dio = {}
        self.fresh = {}
        self.backing_info = {}
        self.restore = {}  # the restored backings' source snapshot

    def path_of(self, target):
        return self.devs[target["name"]] if target["via"] == "loop" \
            else self.paths[target["backing"]]

    def fio_cmd(self, target, params, runtime, ramp, time_based=True):
        cmd = ["fio", "--thread", "--output-format=json", "--name=" + target["name"],
               "--filename=" + self.path_of(target), "--size=%d" % self.size,
               "--direct=1", "--ioengine=" + target.get("fio_engine", "io_uring"),
               "--group_reporting"]
        if time_based:
            cmd += ["--time_based", "--runtime=%s" % runtime]
            if ramp:
                cmd.append("--ramp_time=%dms" % (ramp * 1000))
        cmd += ["--%s=%s" % kv for kv in params.items()]
        return cmd


def fio_sample(ctx, cmd, timeout=None):
    """Run one fio command; return its numbers (both directions summed)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout or ctx.runtime + 120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError("fio timed out: " + " ".join(cmd))
    except BaseException:  # interrupted: stop fio (by its PID) before the cleanup
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        raise
    if p.returncode != 0 or "{" not in out:
        raise RuntimeError(f"fio -> {p.returncode}: {err.strip()[-500:]}")
    j = json.loads(out[out.index("{"):])["jobs"][0]
    s = dict(iops=0.0, mbps=0.0)
    for d in ("read", "write"):
        io = j[d]
        if io["total_ios"] == 0:
            continue
        s["iops"] += io["iops"]
        s["mbps"] += io["bw_bytes"] / 1e6
        pct = io["clat_ns"].get("percentile", {})
        s[d] = dict(iops=io["iops"], mbps=io["bw_bytes"] / 1e6,
                    clat_mean_us=io["clat_ns"]["mean"] / 1e3,
                    clat_p50_us=pct.get("50.000000", 0) / 1e3,
                    clat_p99_us=pct.get("99.000000", 0) / 1e3,
                    clat_p999_us=pct.get("99.900000", 0) / 1e3)
    if "error" in j and j["error"]:
        raise RuntimeError(f"fio job error {j['error']}")
    return s


def setup_raw(ctx, name, b):
    path = os.path.join(ctx.scratch, name + ".img")
    with open(path, "w") as f:
        f.truncate(ctx.size)
    ctx.backing_info[name] = dict(store=[path])
    return path


def ebsim_home(ctx, engine, transport="dev"):
    key = engine if transport == "dev" else f"{engine}-fuse-{transport}"
    if key in ctx.homes:
        return ctx.homes[key]
    home = os.path.join(ctx.scratch, "home-" + key)
    os.makedirs(home)
    ebsimd = os.path.join(BUILD, "ebsimd")
    ctx.ledger.add("ebsimd", home=home, ebsimd=ebsimd)  # before it exists: --stop finds it
    try:
        run([ebsimd, "--home", home, "--io-engine", engine, "--fuse-transport", transport],
            timeout=60)
    except RuntimeError as e:  # the log it points to goes with the scratch dir: quote it
        try:
            with open(os.path.join(home, "ebsimd.log")) as f:
                why = [line.strip() for line in f if " error: " in line]
        except OSError:
            why = []
        raise RuntimeError("; ".join([str(e)] + why[-3:])) from None
    if not is_mounted(os.path.join(home, "mnt")):
        raise RuntimeError(f"ebsimd on {home} is not mounted")
    ctx.homes[key] = home
    return home


def setup_ebsim(ctx, name, b):
    home = ebsim_home(ctx, b["engine"], b.get("transport", "dev"))
    gib = max(1, math.ceil(ctx.size / GIB))
    cmd = [os.path.join(BUILD, "ebsim"), "--home", home, "create-volume", "--size", str(gib)]
    if b.get("encrypted"):
        cmd.append("--encrypted")
    vol = json.loads(run(cmd).stdout)
    ctx.backing_info[name] = dict(volume_id=vol["VolumeId"], home=home, engine=b["engine"],
                                  encrypted=vol.get("Encrypted"),
                                  store=[os.path.join(home, "volumes", vol["VolumeId"],
                                                      "data")])
    return vol["LocalPath"]


def setup_qsd(ctx, name, b):
    d = os.path.join(ctx.scratch, name)
    os.makedirs(d)
    if b["fmt"] == "raw":
        image = os.path.join(d, "disk.img")
        with open(image, "w") as f:
            f.truncate(ctx.size)
        top = "f"
    else:
        base = os.path.join(d, "base.img")
        with open(base, "w") as f:
            f.truncate(ctx.size)
        image = os.path.join(d, "overlay.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", image])
        top = "q"
    opts = "," + b["file_opts"] if b.get("file_opts") else ""
    nodes = ["--blockdev", f"driver=file,node-name=f,filename={image}{opts}"]
    if top == "q":
        nodes += ["--blockdev", "driver=qcow2,node-name=q,file=f"]
    mnt = os.path.join(d, "export")
    open(mnt, "w").close()  # the FUSE export mounts over a regular file
    pidfile = os.path.join(d, "qsd.pid")
    log = open(os.path.join(d, "qsd.log"), "w")
    cmd = ["qemu-storage-daemon", *nodes, "--export",
           f"type=fuse,id=e,node-name={top},mountpoint={mnt},writable=on",
           "--pidfile", pidfile]
    with Critical():
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, preexec_fn=child_unblock)
        ctx.ledger.add("qsd", pid=p.pid, mountpoint=mnt)
    log.close()
    for _ in range(200):
        if is_mounted(mnt) and os.stat(mnt).st_size >= ctx.size:
            break
        if p.poll() is not None:
            raise RuntimeError(f"qemu-storage-daemon exited {p.returncode}: "
                               + open(os.path.join(d, "qsd.log")).read())
        time.sleep(0.05)
    else:
        raise RuntimeError(f"qemu-storage-daemon did not mount {mnt}")
    ctx.backing_info[name] = dict(pid=p.pid, image=image, store=[image], format=b["fmt"],
                                  command=" ".join(cmd))
    return mnt


def source_snapshot(ctx, home):
    """The snapshot the restored backings share (made once): a volume of the run's size
    written whole with random bytes (no chunk is zero or a duplicate), snapshotted, then
    deleted."""
    if "snapshot" in ctx.restore:
        return ctx.restore["snapshot"]
    e = snapshot_perf.Ebsim(BUILD, home)
    gib = max(1, math.ceil(ctx.size / GIB))
    v = e("create-volume", "--size", gib)
    snapshot_perf.write_random(v["LocalPath"], 0, ctx.size)
    sid, secs = e.snapshot(v["VolumeId"])
    e("delete-volume", "--volume-id", v["VolumeId"])
    say(f"restored backings: snapshot {sid} of {ctx.size // MIB} MiB in {secs:.1f} s")
    ctx.restore["snapshot"] = sid
    return sid


def restore_volume(ctx, name, home):
    """A volume restored from the source snapshot; returns its FUSE file."""
    e = snapshot_perf.Ebsim(BUILD, home)
    vol = e("create-volume", "--snapshot-id", source_snapshot(ctx, home))
    ctx.backing_info[name] = dict(volume_id=vol["VolumeId"], home=home, engine="io_uring",
                                  snapshot=ctx.restore["snapshot"],
                                  store=[os.path.join(home, "volumes", vol["VolumeId"],
                                                      "data")])
    return vol["LocalPath"]


def setup_restored(ctx, name, b):
    home = ebsim_home(ctx, b["engine"])
    path = restore_volume(ctx, name, home)
    if b.get("hydrate"):
        vid = ctx.backing_info[name]["volume_id"]
        secs = snapshot_perf.Ebsim(BUILD, home).hydrate(vid, timeout=600)
        say(f"hydrated {vid} in {secs:.1f} s")
    return path


def renew_restored(ctx, target):
    """Replace the target's volume with a newly restored one (and its loop device)."""
    bn = target["backing"]
    info = ctx.backing_info[bn]
    e = snapshot_perf.Ebsim(BUILD, info["home"])
    dev = ctx.devs.pop(target["name"], None)
    if dev:
        run(["losetup", "-d", dev])
    try:
        for tries in range(50):  # the loop driver lets go of the file asynchronously
            try:
                e("delete-volume", "--volume-id", info["volume_id"])
                break
            except subprocess.CalledProcessError as err:
                if "VolumeInUse" not in (err.stderr or "") or tries == 49:
                    raise
                time.sleep(0.1)
        ctx.paths[bn] = restore_volume(ctx, bn, info["home"])
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"renewing {target['name']}: {err.stderr.strip()}") from err
    if target["via"] == "loop":
        attach_loop(ctx, target)


SETUP = {"raw": setup_raw, "ebsim": setup_ebsim, "qsd": setup_qsd,
         "ebsim-restored": setup_restored}


def attach_loop(ctx, target):
    path = ctx.paths[target["backing"]]
    dio = ["--direct-io=on"] if target.get("loop_dio", True) else []
    dev = run(["losetup", "-f", "--show", *dio, path]).stdout.strip()
    ctx.ledger.add("loop", dev=dev, file=path)  # the scan in cleanup() covers the gap
    ctx.devs[target["name"]] = dev
    p = run(["losetup", "-l", "-n", "-O", "DIO", dev], check=False)
    ctx.loop_dio[target["name"]] = p.stdout.strip() == "1"


def precondition(ctx, targets):
    """Per backing: a short fresh-write probe, then one full sequential write, both through
    the backing's loop target when it has one (as users write a volume)."""
    for bname in dict.fromkeys(t["backing"] for t in targets):
        b = BACKINGS[bname]
        if b.get("precondition", True) is False:
            continue
        ts = [t for t in targets if t["backing"] == bname]
        probe = next((t for t in ts if t["via"] == "loop"), ts[0])
        r = dict(target=probe["name"])
        if ctx.fresh_s:
            s = fio_sample(ctx, ctx.fio_cmd(probe, dict(rw="randwrite", bs="4k", iodepth=32),
                                            ctx.fresh_s, None))
            r["fresh_rw4k_qd32_iops"] = s["iops"]
        t0 = time.monotonic()
        s = fio_sample(ctx, ctx.fio_cmd(probe, dict(rw="write", bs="1M", iodepth=8), 0, None,
                                        time_based=False), timeout=600)
        r["fill_s"] = time.monotonic() - t0
        r["fill_mbps"] = s["mbps"]
        ctx.fresh[bname] = r
        say(f"preconditioned {bname}: fresh rw4k QD32 "
            f"{r.get('fresh_rw4k_qd32_iops', 0) / 1e3:.1f}k IOPS on {probe['name']}, "
            f"fill {r['fill_mbps']:.0f} MB/s")


def residency(ctx):
    """Share of each backing's store files resident in the host page cache (fincore)."""
    out = {}
    for bn, info in ctx.backing_info.items():
        files = [f for f in info.get("store", []) if os.path.exists(f)]
        p = run(["fincore", "-J", "-b", "-o", "RES,SIZE,FILE", *files], check=False)
        if p.returncode != 0 or not files:
            continue
        rows = json.loads(p.stdout).get("fincore", [])
        res = sum(int(r["res"]) for r in rows)
        out[bn] = round(res / ctx.size, 3)
    return out


def check_space(ctx, backings):
    st = os.statvfs(ctx.scratch)
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    need = int(len(backings) * ctx.size * 1.05)
    margin = max(2 * GIB, total // 20)
    if free < need + margin:
        raise SystemExit(f"bench: refusing to run: {ctx.scratch} has {free / GIB:.1f} GiB "
                         f"free; the run writes {need / GIB:.1f} GiB and keeps a margin of "
                         f"{margin / GIB:.1f} GiB (set EBSIM_BENCH_DIR to a roomier place)")
    return dict(free_gib=round(free / GIB, 1), need_gib=round(need / GIB, 1),
                margin_gib=round(margin / GIB, 1))


# ----------------------------------------------------------------------------------------
# Summaries and reports.


def spread(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return dict(median=statistics.median(v), min=min(v), max=max(v), n=len(v))


def value_of(job, sample):
    return sample["mbps"] if job["metric"] == "MB/s" else \
        sample["iops"] if job["metric"] == "iops" else sample["value"]


def summarise(res):
    """Medians with spreads, and per-repeat (paired) ratios against raw and qsd."""
    jobs = {j["name"]: j for j in res["jobs"]}
    targets = {t["name"]: t for t in res["targets"]}
    summ = {}
    for jn, per_t in res["samples"].items():
        job = jobs[jn]
        summ[jn] = {}
        for tn, samples in per_t.items():
            vals = {s["rep"]: value_of(job, s) for s in samples if "error" not in s}
            e = dict(value=spread(vals.values()))
            if not vals:
                e["errors"] = [s["error"] for s in samples if "error" in s]
            for key, ref in (("vs_raw", REF_RAW), ("vs_qsd", REF_QSD),
                             ("vs_plain", targets[tn].get("plain"))):
                if not ref or ref not in per_t:
                    continue
                rv = {s["rep"]: value_of(job, s) for s in per_t[ref] if "error" not in s}
                ratios = [vals[r] / rv[r] for r in vals if rv.get(r)]
                if job["better"] == "lower":
                    ratios = [1 / x for x in ratios if x]
                e[key] = spread(ratios)
            lat = {}
            for d in ("read", "write"):
                for k in ("clat_p50_us", "clat_p99_us"):
                    lat[f"{d}_{k}"] = spread([s[d][k] for s in samples if d in s])
            e["latency"] = {k: v for k, v in lat.items() if v}
            summ[jn][tn] = e
    res["summary"] = summ


def evaluate(res):
    """Each criterion, for each target it covers: met, missed or borderline."""
    targets = {t["name"]: t for t in res["targets"]}
    out = []
    for c in CRITERIA:
        for t in res["targets"]:
            if not c["who"](t):
                continue
            for jn in c["jobs"]:
                e = res["summary"].get(jn, {}).get(t["name"])
                if e is None:
                    continue
                if c["vs"] is None:
                    v, ref = e["value"], None
                else:
                    ref = t["plain"] if c["vs"] == "plain" else c["vs"]
                    if ref not in targets:
                        continue
                    v = e.get({"plain": "vs_plain", REF_RAW: "vs_raw",
                               REF_QSD: "vs_qsd"}[c["vs"]])
                if v is None:
                    out.append(dict(goal=c["goal"], target=t["name"], job=jn, ref=ref,
                                    verdict="no data"))
                    continue
                verdict = "met" if v["median"] >= c["min"] else "missed"
                if v["min"] < c["min"] <= v["max"]:
                    verdict += " (spread straddles the bar)"
                out.append(dict(goal=c["goal"], target=t["name"], job=jn, ref=ref,
                                need=c["min"], got=v, verdict=verdict))
    res["criteria"] = out


def fmt_num(x, metric):
    if metric == "iops":
        return f"{x / 1e3:.1f}k"
    if metric == "MB/s":
        return f"{x:.0f}"
    if metric == "ratio":
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_cell(v, metric):
    if not v:
        return "–"
    m = fmt_num(v["median"], metric)
    if v["n"] < 2:
        return m + " (n=1)"
    return f"{m} ({fmt_num(v['min'], metric)}–{fmt_num(v['max'], metric)})"


def md_table(res, key, metric=None):
    tns = [t["name"] for t in res["targets"]]
    rows = ["| job | " + " | ".join(tns) + " |", "|---|" + "---|" * len(tns)]
    for job in res["jobs"]:
        cells = []
        for tn in tns:
            e = res["summary"].get(job["name"], {}).get(tn)
            if e is None:
                cells.append("–")
            elif e.get("errors"):
                cells.append("error")
            else:
                cells.append(fmt_cell(e.get(key), metric or job["metric"]))
        unit = "" if metric else f" ({job['metric']})"
        rows.append(f"| {job['name']}{unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_md(res, path):
    c = res["config"]
    h = res["host"]
    L = [f"# ebsim benchmark ({res['mode']} run)", "",
         f"{res['started']} on {h['cpu']} ({h['cpus']} CPUs), kernel {h['kernel']}; "
         f"{h['fio']}, {h['qsd']}; ebsim {h['ebsim_git']}.  ",
         f"Each cell: fio `--direct=1`, `--ioengine=io_uring`, {c['size_mib']} MiB, "
         f"{c['runtime_s']:g} s after a {c['ramp']:g} s ramp; median of {c['repeats']} "
         f"interleaved repeats (min–max); target order shuffled with seed {res['seed']}. "
         f"Run took {res['duration_s'] / 60:.1f} min; load average "
         f"{h.get('loadavg', ['?'])[0]} at the start, {h.get('loadavg_end', ['?'])[0]} at the end "
         f"({h['cpus']} CPUs: anything else running shows up here); pressure "
         f"(PSI some avg60) cpu {h.get('psi', {}).get('cpu', '?')}% / io "
         f"{h.get('psi', {}).get('io', '?')}% at the start, cpu "
         f"{h.get('psi_end', {}).get('cpu', '?')}% / io {h.get('psi_end', {}).get('io', '?')}% "
         "at the end.", ""]
    busy = [v for v in (*h.get("psi", {}).values(), *h.get("psi_end", {}).values())
            if isinstance(v, (int, float))]
    if busy and max(busy) > BUSY_PSI:
        L += [f"**The host was busy during this run** (PSI up to {max(busy):.0f}%): other "
              "work competed for its CPUs and disk, so absolute figures are depressed and "
              "noisy, and a verdict near its bar can flip from one run to the next. Trust "
              "the ratios more than the absolute numbers, and rerun on a quiet host before "
              "drawing conclusions.", ""]
    L += ["## Targets", ""]
    for t in res["targets"]:
        extra = ""
        if t["via"] == "loop":
            extra = f" — via a loop device (direct-io {'on' if t.get('loop_dio') else 'off'})"
        else:
            extra = " — fio on the file"
        L.append(f"- `{t['name']}`: {t['desc']}{extra}")
    L += ["", "qemu-storage-daemon runs as the issue gives it (`--blockdev driver=file,...` "
          "[`--blockdev driver=qcow2,...`] `--export type=fuse,...,writable=on`), with the "
          "file node's defaults: host page cache on, `aio=threads`. Its FUSE export is known "
          "to misplace concurrent writes (PERF-NOTES): speed only, never data. ebsim, too, "
          "opens its volumes' data files without `O_DIRECT`, so after preconditioning both "
          "serve reads from host memory and absorb writes in write-back (see 'Host page "
          "cache' below) while `raw` and `raw-loop` go to the disk every time: "
          "`raw-loop-cached` is the yardstick for a page-cached path.", "",
          "## Results (IOPS or MB/s)", "", md_table(res, "value"), "",
          "## Ratio to `raw` (per-repeat pairs)", "", md_table(res, "vs_raw", "ratio"), "",
          f"## Ratio to `{REF_QSD}` (per-repeat pairs)", "",
          md_table(res, "vs_qsd", "ratio"), "",
          "## Latency, 4k random read (completion latency, µs, median of repeats)", "",
          "| target | QD1 p50 | QD1 p99 | QD32 p50 | QD32 p99 |", "|---|---|---|---|---|"]
    for t in res["targets"]:
        cells = []
        for jn in ("rr4k-qd1", "rr4k-qd32"):
            lat = res["summary"].get(jn, {}).get(t["name"], {}).get("latency", {})
            for k in ("read_clat_p50_us", "read_clat_p99_us"):
                cells.append(f"{lat[k]['median']:.0f}" if k in lat else "–")
        L.append(f"| {t['name']} | " + " | ".join(cells) + " |")
    if res["fresh"]:
        L += ["", "## First writes into a fresh (sparse, never written) backing", "",
              "One run each, before preconditioning; not part of the matrix.", "",
              "| backing | measured on | fresh 4k randwrite QD32 | then: full 1 MiB fill |",
              "|---|---|---|---|"]
        for bn, r in res["fresh"].items():
            fr = r.get("fresh_rw4k_qd32_iops")
            L.append(f"| {bn} | {r['target']} | "
                     f"{'–' if fr is None else fmt_num(fr, 'iops') + ' IOPS'} | "
                     f"{r['fill_mbps']:.0f} MB/s ({r['fill_s']:.1f} s) |")
    pc = res.get("page_cache", {})
    if pc.get("at_end"):
        L += ["", "## Host page cache", "",
              "Share of each backing's store file resident in the host page cache (fincore). "
              "fio runs `--direct=1` on every target, but what a FUSE server does with its "
              "own backing file is its business: a high share means reads were served from "
              "host memory, not the disk, and writes were absorbed by write-back.", "",
              "| backing | store file | after preconditioning | at the end |",
              "|---|---|---|---|"]
        for bn, v in pc["at_end"].items():
            store = res["backings"][bn].get("store", ["?"])[0]
            before = pc.get("after_precondition", {}).get(bn)
            L.append(f"| {bn} | `{os.path.relpath(store, res.get('scratch', '/'))}` | "
                     f"{'–' if before is None else f'{before:.0%}'} | {v:.0%} |")
    L += ["", "## Goals from the issue", "",
          "Ratios are medians of per-repeat ratios; 'raw' is the raw file.", "",
          "| goal | target | job | got (min–max) | verdict |", "|---|---|---|---|---|"]
    for c in res["criteria"]:
        got = c.get("got")
        metric = "iops" if c["ref"] is None else "ratio"
        L.append(f"| {c['goal']} | {c['target']} | {c['job']} | "
                 f"{fmt_cell(got, metric) if got else '–'} | **{c['verdict']}** |")
    snaps = res.get("snapshots")
    if snaps and snaps.get("samples"):
        L += ["", snapshot_perf.md_section(snaps)]
    elif snaps:
        L += ["", "## Snapshots", "", f"The snapshot figures failed: {snaps.get('error')}"]
    xfs = (snaps or {}).get("xfs")
    if xfs and xfs.get("samples"):
        L += ["", snapshot_perf.md_section(
            xfs, "Snapshots on a reflink XFS home (chunks cloned, not copied)")]
    elif xfs:
        L += ["", "## Snapshots on XFS", "", f"The figures failed: {xfs.get('error')}"]
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# One colour per TARGETS entry, in order: greys for raw, a dark/light pair per ebsim or qsd
# backing (file/loop).
BUSY_PSI = 10  # % (PSI "some" avg60) above which the report warns that the host was busy

COLORS = ["#404040", "#808080", "#c0c0c0", "#08519c", "#6baed6", "#006d2c", "#74c476",
          "#54278f", "#9e9ac8", "#a50f15", "#fb6a4a", "#8c510a", "#dfc27d", "#d94801",
          "#fdae6b", "#01665e", "#80cdc1"]


def write_png(res, path, workdir):
    """Grouped bars: ratio to raw per job (groups) per target (bars), min-max error bars."""
    tns = [t["name"] for t in res["targets"]]
    dat = os.path.join(workdir, "chart.dat")
    with open(dat, "w") as f:
        for job in res["jobs"]:
            row = [job["name"]]
            for tn in tns:
                v = res["summary"].get(job["name"], {}).get(tn, {}).get("vs_raw")
                row += [f"{v['median']:.4f}", f"{v['min']:.4f}", f"{v['max']:.4f}"] \
                    if v else ["?", "?", "?"]
            f.write(" ".join(row) + "\n")
    gp = [f"set terminal pngcairo size 1800,760 font 'sans,10'",
          f"set output '{path}'",
          f"set title 'ebsim benchmark ({res['mode']}, {res['started'][:10]}): throughput "
          "relative to the raw file (median of repeats, bars = min-max)'",
          "set datafile missing '?'", "set style data histogram",
          "set style histogram errorbars gap 2 lw 1", "set style fill solid 0.9 border -1",
          "set boxwidth 0.9", "set ylabel 'ratio to raw (higher is better)'",
          "set yrange [0:*]", "set grid ytics", "set key outside right top vertical",
          "set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5"]
    every = [t["name"] for t in TARGETS]
    for i, tn in enumerate(tns):  # a target keeps its colour whatever else is selected
        k = every.index(tn) if tn in every else i
        gp.append(f"set linetype {i + 1} lc rgb '{COLORS[k % len(COLORS)]}'")
    plots = []
    for i, tn in enumerate(tns):
        c = 2 + 3 * i
        plots.append(f"'{dat}' using {c}:{c + 1}:{c + 2}"
                     + (":xtic(1)" if i == 0 else "") + f" title '{tn}' lt {i + 1}")
    gp.append("plot " + ", \\\n     ".join(plots))
    script = os.path.join(workdir, "chart.gp")
    with open(script, "w") as f:
        f.write("\n".join(gp) + "\n")
    run(["gnuplot", script])


def psi():
    """CPU and I/O pressure ("some", avg60, %): how much others competed for the host."""
    out = {}
    for r in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{r}") as f:
                out[r] = float(f.readline().split()[2].split("=")[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def host_info():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = run(["git", "-C", ROOT, "describe", "--always", "--dirty"], check=False)
    return dict(cpu=cpu, cpus=os.cpu_count(), kernel=platform.release(),
                loadavg=[round(x, 1) for x in os.getloadavg()], psi=psi(),
                fio=run(["fio", "--version"]).stdout.strip(),
                qsd=run(["qemu-storage-daemon", "--version"]).stdout.splitlines()[0].strip(),
                ebsim_git=git.stdout.strip() or "unknown")


def write_reports(res, out):
    os.makedirs(out, exist_ok=True)
    tmpdir = os.path.join(out, ".chart.tmp")
    os.makedirs(tmpdir, exist_ok=True)
    tmp = {n: os.path.join(out, n + ".tmp") for n in ("latest.json", "latest.md", "latest.png")}
    try:
        with open(tmp["latest.json"], "w") as f:
            json.dump(res, f, indent=1, default=str)
            f.write("\n")
        write_md(res, tmp["latest.md"])
        write_png(res, tmp["latest.png"], tmpdir)
        for n, t in tmp.items():  # all three or none
            os.replace(t, os.path.join(out, n))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        for t in tmp.values():
            if os.path.exists(t):
                os.unlink(t)


# ----------------------------------------------------------------------------------------
# The run.


def select(args, mode_name):
    targets = [dict(t) for t in TARGETS if mode_name == "full" or t.get("quick")]
    if args.targets:
        want = args.targets.split(",")
        unknown = [n for n in want if n not in [t["name"] for t in TARGETS]]
        if unknown:
            raise SystemExit(f"bench: unknown target(s) {', '.join(unknown)}")
        if REF_RAW not in want:  # every ratio and the chart are relative to it
            raise SystemExit(f"bench: --targets must include {REF_RAW} (ratios and the "
                             "chart are relative to it)")
        targets = [dict(t) for t in TARGETS if t["name"] in want]
    jobs = [j for j in JOBS if not args.jobs or j["name"] in args.jobs.split(",")]
    for t in targets:
        t["desc"] = BACKINGS[t["backing"]]["desc"]
    return targets, jobs


def bench(args):
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    ctx = Ctx(args, mode)
    targets, jobs = select(args, mode_name)
    backings = list(dict.fromkeys(t["backing"] for t in targets))
    space = check_space(ctx, backings)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    host = host_info()  # load average at the start
    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    say(f"{mode_name} run: {len(targets)} targets x {len(jobs)} jobs x {ctx.repeats} "
        f"repeats, {ctx.size // MIB} MiB, seed {seed}, scratch {ctx.scratch}")

    for bn in backings:
        b = BACKINGS[bn]
        ctx.paths[bn] = SETUP[b["kind"]](ctx, bn, b)
    for t in targets:
        if t["via"] == "loop":
            attach_loop(ctx, t)
    precondition(ctx, targets)
    cached = dict(after_precondition=residency(ctx))
    say(f"setup took {time.monotonic() - t_start:.0f} s")

    samples = {j["name"]: {t["name"]: [] for t in targets} for j in jobs}
    order = []
    cells = ctx.repeats * len(jobs) * len(targets)
    done = 0
    t_cells = time.monotonic()
    for rep in range(ctx.repeats):
        for job in jobs:
            ts = list(targets)
            rng.shuffle(ts)
            for t in ts:
                order.append([rep, job["name"], t["name"]])
                try:
                    s = job["run"](ctx, job, t)
                except RuntimeError as e:
                    s = dict(error=str(e))
                    say(f"error: {job['name']} on {t['name']}: {e}")
                done += 1
                if s is None:
                    continue
                s["rep"] = rep
                samples[job["name"]][t["name"]].append(s)
                if "error" not in s:
                    eta = (time.monotonic() - t_cells) / done * (cells - done)
                    say(f"[{done}/{cells}] rep {rep + 1} {job['name']:<10} "
                        f"{t['name']:<18} {fmt_num(value_of(job, s), job['metric']):>8} "
                        f"{job['metric']}  (eta {eta / 60:.1f} min)")

    cached["at_end"] = residency(ctx)
    snaps = None
    if not args.no_snapshots:
        # the snapshot figures, after the fio matrix so as not to disturb it
        home = os.path.join(ctx.scratch, "home-snapshots")
        os.makedirs(home)
        ebsimd = os.path.join(BUILD, "ebsimd")
        ctx.ledger.add("ebsimd", home=home, ebsimd=ebsimd)  # before it exists: cleanup
        reps = args.snapshot_repeats or (1 if args.quick else 3)
        say(f"snapshot figures: {reps} repeat(s)")
        try:
            snaps = snapshot_perf.measure(BUILD, home, reps, say=say)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            say(f"error: snapshot figures: {e}")
            snaps = dict(error=str(e))
        # the same on a reflink XFS home: snapshots clone their chunks instead of copying
        if shutil.which("mkfs.xfs"):
            say(f"snapshot figures on a reflink XFS home: {reps} repeat(s)")

            def ledger_home(h):
                ctx.ledger.add("ebsimd", home=h, ebsimd=ebsimd)

            try:
                snaps_xfs = snapshot_perf.measure_on_xfs(BUILD, ctx.scratch, reps, say=say,
                                                         home_cb=ledger_home)
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                say(f"error: snapshot figures on XFS: {e}")
                snaps_xfs = dict(error=str(e))
            snaps = dict(snaps or {}, xfs=snaps_xfs)
    load_end = dict(loadavg_end=[round(x, 1) for x in os.getloadavg()], psi_end=psi())
    for t in targets:
        if t["via"] == "loop":
            t["loop_dio"] = ctx.loop_dio.get(t["name"])  # as losetup reports it
        t["path"] = ctx.path_of(t)
    res = dict(schema=1, mode=mode_name, started=started, seed=seed, scratch=ctx.scratch,
               duration_s=round(time.monotonic() - t_start, 1),
               config=dict(size_mib=ctx.size // MIB, runtime_s=ctx.runtime,
                           ramp=ctx.ramp, repeats=ctx.repeats, fresh_s=ctx.fresh_s,
                           space=space),
               host=dict(host, **load_end), targets=targets,
               backings={bn: dict(BACKINGS[bn], **ctx.backing_info.get(bn, {}))
                         for bn in backings},
               jobs=[{k: v for k, v in j.items() if k != "run"} for j in jobs],
               fresh=ctx.fresh, page_cache=cached, order=order, samples=samples,
               snapshots=snaps)
    summarise(res)
    evaluate(res)
    write_reports(res, args.out)
    say(f"done in {res['duration_s'] / 60:.1f} min; wrote {args.out}/latest."
        "{json,md,png}")
    return res


def main():
    ap = argparse.ArgumentParser(description="ebsim fio benchmark driver (see bench/README.md)")
    ap.add_argument("--scratch", help="an empty scratch directory of this run (required)")
    ap.add_argument("--quick", action="store_true", help="short run (< 3 min)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--seed", type=int, help="seed of the target order (default: random)")
    ap.add_argument("--targets", help="comma-separated target names (default: per mode)")
    ap.add_argument("--jobs", help="comma-separated job names (default: all)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--runtime", type=float)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-snapshots", action="store_true",
                    help="skip the snapshot figures (bench/snapshot_perf.py)")
    ap.add_argument("--snapshot-repeats", type=int,
                    help="repeats of the snapshot figures (default: 3, quick: 1)")
    ap.add_argument("--cleanup", action="store_true",
                    help="only remove what a run left in --scratch, then exit")
    ap.add_argument("--report", metavar="JSON",
                    help="only rewrite the reports from a results JSON, then exit")
    args = ap.parse_args()
    if not args.scratch and not args.report:
        ap.error("--scratch is required")
    if args.cleanup:
        return 0 if cleanup(args.scratch, args.keep) else 1
    if args.report:
        with open(args.report) as f:
            res = json.load(f)
        summarise(res)
        evaluate(res)
        write_reports(res, args.out)
        return 0
    for s in SIGNALS:
        signal.signal(s, on_signal)
    rc = 0
    try:
        bench(args)
    except Interrupted as e:
        say(f"interrupted ({e}); cleaning up")
        rc = 130 if str(e) == "SIGINT" else 143
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        say(f"failed: {e}")
        rc = 1
    finally:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        cleanup(args.scratch, args.keep)
    return rc


if __name__ == "__main__":
    sys.exit(main())

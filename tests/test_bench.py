# SPDX-License-Identifier: MIT
"""The benchmark's promises: `ebsim bench` measures one volume as `make bench` does and
refuses what would destroy data or cannot work; `bench/run.sh` refuses to start without
its tools or on a disk without room, and always removes what it made, even when it is
interrupted in the middle of the fio matrix.

Design notes
------------
- `ebsim bench` runs on a volume of the private daemon (conftest's ``daemon``), with
  --runtime 1 (each profile then takes ~2 s: fio ramps for 1 s first). The write guard is
  checked on the volume's bytes: part of the volume is written with random data, hashed,
  every write profile is refused, a read profile runs, and the hash must be the same; a
  write profile with --overwrite must then change it (so the hash would see a write).
- run.sh finds its tools with `command -v`, i.e. on PATH: the missing-tool test gives it a
  PATH of one directory of symlinks to what it needs, less one tool. It runs with
  EBSIM_BENCH_DIR in the test's own directory, so "nothing made" is a listing of it.
- The disk-space test mounts a tmpfs of its own under tmp_path (64 MiB: no room for the
  files; 1 GiB with one target: room for the files but not for the margin of 2 GiB) and
  unmounts it by exact path in a finally, after checking that it is mounted.
- The interrupt tests run in a short directory of their own under /tmp (under tmp_path,
  ebsimd's socket in the scratch directory would pass the 107-byte limit of a Unix socket
  path, and the run would fail before the matrix). They start a quick run of two targets
  (raw and ebsim-uring-loop), wait (bounded) for the matrix's first progress line "[1/",
  note what the run has made (its loop devices, mounts and daemons: the test would be void
  without them), signal run.sh's PID only, and then look at the host: no loop device
  backed by a file under the directory (read from /sys/block/loop*/loop/backing_file, not
  `losetup -a`, which can hang; a backing printed as "/<volume id>" after a lazy unmount
  counts too), no mount under it, no process naming it on its command line, and no
  scratch directory. If the test fails midway, its finally stops that run's driver by PID
  (checked by command line) and runs `bench.py --cleanup --scratch` on the run's own
  scratch directory, which removes only what that run's ledger and backing files name.
- bench.py's reports go to tmp_path (--out), never to bench/results.
"""
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BUILD, ROOT, _loop_backing, is_mounted, pid_running, run

RUN_SH = os.path.join(ROOT, "bench", "run.sh")
BENCH_PY = os.path.join(ROOT, "bench", "bench.py")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
READ_PROFILES = ["rr4k-qd1", "rr4k-qd32", "sr1m-qd8"]
WRITE_PROFILES = ["rw4k-qd32", "mix4k-qd16", "sw1m-qd8"]
# what run.sh checks for with `command -v` (its python is $PYTHON, an absolute path)
RUN_SH_TOOLS = ["fio", "qemu-storage-daemon", "qemu-img", "gnuplot", "losetup", "fincore"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def usage_error(r, text):
    assert r.rc == 252, f"exit {r.rc}, stderr {r.err!r}"
    assert f"ebsim: error: {text}" in r.err, r.err
    assert r.out == ""


def ec2_error(r, code):
    assert r.rc == 254, f"exit {r.rc}, stderr {r.err!r}"
    assert f"An error occurred ({code}) when calling the DescribeVolumes operation" in r.err, \
        r.err
    assert r.out == ""


# ---- ebsim bench ---------------------------------------------------------------------------

def check_result(j, vid, path, profile, reads, writes):
    assert j["VolumeId"] == vid
    assert j["LocalPath"] == path
    assert j["RuntimeSeconds"] == 1
    assert [x["Profile"] for x in j["Results"]] == [profile]
    r = j["Results"][0]
    assert isinstance(r["Iops"], int) and r["Iops"] > 0, r
    assert r["MBps"] > 0, r
    for d, present in (("Read", reads), ("Write", writes)):
        keys = (f"{d}LatencyP50Us", f"{d}LatencyP99Us")
        if present:
            assert 0 < r[keys[0]] <= r[keys[1]], r
        else:
            assert not set(keys) & set(r), r


def test_bench_read_runs_and_writes_need_overwrite(daemon):
    d = daemon
    vid = d.create_volume(1)["VolumeId"]
    path = os.path.join(d.home, "mnt", vid)
    with open(path, "r+b") as f:  # data in the first MiB and in the last
        f.write(os.urandom(1 << 20))
        f.seek((1 << 30) - (1 << 20))
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    before = sha256(path)

    for p in WRITE_PROFILES + ["all"]:
        r = d.cli("bench", "--volume-id", vid, "--profile", p, "--runtime", 1)
        first = p if p != "all" else WRITE_PROFILES[0]
        usage_error(r, f"profile {first} writes over the volume's data: add --overwrite "
                    "to run it")

    r = d.cli("bench", "--volume-id", vid, "--profile", "rr4k-qd1", "--runtime", 1)
    assert r.rc == 0, r.err
    check_result(r.json, vid, path, "rr4k-qd1", reads=True, writes=False)
    assert sha256(path) == before, "a refused write profile or a read profile changed data"

    r = d.cli("bench", "--volume-id", vid, "--profile", "rw4k-qd32", "--runtime", 1,
              "--overwrite")
    assert r.rc == 0, r.err
    check_result(r.json, vid, path, "rw4k-qd32", reads=False, writes=True)
    assert sha256(path) != before, "rw4k-qd32 --overwrite wrote nothing"


def test_bench_errors(daemon):
    d = daemon
    vid = d.create_volume(1)["VolumeId"]
    other = d.create_volume(1)["VolumeId"]
    ec2_error(d.cli("bench", "--volume-id", "vol-0123456789abcdef0", "--profile", "rr4k-qd1",
                    "--runtime", 1), "InvalidVolume.NotFound")
    ec2_error(d.cli("bench", "--volume-id", "vol-xyz", "--runtime", 1),
              "InvalidVolumeID.Malformed")
    usage_error(d.cli("bench", "--volume-id", vid, "--profile", "rr4k-qd64", "--runtime", 1),
                "unknown profile 'rr4k-qd64': see ebsim bench --help")
    for rt in (0, 3601):
        usage_error(d.cli("bench", "--volume-id", vid, "--runtime", rt),
                    "--runtime must be 1 to 3600 seconds")
    usage_error(d.cli("bench", "--volume-id", vid, other, "--profile", "rr4k-qd1",
                      "--runtime", 1), "bench measures one volume: give one --volume-id")
    usage_error(d.cli("bench", "--runtime", 1),
                "the following arguments are required: --volume-id")


# ---- what bench/run.sh leaves on the host ---------------------------------------------------

def under(path, d):
    return path == d or path.startswith(d.rstrip("/") + "/")


def loops_under(d, names=()):
    """{"/dev/loopN": backing} of loop devices backed by a file under d, or by "/<name>"
    (a volume file of a FUSE mount that was lazily unmounted)."""
    out = {}
    for n in os.listdir("/sys/block"):
        b = _loop_backing(n) if n.startswith("loop") else None
        if b and (under(b, d) or b.lstrip("/") in names):
            out["/dev/" + n] = b
    return out


def mounts_under(d):
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [m for m in points if under(m, d)]


def procs_naming(d):
    """{pid: argv} of the processes (but this one) with d in a word of their command line."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
        except OSError:
            continue
        if any(d in w for w in argv):
            out[int(p)] = argv
    return out


def bench_env(base, path=None):
    env = dict(os.environ, EBSIM_BENCH_DIR=base, EBSIM_BUILD=BUILD)
    if path is not None:
        env["PATH"] = path
    return env


def scratch_dirs(base):
    return glob.glob(os.path.join(base, "ebsim-bench.*"))


@pytest.mark.parametrize("tool", RUN_SH_TOOLS)
def test_run_sh_refuses_without_a_tool(tmp_path, tool):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # what run.sh and bench.py call, but one tool (a stub where the host lacks one)
    for c in RUN_SH_TOOLS + ["dirname", "id", "mktemp", "tr", "grep", "date", "cat", "rm",
                             "mount", "umount", "mkfs.xfs"]:
        if c == tool:
            continue
        real = shutil.which(c)
        if real:
            os.symlink(real, bindir / c)
        else:
            (bindir / c).write_text("#!/bin/sh\nexit 0\n")
            (bindir / c).chmod(0o755)
    base = tmp_path / "base"
    base.mkdir()
    p = run(["/bin/bash", RUN_SH, "--quick", "--targets", "raw", "--jobs", "rr4k-qd1",
             "--no-snapshots", "--out", str(tmp_path / "out")],
            check=False, env=bench_env(str(base), str(bindir)), timeout=60)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr == f"bench: missing {tool}: run 'make deps' first\n", p.stderr
    assert "scratch directory" not in p.stdout, p.stdout
    assert os.listdir(base) == [], "run.sh made something before refusing"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size, targets, needs", [
    ("64m", None, "no room for the files"),  # the quick run's six targets: 5 backings
    ("1g", "raw", "room for the file, not for the margin"),  # 0.5 GiB + 2 GiB margin
])
def test_run_sh_refuses_a_disk_without_room(tmp_path, size, targets, needs):
    base = str(tmp_path / "small")
    os.mkdir(base)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", base])
    try:
        assert is_mounted(base)
        args = ["--quick", "--jobs", "rr4k-qd1", "--no-snapshots", "--out",
                str(tmp_path / "out")] + (["--targets", targets] if targets else [])
        t0 = time.monotonic()
        p = run(["/bin/bash", RUN_SH, *args], check=False, env=bench_env(base), timeout=120)
        assert p.returncode == 1, (needs, p.returncode, p.stdout, p.stderr)
        assert "bench: refusing to run: " in p.stderr, p.stderr
        assert "set EBSIM_BENCH_DIR to a roomier place" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 30, "the refusal came late: did it start the run?"
        assert os.listdir(base) == [], f"left in {base}: {os.listdir(base)}"
        assert mounts_under(base) == [base]
        assert not procs_naming(base)
        assert not (tmp_path / "out").exists()
    finally:
        if is_mounted(base):
            subprocess.run(["umount", base], capture_output=True)
            if is_mounted(base):
                subprocess.run(["umount", "-l", base], capture_output=True)


def test_run_sh_says_why_ebsimd_failed_to_start(tmp_path):
    """A scratch path too long for ebsimd's socket: the run fails at its first daemon and
    says why, although the log it would point to goes with the scratch directory."""
    base = str(tmp_path / ("d" * 64))
    os.mkdir(base)
    sock = os.path.join(base, "ebsim-bench.XXXXXX", "home-io_uring", "ebsimd.sock")
    assert len(sock) > 107
    p = run(["/bin/bash", RUN_SH, "--quick", "--targets", "raw,ebsim-uring", "--jobs",
             "rr4k-qd1", "--no-snapshots", "--out", str(tmp_path / "out")],
            check=False, env=bench_env(base), timeout=120)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "bench: failed: " in p.stdout, p.stdout
    assert "error: cannot listen on " in p.stdout, p.stdout
    assert "ebsimd.sock: File name too long" in p.stdout, p.stdout
    assert os.listdir(base) == []
    assert not procs_naming(base) and not mounts_under(base) and not loops_under(base)


class BenchRun:
    """One `bash bench/run.sh` in its own session, its output (stdout and stderr) collected
    by a thread; stop() and backstop() remove what it made, and only that."""

    def __init__(self, base, args, out):
        self.base = base
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["/bin/bash", RUN_SH, *args, "--out", out], env=bench_env(base),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def output(self):
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"no {text!r} in {timeout} s (exit "
                                         f"{self.proc.poll()}):\n{''.join(self.lines)}")
                self.cond.wait(min(left, 0.5))

    def backstop(self):
        """After a failure: stop run.sh and its driver (by PID, checked by command line),
        then remove what the run's ledger and backing files name in its scratch dirs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for scratch in scratch_dirs(self.base):
            needle = f"bench/bench.py --scratch {scratch}"
            for pid, argv in procs_naming(scratch).items():
                if needle in " ".join(argv) and "--cleanup" not in argv:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        continue
                    for _ in range(600):
                        if not pid_running(pid):
                            break
                        time.sleep(0.05)
            subprocess.run([PY, BENCH_PY, "--cleanup", "--scratch", scratch],
                           capture_output=True, env=bench_env(self.base), timeout=180)


@pytest.fixture
def short_base():
    """The test's own EBSIM_BENCH_DIR, with a short path: ebsimd's socket is
    SCRATCH/home-io_uring/ebsimd.sock, and a socket path is at most 107 bytes."""
    d = os.path.realpath(tempfile.mkdtemp(prefix="ebsim-bench-test-", dir="/tmp"))
    yield d
    if not mounts_under(d):  # never rmtree through a mount the backstop could not remove
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_run_sh_cleans_up_when_interrupted(tmp_path, short_base, sig, rc):
    base = short_base
    b = BenchRun(base, ["--quick", "--targets", "raw,ebsim-uring-loop", "--jobs", "rr4k-qd1",
                        "--no-snapshots", "--repeats", "3", "--seed", "1"],
                 str(tmp_path / "out"))
    try:
        b.wait_for("[1/", 120)
        # what the run has made by now: the test means nothing without it
        scratch = scratch_dirs(base)
        assert len(scratch) == 1, scratch
        names = {n for v in glob.glob(os.path.join(scratch[0], "home-*", "volumes"))
                 for n in os.listdir(v)}
        assert names, "no volume in the run's ebsimd home"
        made_loops = loops_under(base, names)
        made_procs = procs_naming(base)
        assert len(made_loops) >= 1, made_loops  # ebsim-uring-loop's
        daemons = [a[0] for a in made_procs.values() if os.path.basename(a[0]) == "ebsimd"]
        assert daemons and set(daemons) == {os.path.join(BUILD, "ebsimd")}, made_procs
        assert any(m.endswith("/mnt") for m in mounts_under(base)), mounts_under(base)

        os.kill(b.proc.pid, sig)
        got = b.proc.wait(120)
        b.reader.join(10)
        out = b.output()
        assert got == rc, f"exit {got}, want {rc}:\n{out}"
        assert f"bench: {signal.Signals(sig).name}, cleaning up" in out, out
        assert "bench: finished in" not in out, out  # it stopped in the matrix

        assert not loops_under(base, names), f"loop devices left: {loops_under(base, names)}"
        assert not mounts_under(base), f"mounts left: {mounts_under(base)}"
        assert not procs_naming(base), f"processes left: {procs_naming(base)}"
        for pid in made_procs:
            assert not pid_running(pid), f"{made_procs[pid]} still running"
        assert not scratch_dirs(base), f"scratch left: {scratch_dirs(base)}"
        assert not os.path.exists(tmp_path / "out")
    finally:
        b.backstop()

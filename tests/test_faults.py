# SPDX-License-Identifier: MIT
"""Fault injection: the backing store runs out of space, writes and flushes fail or come
back short, a snapshot hits ENOSPC.

The rules checked (blockdev/vol.c design notes, DESIGN.md):
- a write the volume could not store is an error to the writer (ENOSPC or EIO), never a
  silent success;
- once a flush has failed, every later flush of that volume fails too (the sticky flush
  error), even after the cause is gone: data acknowledged before it may be lost, and a
  later success would be a lie;
- other volumes keep working and keep their data; the daemon stays up;
- a snapshot that fails leaves nothing half-registered: state 'error', no manifest, no
  corruption reported by `ebsim check`.

Out-of-space runs on a real ext4 file system in a loop-mounted image file (the ebsim home
lives on it). EIO and short writes are injected with libfiu (Debian fiu-utils): its POSIX
preload library wraps pwrite and fdatasync, which the psync engine calls through libc
(io_uring and libaio bypass libc, so injection uses --io-engine psync); failure points
are switched on and off at run time with fiu-ctrl through the daemon's control FIFO.
"""
import errno
import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
import threading
import time

import pytest

import store_layout
from conftest import EBSIMD, Daemon, Resources, _teardown_daemon, is_mounted, run
from test_snapshots import sha_range, write_pattern

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 64 << 10


@pytest.fixture
def small_home(home, res):
    """Factory: an ext4 file system of size_mib in an image file, loop-mounted under the
    test's home, with an ebsim home on it and a daemon serving that home. Teardown: the
    test's loop devices (res), then the daemon, then the file system."""
    fs = Resources()
    made = []

    def factory(size_mib=300, engine="io_uring", ebsimd=EBSIMD):
        img = os.path.join(home, f"fs{len(made)}.img")
        with open(img, "wb") as f:
            f.truncate(size_mib * MIB)
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", img])
        dev = fs.losetup(img, direct_io=False)
        mnt = fs.mount(dev, os.path.join(home, f"fs{len(made)}"))
        fs.assert_mounted(mnt)
        h = os.path.join(mnt, "home")
        os.mkdir(h)
        d = Daemon(h, engine=engine, ebsimd=ebsimd)
        made.append(d)
        d.start()
        return d, mnt

    yield factory
    res.cleanup()
    for d in made:
        _teardown_daemon(d)
        m = os.path.join(d.home, "mnt")
        if is_mounted(m):
            subprocess.run(["umount", "-l", m], capture_output=True)
    fs.cleanup()


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize  # root's view: the daemon runs as root


def fill(mnt):
    """Take every free block of the file system (root's reserve too: the test runs as
    root, like the daemon), repeating until a round gains nothing: an fsync turns delayed
    allocation into real blocks and may give back what ext4 had reserved for metadata.
    Returns the filler's path."""
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(20):
            gained = 0
            for bs in (MIB, 4096):
                buf = b"\xa5" * bs
                while True:
                    try:
                        n = os.write(fd, buf)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        break
                    gained += n
                    if n < bs:
                        break
            try:
                os.fsync(fd)
            except OSError:
                pass
            if not gained:
                break
    finally:
        os.close(fd)
    return path


def write_until_error(path, limit, bs=MIB, seed=1):
    """Sequential writes until one fails. Returns (bytes acknowledged, the error)."""
    rnd = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    done = 0
    try:
        while done < limit:
            try:
                n = os.pwrite(fd, rnd.randbytes(bs), done)
            except OSError as e:
                return done, e
            assert n == bs, f"short write {n} at {done}: a block device write is all or error"
            done += n
    finally:
        os.close(fd)
    return done, None


def fsync_path(path):
    """fsync through a fresh descriptor: the error is the volume's, not the descriptor's."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_errno(path):
    try:
        fsync_path(path)
        return 0
    except OSError as e:
        return e.errno


def test_enospc_backing_store(small_home, res, capsys):
    d, mnt = small_home(300)
    d.expect_errors()
    b = d.create_volume(1)
    sha_b = write_pattern(b["LocalPath"], "B", 32 * MIB)
    a = d.create_volume(1)
    c = d.create_volume(1)
    loop_c = res.losetup(c["LocalPath"])
    # 32 MiB set aside outside the home, given back later to show what happens with room
    reserve = os.path.join(mnt, "reserve")
    with open(reserve, "wb") as f:
        f.write(b"\x5a" * (32 * MIB))
        os.fsync(f.fileno())

    # A: 1 GiB of writes into a 300 MiB file system
    acked, err = write_until_error(a["LocalPath"], GIB)
    assert err is not None, "1 GiB written into a 300 MiB file system without an error"
    assert err.errno in (errno.ENOSPC, errno.EIO), err
    assert acked < 300 * MIB
    assert d.alive() and d.ok("describe-volumes")["Volumes"]

    # take what is left, so that the outcome below does not depend on ext4's reserves
    filler = fill(mnt)
    # through the loop device the same failure is an I/O error on the block device
    fd = os.open(loop_c, os.O_WRONLY | os.O_DIRECT)
    m = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT wants
    m.write(os.urandom(MIB))
    with pytest.raises(OSError) as e:
        for off in range(0, 64 * MIB, MIB):
            os.pwrite(fd, m, off)
        os.fsync(fd)
    os.close(fd)
    loop_errno = e.value.errno
    assert loop_errno in (errno.EIO, errno.ENOSPC), e.value
    # a volume cannot be created on a full store, and nothing of it is left behind
    vols_before = sorted(os.listdir(os.path.join(d.home, "volumes")))
    r = d.cli("create-volume", "--size", "1")
    assert r.rc == 254 and r.error_code() in ("InsufficientVolumeCapacity", "InternalError"), \
        (r.rc, r.err)
    assert sorted(os.listdir(os.path.join(d.home, "volumes"))) == vols_before
    create_code = r.error_code()

    # A's flush on the full store: the map pages were all written by create-volume (map
    # format 2, sealed pages), so persisting A's map needs no new space and the flush
    # succeeds; what A acknowledged is then durable and reads back exactly. (The sticky
    # flush error after a failed flush is test_injected_eio_and_short_writes' part.)
    first = fsync_errno(a["LocalPath"])
    assert first == 0, f"fsync of A on a full store -> {os.strerror(first)}"
    rnd = random.Random(1)  # write_until_error's data
    h = hashlib.sha256()
    for _ in range(acked // MIB):
        h.update(rnd.randbytes(MIB))
    assert sha_range(a["LocalPath"], 0, acked) == h.hexdigest(), "A lost acknowledged data"
    os.unlink(filler)
    os.unlink(reserve)
    run(["sync", "-f", mnt])  # this file system only
    assert free_bytes(mnt) > 16 * MIB
    # with room again, new writes to A are stored and flushed
    fd = os.open(a["LocalPath"], os.O_WRONLY)
    os.pwrite(fd, b"x" * 4096, 0)
    os.close(fd)
    assert fsync_errno(a["LocalPath"]) == 0

    # B: its data, written and flushed before, is intact; it still writes and flushes
    assert sha_range(b["LocalPath"], 0, 32 * MIB) == sha_b
    write_pattern(b["LocalPath"], "B2", MIB, off=40 * MIB)
    fsync_path(b["LocalPath"])
    # C: its write failed, but no flush of C failed: it flushes again once there is room
    fd = os.open(loop_c, os.O_WRONLY | os.O_DIRECT)
    os.pwrite(fd, m, 0)
    os.fsync(fd)
    os.close(fd)
    assert d.alive()
    vols = {v["VolumeId"]: v for v in d.ok("describe-volumes")["Volumes"]}
    assert {a["VolumeId"], b["VolumeId"], c["VolumeId"]} <= set(vols)

    # a restart: B's flushed data survives; A is served again
    res.detach(loop_c)
    d.stop()
    d.start()
    assert sha_range(b["LocalPath"], 0, 32 * MIB) == sha_b
    after_restart = fsync_errno(a["LocalPath"])
    with open(a["LocalPath"], "rb") as f:
        assert f.read(4096) == b"x" * 4096
    with capsys.disabled():
        print(f"\nENOSPC: writer got {errno.errorcode[err.errno]} after {acked // MIB} MiB "
              f"acknowledged (300 MiB fs); loop device write -> {errno.errorcode[loop_errno]}; "
              f"create-volume on the full store -> {create_code}; fsync of A -> success "
              f"(map preallocated), A's {acked // MIB} MiB intact (after a restart: "
              f"{errno.errorcode.get(after_restart, 'success')}); B intact and writable; "
              f"daemon up")


def test_snapshot_enospc(small_home, capsys):
    d, mnt = small_home(300)
    d.expect_errors()
    t = d.create_volume(1)
    write_pattern(t["LocalPath"], "T", MIB)
    ts = d.ok("create-snapshot", "--volume-id", t["VolumeId"])
    wait_state(d, ts["SnapshotId"], "completed")

    v = d.create_volume(1)
    sha = write_pattern(v["LocalPath"], "V", 160 * MIB, bs=16 * MIB)
    # 160 MiB of data and a 160 MiB full snapshot do not fit in 300 MiB
    s = d.ok("create-snapshot", "--volume-id", v["VolumeId"])
    st = wait_state(d, s["SnapshotId"], None)
    assert st["State"] == "error", st
    man = os.path.join(d.home, "regions", "us-east-1", "manifests")
    names = os.listdir(man)
    assert not [n for n in names if s["SnapshotId"] in n], names  # no manifest, no temp file
    # the chunks it stored before failing were collected when it failed (GC at the end of
    # the job): the check finds nothing corrupt, missing or leaked, and no temp file is left
    c = d.cli("check")
    assert c.rc == 0, (c.rc, c.out, c.err)
    assert not c.json["Corrupt"] and not c.json["Missing"] and not c.json["BadManifests"]
    assert c.json["LeakedCount"] == 0
    temps = store_layout.temp_files(d.home)
    assert not temps, temps
    assert free_bytes(mnt) > 100 * MIB  # the space is back
    # the failed snapshot is not usable, and says why; the earlier one is intact
    r = d.cli("create-volume", "--snapshot-id", s["SnapshotId"])
    assert r.rc == 254 and r.error_code() == "IncorrectState", r.err
    rt = d.ok("create-volume", "--snapshot-id", ts["SnapshotId"])
    assert sha_range(rt["LocalPath"], 0, MIB) == sha_range(t["LocalPath"], 0, MIB)
    # the volume is intact
    assert sha_range(v["LocalPath"], 0, 160 * MIB) == sha

    # with room (discard most of the volume), the next snapshot (full: the failed one put
    # the changed bits back) is complete and restores byte for byte
    run(["fallocate", "--punch-hole", "--keep-size", "-o", str(32 * MIB), "-l",
         str(128 * MIB), v["LocalPath"]])
    want = sha_range(v["LocalPath"], 0, 160 * MIB)
    s2 = d.ok("create-snapshot", "--volume-id", v["VolumeId"])
    st2 = wait_state(d, s2["SnapshotId"], "completed")
    r = d.ok("create-volume", "--snapshot-id", s2["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, 160 * MIB) == want
    d.ok("delete-snapshot", "--snapshot-id", s["SnapshotId"])
    assert d.cli("check").rc == 0
    with capsys.disabled():
        print(f"\nsnapshot ENOSPC: state 'error' ({st.get('StateMessage', '')}); no manifest; "
              f"its chunks collected by the GC at the end of the failed job (check: clean, "
              f"0 leaked, exit 0); a later snapshot ({st2['DataSize'] // MIB} MiB) completed "
              f"and restored byte for byte")


def wait_state(d, snap, want, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = d.ok("describe-snapshots", "--snapshot-ids", snap)["Snapshots"][0]
        if s["State"] != "pending":
            if want:
                assert s["State"] == want, s
            return s
        time.sleep(0.1)
    raise AssertionError(f"{snap} still pending after {timeout}s")


# ---- libfiu: EIO and short writes --------------------------------------------------------

FIU_CTRL = shutil.which("fiu-ctrl")
FIU_LIBS = ("/usr/lib/fiu/fiu_run_preload.so", "/usr/lib/fiu/fiu_posix_preload.so")


def asan_runtime(binary):
    """The libasan an ASan build (make SAN=1, gcc) is linked with, else None."""
    with open(binary, "rb") as f:
        if b"libasan.so" not in f.read():
            return None
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                         text=True).stdout.strip()
    return out if os.path.isabs(out) else None


class ForegroundDaemon(Daemon):
    """ebsimd --foreground, our child, its standard error appended to its ebsimd.log.

    Under libfiu's preload ebsimd must not daemonize: the preload's control thread runs
    from the first instruction, and a fork() beside it can leave the child blocked forever
    on a lock that thread held (seen with the ASan build: the daemon never came up)."""

    def start(self, extra=(), env=None):
        log = open(os.path.join(self.home, "ebsimd.log"), "a")
        p = subprocess.Popen([self.ebsimd, "--home", self.home, "--io-engine", self.engine,
                              "--no-base-images", "--foreground", *extra],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        threading.Thread(target=p.wait, daemon=True).start()  # reaps it when it exits
        for _ in range(1200):
            assert p.poll() is None, f"ebsimd exited with {p.returncode}:\n{self.log()}"
            if is_mounted(os.path.join(self.home, "mnt")) and \
                    self.cli("describe-volumes").rc == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"ebsimd --foreground not ready after 60 s:\n{self.log()}")
        self.pid = p.pid
        return self


@pytest.fixture
def fiu_daemon(home, make_daemon):
    """ebsimd (psync engine) with libfiu's POSIX preload (what `fiu-run -x` sets up), with
    its control FIFO in the home.

    libfiu's preload starts its FIFO thread before ebsimd's main() blocks SIGTERM for its
    signalfd, so that thread would take SIGTERM and the default action would kill the
    daemon without its orderly shutdown; the wrapper blocks the signals before exec, so
    every thread inherits the mask and `ebsimd --stop` works as without libfiu. An ASan
    build needs its runtime first in LD_PRELOAD (fiu-run cannot put it there; with libfiu
    first the process crashes at start), so the wrapper sets the variables itself."""
    if not (FIU_CTRL and all(os.path.exists(p) for p in FIU_LIBS)):
        pytest.skip("libfiu (Debian fiu-utils) is not installed: make deps")
    wrapper = os.path.join(home, "ebsimd-fiu")
    prefix = os.path.join(home, "fiu")
    preload = " ".join(filter(None, (asan_runtime(EBSIMD),) + FIU_LIBS))
    with open(wrapper, "w") as f:
        f.write("#!/usr/bin/python3\nimport os, signal, sys\n"
                "signal.pthread_sigmask(signal.SIG_BLOCK, "
                "{signal.SIGTERM, signal.SIGINT, signal.SIGHUP})\n"
                f"os.environ.update(FIU_ENABLE='', FIU_CTRL_FIFO={prefix!r}, "
                f"LD_PRELOAD={preload!r})\n"
                f"os.execv({EBSIMD!r}, [{EBSIMD!r}] + sys.argv[1:])\n")
    os.chmod(wrapper, 0o755)
    d = make_daemon(engine="psync", ebsimd=wrapper, subhome="h", start=False)
    d.__class__ = ForegroundDaemon
    d.start()
    fifo = f"{prefix}-{d.pid}.in"
    for _ in range(100):
        if os.path.exists(fifo):
            break
        time.sleep(0.05)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "no libfiu control FIFO for the daemon"

    def ctrl(cmd):
        run([FIU_CTRL, "-f", prefix, "-c", cmd, str(d.pid)], timeout=10)

    d.fiu = ctrl
    d.expect_errors()
    return d


def test_injected_eio_and_short_writes(fiu_daemon, capsys):
    d = fiu_daemon
    a = d.create_volume(1)
    b = d.create_volume(1)
    c = d.create_volume(1)
    sha_a = write_pattern(a["LocalPath"], "A", 8 * MIB)
    sha_b = write_pattern(b["LocalPath"], "B", 8 * MIB)
    results = {}

    # 1. every pwrite fails with EIO while A is written (the other volumes are idle)
    d.fiu("enable name=posix/io/rw/pwrite,failinfo=5")
    try:
        acked, err = write_until_error(a["LocalPath"], 4 * MIB, seed=2)
    finally:
        d.fiu("disable name=posix/io/rw/pwrite")
    assert err is not None and acked == 0, (acked, err)
    assert err.errno == errno.EIO, err
    results["write"] = errno.errorcode[err.errno]

    # 2. the data write works, the flush's fdatasync fails: fsync reports it
    fd = os.open(a["LocalPath"], os.O_WRONLY)
    os.pwrite(fd, b"y" * 65536, 16 * MIB)
    os.close(fd)
    d.fiu("enable name=posix/io/sync/fdatasync,failinfo=5")
    try:
        first = fsync_errno(a["LocalPath"])
    finally:
        d.fiu("disable name=posix/io/sync/fdatasync")
    assert first == errno.EIO, first
    # 3. nothing is injected any more: A's flushes keep failing (sticky) ...
    for _ in range(3):
        assert fsync_errno(a["LocalPath"]) == errno.EIO, "a flush succeeded after a failed one"
    # ... while B, idle during the faults, reads its data and flushes
    assert sha_range(b["LocalPath"], 0, 8 * MIB) == sha_b
    write_pattern(b["LocalPath"], "B2", MIB, off=32 * MIB)
    assert fsync_errno(b["LocalPath"]) == 0
    results["flush"] = "EIO, sticky"

    # 4. short writes: pwrite stores fewer bytes than asked; the engine must not take that
    # for success (blk_engine.c: a short write is -ENOSPC)
    d.fiu("enable name=posix/io/rw/pwrite/reduce")
    try:
        acked, err = write_until_error(c["LocalPath"], 4 * MIB, seed=3)
    finally:
        d.fiu("disable name=posix/io/rw/pwrite/reduce")
    assert err is not None and acked == 0, (acked, err)
    assert err.errno in (errno.ENOSPC, errno.EIO), err
    results["short write"] = errno.errorcode[err.errno]
    # a failed write is not a failed flush: C flushes, and what it acknowledges is there
    sha_c = write_pattern(c["LocalPath"], "C", 2 * MIB)
    assert fsync_errno(c["LocalPath"]) == 0
    assert sha_range(c["LocalPath"], 0, 2 * MIB) == sha_c

    # 5. the daemon is up and answers; A's earlier flushed data still reads back
    assert d.alive()
    assert len(d.ok("describe-volumes")["Volumes"]) == 3
    assert sha_range(a["LocalPath"], 0, 8 * MIB) == sha_a
    # 6. a clean stop cannot mark A clean (its flush fails), so the next start recovers it;
    # what every volume had flushed before the faults is there afterwards
    d.stop()
    assert f"flushing {a['VolumeId']} at shutdown" in d.log()
    d.ebsimd = EBSIMD
    d.start()
    assert f"volume {a['VolumeId']} was not closed cleanly" in d.log()
    assert sha_range(a["LocalPath"], 0, 8 * MIB) == sha_a
    assert sha_range(b["LocalPath"], 0, 8 * MIB) == sha_b
    assert sha_range(c["LocalPath"], 0, 2 * MIB) == sha_c
    assert fsync_errno(b["LocalPath"]) == 0
    with capsys.disabled():
        print(f"\nlibfiu (psync engine): injected pwrite EIO -> writer {results['write']}; "
              f"fdatasync EIO -> fsync {results['flush']} (3 more fsyncs failed after the "
              f"fault was off); short pwrite -> writer {results['short write']}; other "
              f"volumes read, write and flush normally; daemon up; after a clean stop A is "
              f"recovered at start and every flushed byte of A, B, C reads back")

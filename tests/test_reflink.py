# SPDX-License-Identifier: MIT
"""Snapshots on a reflink file system: the home on an XFS (reflink=1) loop image that the
test makes. A snapshot clones each new chunk's range of the volume's data file into the
store's pack (FICLONERANGE) instead of copying it; these tests check that the clone path
is really taken (the packs share extents: `filefrag -v` flags them "shared"), that what
a snapshot holds is the point-in-time bytes (sha256 of a restored volume), and that the
store stays consistent (`ebsim check`) through delete + GC and a kill -9 mid-snapshot.
The same tests on ext4 are tests/test_snapshots.py (there the clone is refused and the
bytes are copied)."""
import hashlib
import os
import random
import re
import shutil
import tempfile

import pytest

import store_layout
from conftest import Resources, is_mounted, run
from test_snapshots import kill9_at_progress, sha_range, snapshot, wait_completed, write_pattern

GIB = 1 << 30
MIB = 1 << 20

pytestmark = pytest.mark.skipif(shutil.which("mkfs.xfs") is None,
                                reason="mkfs.xfs missing (make deps installs xfsprogs)")


@pytest.fixture
def xfs():
    """A mounted XFS with reflink on a sparse 6 GiB image under /var/tmp. Set up before
    make_daemon (list it first), so it is torn down after the daemons: unmount, detach the
    loop device by its name, remove the image and the mount point."""
    r = Resources()
    img = tempfile.mktemp(prefix="ebsim-reflink-", suffix=".img", dir="/var/tmp")
    mnt = tempfile.mkdtemp(prefix="ebsim-reflink-", dir="/tmp")
    try:
        with open(img, "wb") as f:
            f.truncate(6 * GIB)
        dev = r.losetup(img, direct_io=False)
        run(["mkfs.xfs", "-q", "-m", "reflink=1", dev])
        r.mount(dev, mnt)
        r.assert_mounted(mnt)
        yield mnt
    finally:
        r.cleanup()
        if not is_mounted(mnt):
            os.rmdir(mnt)
        os.unlink(img)


def xfs_daemon(make_daemon, mnt):
    return make_daemon(subhome=os.path.join(mnt, "home"))


def packs(home):
    pdir = os.path.join(home, "regions", "us-east-1", "packs")
    return [os.path.join(pdir, n) for n in os.listdir(pdir) if n.endswith(".pack")]


def shared_and_total(path):
    """(blocks in extents flagged shared, all blocks) of a file, from `filefrag -v`."""
    out = run(["filefrag", "-v", path]).stdout
    shared = total = 0
    for line in out.splitlines():
        m = re.match(r"\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):", line)
        if m:
            n = int(m.group(1))
            total += n
            if "shared" in line:
                shared += n
    return shared, total


def cloned_bytes(d, snap_id):
    m = re.search(re.escape(snap_id) + r" of \S+: completed \(\d+ chunks, (\d+) bytes new, "
                  r"(\d+) of them cloned", d.log())
    assert m, f"no completion line for {snap_id} in the log"
    return int(m.group(1)), int(m.group(2))


def check_clean(d):
    c = d.cli("check")
    assert c.rc == 0, c.out + c.err
    assert c.json["Result"] == "clean" and c.json["LeakedCount"] == 0, c.json


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_snapshot_clones_and_restores(xfs, make_daemon, encrypted):
    d = xfs_daemon(make_daemon, xfs)
    v = d.create_volume(1, *(["--encrypted"] if encrypted else []))
    vid, path = v["VolumeId"], v["LocalPath"]
    size = 256 * MIB
    sha = write_pattern(path, "r1", size, bs=16 * MIB)
    s = snapshot(d, vid)
    new, cloned = cloned_bytes(d, s["SnapshotId"])
    assert new == size and cloned == size, (new, cloned)
    # the packs share their extents with the data file: no bytes were copied
    shared = total = 0
    for p in packs(d.home):
        a, b = shared_and_total(p)
        shared += a
        total += b
    assert total * 4096 >= size and shared == total, (shared, total)
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, size) == sha
    check_clean(d)
    # an incremental snapshot after a change clones only the changed chunks
    write_pattern(path, "r2", 8 * MIB, off=32 * MIB)
    sha2 = sha_range(path, 0, size)
    s2 = snapshot(d, vid)
    assert cloned_bytes(d, s2["SnapshotId"]) == (8 * MIB, 8 * MIB)
    r2 = d.ok("create-volume", "--snapshot-id", s2["SnapshotId"])
    assert sha_range(r2["LocalPath"], 0, size) == sha2
    # the volume's later writes do not show through the shared extents of the snapshot
    assert sha_range(r["LocalPath"], 0, size) == sha
    # delete + GC (a partly live pack is rewritten) leave a clean store; the volume
    # restored from s still reads from it, so it goes first
    d.ok("delete-volume", "--volume-id", r["VolumeId"])
    before = store_layout.count(d.home)
    d.ok("delete-snapshot", "--snapshot-id", s["SnapshotId"])
    assert store_layout.count(d.home) == before - 128  # the 8 MiB only s had
    check_clean(d)
    r3 = d.ok("create-volume", "--snapshot-id", s2["SnapshotId"])
    assert sha_range(r3["LocalPath"], 0, size) == sha2


def test_point_in_time_overwrite_while_pending(xfs, make_daemon):
    d = xfs_daemon(make_daemon, xfs)
    v = d.create_volume(1)
    vid, path = v["VolumeId"], v["LocalPath"]
    sha_a = write_pattern(path, "A", GIB)
    s = snapshot(d, vid, wait=False)
    sha_b = write_pattern(path, "B", GIB)
    wait_completed(d, s["SnapshotId"])
    assert sha_range(path, 0, GIB) == sha_b
    assert cloned_bytes(d, s["SnapshotId"])[1] == GIB
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, GIB) == sha_a
    check_clean(d)


def clone_calls(d, snap_id):
    m = re.search(re.escape(snap_id) + r" of \S+: completed \(\d+ chunks, \d+ bytes new, "
                  r"\d+ of them cloned, in (\d+) clone calls", d.log())
    assert m, f"no completion line for {snap_id} in the log"
    return int(m.group(1))


def test_runs_cloned_whole_point_in_time_under_small_writes(xfs, make_daemon):
    """New chunks are cloned in runs (one FICLONERANGE for many consecutive chunks), each
    run's chunk locks held until its clone is made: 4 KiB writes at random places inside
    the chunks of the runs, made while the snapshot is pending, never show in it."""
    d = xfs_daemon(make_daemon, xfs)
    v = d.create_volume(1)
    vid, path = v["VolumeId"], v["LocalPath"]
    rnd = random.Random("runs")
    data = bytearray(b"".join(rnd.randbytes(16 * MIB) for _ in range(GIB // (16 * MIB))))
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in range(0, GIB, 16 * MIB):
            os.pwrite(fd, data[off:off + 16 * MIB], off)
        os.fsync(fd)
        sha_a = hashlib.sha256(data).hexdigest()
        s = snapshot(d, vid, wait=False)
        during = 0
        pending = True
        for i in range(4000):
            off = rnd.randrange(GIB // 4096) * 4096
            b = rnd.randbytes(4096)
            os.pwrite(fd, b, off)
            data[off:off + 4096] = b
            if pending and i % 50 == 49:
                st = d.ok("describe-snapshots", "--snapshot-ids", s["SnapshotId"])
                pending = st["Snapshots"][0]["State"] == "pending"
            during += pending
        os.fsync(fd)
    finally:
        os.close(fd)
    assert during >= 50, "the snapshot ended before the writes"
    wait_completed(d, s["SnapshotId"])
    new, cloned = cloned_bytes(d, s["SnapshotId"])
    assert new == cloned == GIB, (new, cloned)
    # 16384 chunks in runs: far fewer clone calls than chunks
    calls = clone_calls(d, s["SnapshotId"])
    assert 0 < calls <= GIB // (64 << 10) // 8, calls
    shared = total = 0
    for p in packs(d.home):
        a, b = shared_and_total(p)
        shared += a
        total += b
    assert total * 4096 >= GIB and shared > 0, (shared, total)
    assert sha_range(path, 0, GIB) == hashlib.sha256(data).hexdigest()
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, GIB) == sha_a
    check_clean(d)


def test_kill9_during_pending_snapshot(xfs, make_daemon):
    d = xfs_daemon(make_daemon, xfs)
    v = d.create_volume(2)
    vid, path = v["VolumeId"], v["LocalPath"]
    sha = write_pattern(path, "k", 2 * GIB, bs=16 * MIB)
    s = snapshot(d, vid, wait=False)
    st = kill9_at_progress(d, s["SnapshotId"], 40, poll=0.005)
    assert st["State"] in ("error", "completed"), st
    check_clean(d)
    assert sha_range(path, 0, 2 * GIB) == sha
    s2 = snapshot(d, vid)
    r = d.ok("create-volume", "--snapshot-id", s2["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, 2 * GIB) == sha
    check_clean(d)
    d.expect_errors()


def test_duplicate_and_zero_chunks_not_kept(xfs, make_daemon):
    """Chunks already stored (here: 255 repeats of one chunk) and all-zero chunks are cloned
    before their hash is known, then punched out of the pack: it keeps only new objects."""
    d = xfs_daemon(make_daemon, xfs)
    v = d.create_volume(1)
    vid, path = v["VolumeId"], v["LocalPath"]
    block = os.urandom(64 << 10)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, block * 256, 0)
        os.pwrite(fd, bytes(16 * MIB), 16 * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    sha = sha_range(path, 0, 32 * MIB)
    s = snapshot(d, vid)
    assert cloned_bytes(d, s["SnapshotId"]) == (64 << 10, 64 << 10)
    total = sum(shared_and_total(p)[1] for p in packs(d.home))
    assert total * 4096 == 64 << 10, total
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, 32 * MIB) == sha
    check_clean(d)

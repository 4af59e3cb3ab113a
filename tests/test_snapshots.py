# SPDX-License-Identifier: MIT
"""Snapshots: point-in-time, incremental, content-addressed, lazily restored.

Every test checks bytes (sha256 of what a restored volume reads back), states and EC2
error codes, through the real daemon and the FUSE files."""
import hashlib
import mmap
import os
import random
import threading
import time

import pytest

import store_layout
from conftest import STRESS

GIB = 1 << 30
MIB = 1 << 20
CHUNK = 64 << 10


def wait_completed(d, snap, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = d.ok("describe-snapshots", "--snapshot-ids", snap)["Snapshots"][0]
        if s["State"] != "pending":
            assert s["State"] == "completed", s
            assert s["Progress"] == "100%"
            return s
        time.sleep(0.05)
    raise AssertionError(f"{snap} still pending after {timeout}s")


def kill9_at_progress(d, snap_id, pct, poll):
    """kill -9 the daemon once snapshot snap_id is pct% copied (or no longer pending; at
    most 30 s), restart it, and return the snapshot as the restarted daemon describes it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = d.ok("describe-snapshots", "--snapshot-ids", snap_id)["Snapshots"][0]
        if st["State"] != "pending" or int(st["Progress"].rstrip("%")) >= pct:
            break
        time.sleep(poll)
    d.kill9()
    d.start()
    return d.ok("describe-snapshots", "--snapshot-ids", snap_id)["Snapshots"][0]


def snapshot(d, vol, wait=True):
    s = d.ok("create-snapshot", "--volume-id", vol)
    assert s["SnapshotId"].startswith("snap-") and len(s["SnapshotId"]) == 22
    assert s["State"] == "pending" and s["VolumeId"] == vol
    return wait_completed(d, s["SnapshotId"]) if wait else s


def write_pattern(path, seed, size, off=0, bs=4 * MIB):
    """Write a deterministic pseudo-random pattern; returns the sha256 of what was written."""
    rnd = random.Random(seed)
    h = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < size:
            n = min(bs, size - done)
            b = rnd.randbytes(n)
            h.update(b)
            os.pwrite(fd, b, off + done)
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return h.hexdigest()


def sha_range(path, off, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(off)
        left = size
        while left:
            b = f.read(min(4 * MIB, left))
            assert b, "short read"
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def store_objects(home, region="us-east-1"):
    return store_layout.count(home, region)


def allocated(home, vid):
    """Bytes allocated on disk to a volume's data file (speed is the benchmarks' business;
    a lazy restore shows as a data file with nothing in it)."""
    return os.stat(os.path.join(home, "volumes", vid, "data")).st_blocks * 512


def vol(d, size=1, *extra):
    v = d.create_volume(size, *extra)
    return v["VolumeId"], v["LocalPath"]


def test_point_in_time_overwrite_while_pending(daemon):
    d = daemon
    vid, path = vol(d, 1)
    sha_a = write_pattern(path, "A", GIB)
    s = snapshot(d, vid, wait=False)
    # overwrite everything with B while the snapshot is being copied
    state_when_b_started = d.ok("describe-snapshots", "--snapshot-ids", s["SnapshotId"])["Snapshots"][0]["State"]
    sha_b = write_pattern(path, "B", GIB)
    wait_completed(d, s["SnapshotId"])
    assert sha_range(path, 0, GIB) == sha_b
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert r["SnapshotId"] == s["SnapshotId"] and r["Size"] == 1
    assert sha_range(r["LocalPath"], 0, GIB) == sha_a
    print("snapshot state when the overwrite started:", state_when_b_started)


def test_point_in_time_under_write_load(daemon):
    """A writer rewrites 4 KiB blocks with increasing generations while a snapshot is taken.
    Each block of the restored volume must hold a generation that was acknowledged before
    create-snapshot was called, or one whose write had started before it returned."""
    d = daemon
    vid, path = vol(d, 1)
    nblocks = 4096  # 16 MiB working set, rewritten continuously
    log = []  # (t_start, t_end, block, gen)
    stop = threading.Event()

    def writer():
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        gen = 0
        rnd = random.Random(7)
        try:
            while not stop.is_set():
                gen += 1
                blk = rnd.randrange(nblocks)
                buf.seek(0)
                buf.write(blk.to_bytes(8, "little") + gen.to_bytes(8, "little") + b"x" * 4080)
                t0 = time.monotonic()
                os.pwrite(fd, buf, blk * 4096)
                log.append((t0, time.monotonic(), blk, gen))
        finally:
            os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.5)
    t_call = time.monotonic()
    s = d.ok("create-snapshot", "--volume-id", vid)
    t_ret = time.monotonic()
    time.sleep(0.5)
    stop.set()
    t.join()
    wait_completed(d, s["SnapshotId"])
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    by_block = {}
    for t0, t1, blk, gen in log:
        by_block.setdefault(blk, []).append((t0, t1, gen))
    with open(r["LocalPath"], "rb") as f:
        data = f.read(nblocks * 4096)
    checked = 0
    for blk, writes in by_block.items():
        got = data[blk * 4096: blk * 4096 + 4096]
        gen = int.from_bytes(got[8:16], "little")
        acked_before = [g for (t0, t1, g) in writes if t1 < t_call]
        started_before = [g for (t0, t1, g) in writes if t0 < t_ret]
        lo = max(acked_before) if acked_before else 0
        hi = max(started_before) if started_before else 0
        assert lo <= gen <= hi, f"block {blk}: generation {gen} outside [{lo}, {hi}]"
        if gen:
            assert int.from_bytes(got[:8], "little") == blk
        checked += 1
    assert checked > 100


def test_incremental_zero_and_dedup(daemon, home):
    d = daemon
    vid, path = vol(d, 1)
    write_pattern(path, "base", 64 * MIB)
    # an all-zero written region is stored as "zero", not as data
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"\0" * (8 * MIB), 128 * MIB)
    os.fsync(fd)
    os.close(fd)
    s1 = snapshot(d, vid)
    assert s1["DataSize"] == 64 * MIB, s1
    objs1 = store_objects(home)
    assert objs1 == 64 * MIB // CHUNK
    # a snapshot of an untouched volume stores nothing new
    s2 = snapshot(d, vid)
    assert s2["DataSize"] == 0 and s2["ParentSnapshotId"] == s1["SnapshotId"]
    assert store_objects(home) == objs1
    # change 1%: the store grows by about the changed chunks
    write_pattern(path, "delta", 640 * 1024, off=10 * MIB)
    s3 = snapshot(d, vid)
    assert s3["DataSize"] == 640 * 1024
    assert store_objects(home) == objs1 + 10
    # two volumes with identical content share chunks
    vid2, path2 = vol(d, 1)
    write_pattern(path2, "base", 64 * MIB)
    s4 = snapshot(d, vid2)
    assert s4["DataSize"] == 0
    assert store_objects(home) == objs1 + 10


def test_delete_middle_of_chain(daemon, home):
    d = daemon
    vid, path = vol(d, 1)
    write_pattern(path, "one", 32 * MIB)
    s1 = snapshot(d, vid)
    sha1 = sha_range(path, 0, GIB)
    write_pattern(path, "two", 8 * MIB, off=4 * MIB)
    s2 = snapshot(d, vid)
    write_pattern(path, "three", 8 * MIB, off=8 * MIB)
    s3 = snapshot(d, vid)
    sha3 = sha_range(path, 0, GIB)
    before = store_objects(home)
    d.ok("delete-snapshot", "--snapshot-id", s2["SnapshotId"])
    # chunks only s2 used: [4, 8) MiB of "two" = 64 chunks (the [8, 12) part was overwritten)
    assert store_objects(home) == before - 64
    for s, sha in ((s1, sha1), (s3, sha3)):
        r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
        assert sha_range(r["LocalPath"], 0, GIB) == sha
    c = d.cli("check")
    assert c.rc == 0, c.out + c.err
    assert c.json["Result"] == "clean" and c.json["LeakedCount"] == 0


def test_lazy_restore_cow_and_initialize(daemon, home):
    d = daemon
    vid, path = vol(d, 4)
    sha_a = write_pattern(path, "lazy", 256 * MIB, off=GIB)
    s = snapshot(d, vid)
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert r["Size"] == 4
    # restored lazily: nothing was copied into the new volume's data file
    assert allocated(home, r["VolumeId"]) == 0
    rpath = r["LocalPath"]
    # an untouched region reads the snapshot's bytes
    assert sha_range(rpath, GIB, 256 * MIB) == sha_a
    # a write into a never-read chunk copies the rest of that chunk from the snapshot
    chunk_off = GIB + 200 * MIB + 5 * CHUNK
    with open(path, "rb") as f:
        f.seek(chunk_off)
        orig = f.read(CHUNK)
    fd = os.open(rpath, os.O_WRONLY)
    os.pwrite(fd, b"Z" * 100, chunk_off + 1000)
    os.fsync(fd)
    os.close(fd)
    with open(rpath, "rb") as f:
        f.seek(chunk_off)
        got = f.read(CHUNK)
    assert got == orig[:1000] + b"Z" * 100 + orig[1100:]
    # initialize: hydrate everything, then the store is never read again
    d.ok("initialize-volume", "--volume-id", r["VolumeId"])
    deadline = time.time() + 60
    while True:
        v = d.ok("describe-volumes", "--volume-ids", r["VolumeId"])["Volumes"][0]
        st = v.get("InitializationStatusDetails")
        if st is None or st["Progress"] == 100:
            break
        assert time.time() < deadline
        time.sleep(0.1)
    # prove it: damage every stored chunk; the hydrated volume still reads correctly
    locs = [loc for copies in store_layout.objects(home).values() for loc in copies]
    assert locs
    for p, off, _ in locs:
        with open(p, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
    assert sha_range(rpath, GIB, 200 * MIB) == sha_range(path, GIB, 200 * MIB)
    d.expect_errors()  # the check below logs the damage


def test_corrupt_chunk_gives_eio_and_check_names_it(daemon, home):
    d = daemon
    vid, path = vol(d, 1)
    write_pattern(path, "c", 4 * MIB)
    s = snapshot(d, vid)
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    # flip one byte in the object holding chunk 3 (offset 192 KiB)
    with open(path, "rb") as f:
        f.seek(2 * CHUNK)
        chunk2 = f.read(CHUNK)
        chunk3 = f.read(CHUNK)
    obj = hashlib.sha256(chunk3).hexdigest()
    op, base = store_layout.location(home, obj)
    with open(op, "r+b") as f:
        f.seek(base + 77)
        b = f.read(1)
        f.seek(base + 77)
        f.write(bytes([b[0] ^ 1]))
    d.expect_errors()
    fd = os.open(r["LocalPath"], os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 3 * CHUNK)
        assert e.value.errno == 5  # EIO, never wrong bytes
        assert os.pread(fd, 4096, 2 * CHUNK) == chunk2[:4096]  # its neighbour is fine
    finally:
        os.close(fd)
    c = d.cli("check")
    assert c.rc == 2, c.out + c.err
    bad = c.json["Corrupt"]
    assert len(bad) == 1 and bad[0]["ObjectId"] == obj
    assert bad[0]["SnapshotId"] == s["SnapshotId"] and bad[0]["ChunkIndex"] == 3


def test_direct_api_listings(daemon):
    d = daemon
    vid, path = vol(d, 1)
    fd = os.open(path, os.O_WRONLY)
    for blk in (0, 3, 1000):
        os.pwrite(fd, os.urandom(4096), blk * 524288 + 4096)
    os.fsync(fd)
    os.close(fd)
    s1 = snapshot(d, vid)
    lb = d.ok("list-snapshot-blocks", "--snapshot-id", s1["SnapshotId"])
    assert lb["BlockSize"] == 524288 and lb["VolumeSize"] == 1
    assert [b["BlockIndex"] for b in lb["Blocks"]] == [0, 3, 1000]
    fd = os.open(path, os.O_WRONLY)
    for blk in (3, 7):
        os.pwrite(fd, os.urandom(4096), blk * 524288)
    os.fsync(fd)
    os.close(fd)
    s2 = snapshot(d, vid)
    ch = d.ok("list-changed-blocks", "--first-snapshot-id", s1["SnapshotId"],
              "--second-snapshot-id", s2["SnapshotId"])
    assert [b["BlockIndex"] for b in ch["ChangedBlocks"]] == [3, 7]
    # pagination over many blocks
    fd = os.open(path, os.O_WRONLY)
    for blk in range(100, 350):
        os.pwrite(fd, b"p" * 512, blk * 524288)
    os.fsync(fd)
    os.close(fd)
    s3 = snapshot(d, vid)
    seen, token = [], None
    while True:
        args = ["list-snapshot-blocks", "--snapshot-id", s3["SnapshotId"], "--max-results", "100"]
        if token:
            args += ["--next-token", token]
        page = d.ok(*args)
        seen += [b["BlockIndex"] for b in page["Blocks"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == sorted(set([0, 3, 7, 1000] + list(range(100, 350))))
    # another lineage -> ValidationException
    vid2, path2 = vol(d, 1)
    write_pattern(path2, "other", MIB)
    o = snapshot(d, vid2)
    r = d.cli("list-changed-blocks", "--first-snapshot-id", s1["SnapshotId"],
              "--second-snapshot-id", o["SnapshotId"])
    assert r.rc == 254 and r.error_code() == "ValidationException"


def test_copy_snapshot_only_missing_chunks(daemon, home):
    d = daemon
    vid, path = vol(d, 1)
    sha = write_pattern(path, "copy", 16 * MIB)
    s = snapshot(d, vid)
    c1 = d.ok("copy-snapshot", "--source-region", "us-east-1", "--source-snapshot-id",
              s["SnapshotId"], region="us-west-2")
    s1 = wait_completed_region(d, c1["SnapshotId"], "us-west-2")
    assert s1["DataSize"] == 16 * MIB
    assert store_objects(home, "us-west-2") == 16 * MIB // CHUNK  # each chunk stored once
    c2 = d.ok("copy-snapshot", "--source-region", "us-east-1", "--source-snapshot-id",
              s["SnapshotId"], region="us-west-2")
    s2 = wait_completed_region(d, c2["SnapshotId"], "us-west-2")
    assert s2["DataSize"] == 0  # the destination already had every chunk
    assert store_objects(home, "us-west-2") == 16 * MIB // CHUNK
    r = d.ok("create-volume", "--snapshot-id", c2["SnapshotId"], region="us-west-2")
    assert sha_range(r["LocalPath"], 0, 16 * MIB) == sha
    # the copy is invisible from the source region, the source from the destination
    assert d.cli("describe-snapshots", "--snapshot-ids", c2["SnapshotId"]).error_code() == \
        "InvalidSnapshot.NotFound"


def wait_completed_region(d, snap, region, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = d.ok("describe-snapshots", "--snapshot-ids", snap, region=region)["Snapshots"][0]
        if s["State"] != "pending":
            assert s["State"] == "completed", s
            return s
        time.sleep(0.05)
    raise AssertionError("copy still pending")


def test_kill9_during_pending_snapshot(daemon, home):
    d = daemon
    vid, path = vol(d, 1)
    sha = write_pattern(path, "k", GIB // 2, bs=16 * MIB)
    s = snapshot(d, vid, wait=False)
    # kill it well into the copy, once some chunks are stored (a pack is committed)
    st = kill9_at_progress(d, s["SnapshotId"], 60, poll=0.02)
    assert st["State"] in ("error", "completed"), st
    # what the interrupted snapshot had stored belongs to no manifest: collected at start
    c = d.cli("check")
    assert c.rc == 0, c.out + c.err
    assert c.json["Result"] == "clean" and c.json["LeakedCount"] == 0, c.json
    if st["State"] == "completed":
        r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
        assert sha_range(r["LocalPath"], 0, GIB // 2) == sha
    # the volume itself is unaffected, and the next snapshot is complete and correct
    assert sha_range(path, 0, GIB // 2) == sha
    s2 = snapshot(d, vid)
    r = d.ok("create-volume", "--snapshot-id", s2["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, GIB // 2) == sha
    d.expect_errors()


def test_large_sparse_volume(daemon, home):
    """64 GiB sparse; 1 GiB written under make stress, 256 MiB in make test."""
    d = daemon
    vid, path = vol(d, 64)
    size = GIB if STRESS else GIB // 4
    sha = write_pattern(path, "big", size, off=40 * GIB, bs=16 * MIB)
    s = snapshot(d, vid)
    assert s["VolumeSize"] == 64
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert r["Size"] == 64
    assert allocated(home, r["VolumeId"]) == 0  # lazy: nothing copied at create
    assert sha_range(r["LocalPath"], 40 * GIB, size) == sha


def test_bad_input(daemon):
    d = daemon
    vid, path = vol(d, 2)
    write_pattern(path, "x", MIB)
    s = snapshot(d, vid)
    cases = [
        (("describe-snapshots", "--snapshot-ids", "snap-0123456789abcdef0"), "InvalidSnapshot.NotFound"),
        (("describe-snapshots", "--snapshot-ids", "snap-../../etc"), "InvalidSnapshotID.Malformed"),
        (("delete-snapshot", "--snapshot-id", "snap-XYZ"), "InvalidSnapshotID.Malformed"),
        (("create-snapshot", "--volume-id", "vol-0123456789abcdef0"), "InvalidVolume.NotFound"),
        (("create-snapshot", "--volume-id", "vol-x"), "InvalidVolumeID.Malformed"),
        (("create-volume", "--snapshot-id", s["SnapshotId"], "--size", "1"), "InvalidParameterValue"),
        (("create-volume", "--snapshot-id", "snap-0123456789abcdef0"), "InvalidSnapshot.NotFound"),
        (("list-snapshot-blocks", "--snapshot-id", "snap-0123456789abcdef0"), "InvalidSnapshot.NotFound"),
    ]
    before = d.ok("describe-volumes")["Volumes"]
    for args, code in cases:
        r = d.cli(*args)
        assert r.rc == 254 and r.error_code() == code, (args, r.err)
    assert d.ok("describe-volumes")["Volumes"] == before
    # another account does not see the snapshot
    r = d.cli("describe-snapshots", "--snapshot-ids", s["SnapshotId"], account="210987654321")
    assert r.error_code() == "InvalidSnapshot.NotFound"

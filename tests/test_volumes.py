# SPDX-License-Identifier: MIT
"""Integration tests of EBS-like volumes as a user drives them: ebsimd serves each volume as
a file on its FUSE mount, the user attaches it with ``losetup --direct-io=on``, makes a
filesystem, mounts it, writes, and expects every flushed byte back after a daemon restart
or crash.

Design notes
------------
- Every test has its own home and daemon (conftest's ``daemon`` / ``make_daemon``), and
  every loop device and mount goes through ``res`` so teardown removes exactly those.
- Outcomes are asserted as bytes: the SHA-256 of what was written against what is read
  back, fio's own crc32c verification, zeros after discard, and the raw data file for
  encryption. Volumes are 1-2 GiB sparse files; tests write tens of MiB.
- Reads that must not come from a page cache (the loop device, the FUSE file after a
  discard) use ``dd iflag=direct``.
"""
import errno
import hashlib
import json
import os
import re
import stat
import subprocess

import pytest

from conftest import is_mounted, run, sha256_file, wait_stat_fails

GIB = 1 << 30
MIB = 1 << 20
CAP_SYS_RESOURCE = 24


# ---- helpers ------------------------------------------------------------------------------

def create(d, size=2, *extra):
    """create-volume and check the file appears at once with the volume's size."""
    v = d.create_volume(size, *extra)
    assert v["State"] == "available"
    assert os.path.getsize(v["LocalPath"]) == size * GIB
    return v


def describe(d, vid):
    return d.ok("describe-volumes", "--volume-ids", vid)["Volumes"][0]


def write_random_files(top, sizes):
    """Write files of random bytes (one in a subdirectory); return {relative name: sha256}."""
    sums = {}
    os.makedirs(os.path.join(top, "sub"), exist_ok=True)
    for i, size in enumerate(sizes):
        name = f"file{i}.bin" if i % 2 == 0 else f"sub/file{i}.bin"
        h = hashlib.sha256()
        with open(os.path.join(top, name), "wb") as f:
            left = size
            while left:
                b = os.urandom(min(left, 4 * MIB))
                f.write(b)
                h.update(b)
                left -= len(b)
        sums[name] = h.hexdigest()
    return sums


def check_files(top, sums):
    got = {n: sha256_file(os.path.join(top, n)) for n in sums}
    assert got == sums


def mkfs(dev):
    run(["mkfs.ext4", "-q", "-F", dev])


def fsck_clean(dev):
    p = run(["e2fsck", "-fn", dev], check=False)
    assert p.returncode == 0, f"e2fsck -fn {dev} -> {p.returncode}\n{p.stdout}\n{p.stderr}"


def read_direct(path, off, length):
    """Read bytes with O_DIRECT (off and length multiples of 4 KiB), bypassing any cache."""
    p = subprocess.run(["dd", f"if={path}", "bs=1M", "iflag=direct,skip_bytes,count_bytes",
                        f"skip={off}", f"count={length}", "status=none"],
                       capture_output=True, check=True)
    assert len(p.stdout) == length
    return p.stdout


def write_direct(path, off, data):
    subprocess.run(["dd", f"of={path}", "bs=1M", "oflag=direct,seek_bytes", f"seek={off}",
                    "conv=notrunc", "status=none"], input=data, capture_output=True, check=True)


def pwrite_fsync(path, off, data):
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwrite(fd, data, off) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def pread(path, off, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, off)
    finally:
        os.close(fd)


def data_extents(path, step=4 * MIB):
    """Yield (offset, bytes) over the allocated ranges of a sparse file (SEEK_DATA/HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pos = start
            while pos < end:
                b = os.pread(fd, min(step, end - pos), pos)
                yield pos, b
                pos += len(b)
            off = end
    finally:
        os.close(fd)


def contains_any_block(path, blocks, probe):
    """True if the file holds one of `blocks` (4 KiB aligned) or the byte string `probe`
    anywhere (unaligned)."""
    tail = b""
    for _, b in data_extents(path):
        for i in range(0, len(b) - 4095, 4096):
            if b[i:i + 4096] in blocks:
                return True
        if probe in tail + b:
            return True
        tail = b[-(len(probe) - 1):]
    return False


def cap_sys_resource():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def df_bytes(mp):
    st = os.statvfs(mp)
    return st.f_blocks * st.f_frsize


def dmesg_lines():
    return run(["dmesg"]).stdout.splitlines()


def fio_json(args, out):
    """Run fio with JSON output to a file; return (exit code, parsed job 0, stderr)."""
    p = run(["fio", *args, "--output-format=json", f"--output={out}"], check=False,
            timeout=600)
    job = None
    if os.path.exists(out):
        with open(out) as f:
            text = f.read()
        # fio may print notes before the JSON document
        job = json.loads(text[text.index("{"):])["jobs"][0]
    return p.returncode, job, p.stderr


def assert_fio_verified(rc, job, err, size):
    assert rc == 0, f"fio exited {rc}: {err}"
    assert job is not None and job["error"] == 0, f"fio reported error {job and job['error']}"
    assert job["write"]["io_bytes"] == size
    # --do_verify reads back everything written and checks each block's crc32c
    assert job["read"]["io_bytes"] == size


# ---- restart and crash ---------------------------------------------------------------------

SIZES = [3 * MIB + 4321, 17 * MIB, 64 * MIB, 123]


def test_files_survive_clean_restart(daemon, res):
    v = create(daemon, 2)
    dev = res.losetup(v["LocalPath"])
    mkfs(dev)
    mp = res.mount(dev, os.path.join(daemon.home, "fs"))
    res.assert_mounted(mp)
    sums = write_random_files(mp, SIZES)
    run(["sync", "-f", mp])  # this file system only: a global sync waits on every writer
    res.umount(mp)
    fsck_clean(dev)
    res.detach(dev)

    daemon.stop()
    assert not is_mounted(os.path.join(daemon.home, "mnt"))
    daemon.start()

    assert describe(daemon, v["VolumeId"])["State"] == "available"
    dev = res.losetup(v["LocalPath"])
    fsck_clean(dev)
    mp = res.mount(dev, mp)
    res.assert_mounted(mp)
    check_files(mp, sums)


def test_synced_files_survive_kill9(daemon, res):
    v = create(daemon, 2)
    dev = res.losetup(v["LocalPath"])
    mkfs(dev)
    mp = res.mount(dev, os.path.join(daemon.home, "fs"))
    res.assert_mounted(mp)
    sums = write_random_files(mp, SIZES)
    run(["sync", "-f", mp])  # this file system only: a global sync waits on every writer

    daemon.kill9()
    fuse_mnt = os.path.join(daemon.home, "mnt")
    # the dead daemon's FUSE mount is stale, and the loop device on it is dead
    assert is_mounted(fuse_mnt)
    with pytest.raises(OSError) as e:
        os.listdir(fuse_mnt)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    p = run(["dd", f"if={dev}", "of=/dev/null", "bs=4k", "count=1", "iflag=direct"],
            check=False, timeout=60)
    assert p.returncode != 0, "the loop device still reads after its daemon was killed"
    res.umount(mp, lazy=True)
    res.detach(dev)

    # no manual step on HOME/mnt: ebsimd clears its own stale mount
    assert is_mounted(fuse_mnt)
    wait_stat_fails(fuse_mnt)  # see test_restart_right_after_kill9
    daemon.start()
    assert "cleared a stale FUSE mount" in daemon.log()
    assert os.path.getsize(v["LocalPath"]) == 2 * GIB

    dev = res.losetup(v["LocalPath"])
    fsck_clean(dev)
    mp = res.mount(dev, mp)
    res.assert_mounted(mp)
    check_files(mp, sums)


def test_restart_right_after_kill9(daemon):
    v = create(daemon, 1)
    fuse_mnt = os.path.join(daemon.home, "mnt")
    os.stat(fuse_mnt)  # what any ls or shell prompt does: caches the root's attributes
    daemon.kill9()
    daemon.expect_errors()
    daemon.start()  # at once, as a supervisor restarting a crashed daemon would
    assert "cleared a stale FUSE mount" in daemon.log()
    assert describe(daemon, v["VolumeId"])["State"] == "available"


def test_volumes_survive_restart(daemon):
    made = [create(daemon, 1),
            create(daemon, 8, "--volume-type", "gp3", "--iops", "4000", "--throughput", "250"),
            create(daemon, 4, "--volume-type", "io1", "--iops", "200", "--encrypted")]
    ids = sorted(v["VolumeId"] for v in made)
    before = sorted(daemon.ok("describe-volumes")["Volumes"], key=lambda v: v["VolumeId"])
    assert [v["VolumeId"] for v in before] == ids

    daemon.stop()
    daemon.start()

    after = sorted(daemon.ok("describe-volumes")["Volumes"], key=lambda v: v["VolumeId"])
    assert after == before
    for v in after:
        assert os.path.getsize(v["LocalPath"]) == v["Size"] * GIB


# ---- data integrity under fio -----------------------------------------------------------

FIO_SIZE = 256 * MIB
FIO_PATTERNS = {
    "rand4k": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "seq1m": ["--rw=write", "--bs=1M", "--iodepth=8"],
}


def fio_verify_args(path, pattern, ioengine="libaio"):
    return ["--name=v", f"--filename={path}", "--direct=1", f"--ioengine={ioengine}",
            f"--size={FIO_SIZE}", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
            *FIO_PATTERNS[pattern]]


@pytest.mark.parametrize("pattern", sorted(FIO_PATTERNS))
@pytest.mark.parametrize("engine", ["io_uring", "libaio", "psync"])
def test_fio_verify_fuse_file(make_daemon, engine, pattern):
    d = make_daemon(engine=engine)
    v = create(d, 1)
    rc, job, err = fio_json(fio_verify_args(v["LocalPath"], pattern),
                            os.path.join(d.home, "fio.json"))
    assert_fio_verified(rc, job, err, FIO_SIZE)
    assert f"with the {engine} engine" in d.log()


def test_fio_verify_loop_qd32(daemon, res):
    v = create(daemon, 1)
    dev = res.losetup(v["LocalPath"])
    rc, job, err = fio_json(fio_verify_args(dev, "rand4k"), os.path.join(daemon.home, "fio.json"))
    assert_fio_verified(rc, job, err, FIO_SIZE)


# ---- resize ------------------------------------------------------------------------------

def test_grow_mounted_volume(daemon, res):
    v = create(daemon, 1)
    path, vid = v["LocalPath"], v["VolumeId"]
    dev = res.losetup(path)
    mkfs(dev)
    mp = res.mount(dev, os.path.join(daemon.home, "fs"))
    res.assert_mounted(mp)
    sums = write_random_files(mp, [5 * MIB, 20 * MIB + 17])
    run(["sync", "-f", mp])
    df_before = df_bytes(mp)
    assert df_before < GIB

    m = daemon.ok("modify-volume", "--volume-id", vid, "--size", "2")["VolumeModification"]
    assert (m["OriginalSize"], m["TargetSize"]) == (1, 2)
    assert os.path.getsize(path) == 2 * GIB  # at once, no remount of HOME/mnt
    assert describe(daemon, vid)["Size"] == 2
    run(["losetup", "-c", dev])
    assert int(run(["blockdev", "--getsize64", dev]).stdout) == 2 * GIB

    if cap_sys_resource():
        run(["resize2fs", dev])
    else:
        # Online resize2fs needs CAP_SYS_RESOURCE (the EXT4_IOC_RESIZE_FS ioctl reserves GDT
        # blocks); sandboxes without it get "Permission denied". Fall back to the offline
        # path, which exercises the same grown device.
        res.umount(mp)
        p = run(["e2fsck", "-fy", dev], check=False)
        assert p.returncode == 0, f"e2fsck -fy -> {p.returncode}\n{p.stdout}"
        run(["resize2fs", dev])
        mp = res.mount(dev, mp)
        res.assert_mounted(mp)
    df_after = df_bytes(mp)
    assert df_after > df_before + 900 * MIB, (df_before, df_after)
    assert df_after < 2 * GIB
    check_files(mp, sums)


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_grown_space_persists(daemon, how):
    v = create(daemon, 1)
    vid, path = v["VolumeId"], v["LocalPath"]
    low, high = os.urandom(MIB), os.urandom(MIB)
    pwrite_fsync(path, GIB - MIB, low)
    daemon.ok("modify-volume", "--volume-id", vid, "--size", "2")
    pwrite_fsync(path, GIB + 512 * MIB, high)  # beyond the old end
    if how == "stop":
        daemon.stop()
    else:
        daemon.kill9()  # the modify was acknowledged, so it must survive a crash
        wait_stat_fails(os.path.join(daemon.home, "mnt"))
    daemon.start()
    assert describe(daemon, vid)["Size"] == 2
    assert os.path.getsize(path) == 2 * GIB
    assert pread(path, GIB - MIB, MIB) == low
    assert pread(path, GIB + 512 * MIB, MIB) == high
    assert pread(path, GIB, MIB) == bytes(MIB)  # never written: zeros


# ---- discard -----------------------------------------------------------------------------

def test_discard_reads_zeros(daemon, res):
    v = create(daemon, 1)
    path = v["LocalPath"]
    data_file = os.path.join(daemon.home, "volumes", v["VolumeId"], "data")
    dev = res.losetup(path)
    devname = os.path.basename(dev)
    pattern = os.urandom(16 * MIB)
    write_direct(dev, 0, pattern)
    run(["sync", dev])
    assert read_direct(path, 0, 16 * MIB) == pattern
    dmesg_before = dmesg_lines()

    run(["blkdiscard", "-o", "0", "-l", str(4 * MIB), dev])           # REQ_OP_DISCARD
    run(["blkdiscard", "-z", "-o", str(4 * MIB), "-l", str(MIB), dev])  # REQ_OP_WRITE_ZEROES
    run(["fallocate", "--punch-hole", "-o", str(8 * MIB), "-l", str(MIB), path])
    run(["fallocate", "--zero-range", "-o", str(10 * MIB), "-l", str(MIB), path])

    zeros = {(0, 4 * MIB), (4 * MIB, MIB), (8 * MIB, MIB), (10 * MIB, MIB)}
    for off, ln in sorted(zeros):
        assert read_direct(dev, off, ln) == bytes(ln), f"loop [{off}, +{ln}) not zero"
        assert read_direct(path, off, ln) == bytes(ln), f"file [{off}, +{ln}) not zero"
    # the rest is untouched
    for off, ln in [(5 * MIB, 3 * MIB), (9 * MIB, MIB), (11 * MIB, 5 * MIB)]:
        assert read_direct(dev, off, ln) == pattern[off:off + ln]
    # a discard frees space: the discarded range is a hole in the volume's data file
    fd = os.open(data_file, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) >= 4 * MIB
    finally:
        os.close(fd)

    new = dmesg_lines()[len(dmesg_before):]
    bad = [l for l in new if re.search(rf"\b{devname}\b", l) and "not supported" in l]
    assert not bad, "\n".join(bad)


# ---- encryption --------------------------------------------------------------------------

def test_encrypted_volume_at_rest(daemon):
    home = daemon.home
    canary = os.urandom(MIB)
    blocks = {canary[i:i + 4096] for i in range(0, MIB, 4096)}
    probe = canary[1000:1064]
    off = 3 * MIB

    # control: a plain volume holds the canary in clear, so the search below can find it
    plain = create(daemon, 1)
    pwrite_fsync(plain["LocalPath"], off, canary)
    assert contains_any_block(os.path.join(home, "volumes", plain["VolumeId"], "data"),
                              blocks, probe)

    v = create(daemon, 1, "--encrypted")
    assert v["Encrypted"] is True
    vid = v["VolumeId"]
    raw = os.path.join(home, "volumes", vid, "data")
    pwrite_fsync(v["LocalPath"], off, canary)
    assert pread(v["LocalPath"], off, MIB) == canary
    assert any(True for _ in data_extents(raw)), "nothing reached the data file"
    assert not contains_any_block(raw, blocks, probe), "plaintext found in the data file"

    daemon.stop()
    assert not contains_any_block(raw, blocks, probe)
    daemon.start()
    assert describe(daemon, vid)["Encrypted"] is True
    assert pread(v["LocalPath"], off, MIB) == canary

    def mode(p):
        return stat.S_IMODE(os.lstat(p).st_mode)
    assert mode(os.path.join(home, "keys")) == 0o700
    assert mode(os.path.join(home, "keys", "master.key")) == 0o600
    sock = os.path.join(home, "ebsimd.sock")
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert mode(sock) == 0o600


# ---- delete ------------------------------------------------------------------------------

def test_delete_volume_waits_for_a_close_in_flight(daemon, res):
    """close(2) of the volume's file returns before the kernel's RELEASE reaches the daemon;
    a delete issued right then must not call the volume in use. The file is held open for
    0.3 s while delete-volume starts (as a close that has not arrived yet)."""
    import threading
    v = create(daemon, 1)
    vid, path = v["VolumeId"], v["LocalPath"]
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, os.urandom(65536), 0)
    closer = threading.Timer(0.3, os.close, args=(fd,))
    closer.start()
    try:
        r = daemon.cli("delete-volume", "--volume-id", vid)
    finally:
        closer.join()
    assert r.rc == 0, r.err
    assert not os.path.exists(path)
    r = daemon.cli("describe-volumes", "--volume-ids", vid)
    assert (r.rc, r.error_code()) == (254, "InvalidVolume.NotFound")


def test_delete_volume_in_use_then_detached(daemon, res):
    v = create(daemon, 1)
    vid, path = v["VolumeId"], v["LocalPath"]
    voldir = os.path.join(daemon.home, "volumes", vid)
    data = os.urandom(MIB)
    pwrite_fsync(path, 0, data)
    dev = res.losetup(path)
    assert describe(daemon, vid)["State"] == "in-use"

    r = daemon.cli("delete-volume", "--volume-id", vid)
    assert (r.rc, r.error_code()) == (254, "VolumeInUse"), r.err
    assert os.path.exists(path) and os.path.isdir(voldir)
    assert read_direct(path, 0, MIB) == data
    assert read_direct(dev, 0, MIB) == data

    res.detach(dev)
    assert describe(daemon, vid)["State"] == "available"
    r = daemon.cli("delete-volume", "--volume-id", vid)
    assert r.rc == 0, r.err
    assert r.out == ""
    assert not os.path.exists(path)
    assert not os.path.exists(voldir)
    r = daemon.cli("describe-volumes", "--volume-ids", vid)
    assert (r.rc, r.error_code()) == (254, "InvalidVolume.NotFound")
    assert daemon.ok("describe-volumes")["Volumes"] == []

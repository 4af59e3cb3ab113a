# SPDX-License-Identifier: MIT
"""The write path under concurrent writers of every shape, checked by the bytes read back.

blockdev/ does a small page-aligned write at once on the FUSE thread (blk_try_now: pwrite
into the page cache) and hands everything else to the I/O engine; large writes go to the
data file in pieces (vol.c, WRITE_PIECE). These tests mix the shapes that take each route
-- 4 KiB, 8 KiB and 64 KiB aligned (at once), 68 KiB (over the limit), 512-byte and
odd-length unaligned writes (engine; on an encrypted volume, a chunk-locked read-modify-
write), 1 MiB (several pieces) -- from several threads, on distinct ranges and on one range
that every thread overwrites, on plain and encrypted volumes. The expected image is kept
in memory: each thread owns its stripe, and writes to the shared range are serialised by a
lock held across pwrite, so the last write acknowledged is the one that must be read back.
Then: sha256 through the FUSE file and through a loop device, fsync, kill -9, restart, and
the same sha256 again. (FUSE over io_uring has the same shapes in test_fuse_transport.py.)
"""
import hashlib
import os
import random
import threading

import pytest

from conftest import wait_stat_fails

MIB = 1 << 20
REGION = 64 * MIB
THREADS = 4
STRIPE = 12 * MIB  # THREADS stripes, then the shared range up to REGION
SHARED = THREADS * STRIPE
SHAPES = [  # (length, alignment of the offset)
    (4096, 4096), (8192, 4096), (65536, 4096), (69632, 4096), (512, 512),
    (1 * MIB, MIB), (100 * 1024 + 512, 512), (4096, 512), (33, 1),
]


def sha256_range(path, length):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < length:
            b = os.pread(fd, min(4 * MIB, length - off), off)
            assert b, f"short read of {path} at {off}"
            h.update(b)
            off += len(b)
    finally:
        os.close(fd)
    return h.hexdigest()


def writer(fd, image, lock, tid, nops, errors):
    rng = random.Random(1000 + tid)
    try:
        for i in range(nops):
            length, align = rng.choice(SHAPES)
            data = rng.randbytes(length)
            if i % 3 == 2:
                # the shared range: serialised, so the expected bytes are known
                off = SHARED + rng.randrange(0, (REGION - SHARED - length) // align) * align
                with lock:
                    assert os.pwrite(fd, data, off) == length
                    image[off:off + length] = data
            else:
                base = tid * STRIPE
                off = base + rng.randrange(0, (STRIPE - length) // align) * align
                assert os.pwrite(fd, data, off) == length
                image[off:off + length] = data
    except BaseException as e:  # reported by the main thread
        errors.append(e)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_concurrent_writers_every_shape_survive_kill9(daemon, res, encrypted):
    v = daemon.create_volume(1, *(["--encrypted"] if encrypted else []))
    path = v["LocalPath"]
    res.assert_mounted(os.path.join(daemon.home, "mnt"))
    image = bytearray(REGION)
    lock = threading.Lock()
    errors = []
    fd = os.open(path, os.O_RDWR)
    try:
        # some chunks PRESENT beforehand, so both first writes and overwrites happen
        seed = random.Random(7).randbytes(4 * MIB)
        for off in range(0, REGION, 16 * MIB):
            assert os.pwrite(fd, seed, off) == len(seed)
            image[off:off + len(seed)] = seed
        threads = [threading.Thread(target=writer, args=(fd, image, lock, t, 300, errors))
                   for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        want = hashlib.sha256(image).hexdigest()
        assert sha256_range(path, REGION) == want

        dev = res.losetup(path)  # a fresh device: its page cache is empty
        assert sha256_range(dev, REGION) == want
        res.detach(dev)
        os.fsync(fd)
    finally:
        os.close(fd)

    daemon.kill9()
    fuse_mnt = os.path.join(daemon.home, "mnt")
    wait_stat_fails(fuse_mnt)
    daemon.start()
    res.assert_mounted(fuse_mnt)
    assert sha256_range(path, REGION) == want
    assert not daemon.unexpected_log_errors()

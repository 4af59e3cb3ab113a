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
import ctypes
import hashlib
import mmap
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


# ---- chunk fills and the page cache ------------------------------------------------------

KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 1 << 15, 1 << 16


def folio_pages(path, off, length):
    """Sizes, in 4 KiB pages, of the page-cache folios over [off, off+length) of path, in
    order (a private read-only-used mapping, /proc/self/pagemap, /proc/kpageflags). A page
    that is not resident counts as a folio of 0 pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, length, access=mmap.ACCESS_COPY, offset=off)
    finally:
        os.close(fd)
    anchor = ctypes.c_char.from_buffer(m)
    start = ctypes.addressof(anchor)
    sizes, in_folio = [], False
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pm, \
                open("/proc/kpageflags", "rb", buffering=0) as kf:
            for i in range(length // 4096):
                m[i * 4096]  # map the page (read: it stays the page-cache page)
                pm.seek((start // 4096 + i) * 8)
                e = int.from_bytes(pm.read(8), "little")
                if not e >> 63:
                    sizes.append(0)
                    in_folio = False
                    continue
                kf.seek((e & ((1 << 55) - 1)) * 8)
                flags = int.from_bytes(kf.read(8), "little")
                if flags & KPF_COMPOUND_TAIL and in_folio:
                    sizes[-1] += 1
                    continue
                sizes.append(1)
                in_folio = bool(flags & KPF_COMPOUND_HEAD)
        return sizes
    finally:
        del anchor
        m.close()


def test_new_data_keeps_folios_small(daemon, res):
    """Long writes that create data (into never-written chunks) reach the data file in
    32 KiB pieces (vol.c, WRITE_PIECE), so ext4 makes no folio larger than 8 pages there
    (a 1 MiB write in 256 KiB pieces made 64-page folios, and every later 4 KiB write into
    one walked 64 buffer heads). Long overwrites of those chunks go in larger pieces and
    leave the cached folios as they are. The bytes read back, after a restart too."""
    probe = os.path.join(daemon.home, "folio-probe")  # the data files' file system
    with open(probe, "wb") as f:
        f.write(os.urandom(1 << 20))
    big = max(folio_pages(probe, 0, 1 << 20))
    os.unlink(probe)
    if big <= 8:
        pytest.skip(f"this file system made at most a {big}-page folio of a 1 MiB write")

    v = daemon.create_volume(1)
    path, raw = v["LocalPath"], os.path.join(daemon.home, "volumes", v["VolumeId"], "data")
    res.assert_mounted(os.path.join(daemon.home, "mnt"))
    region, step = 4 << 20, 1 << 20
    rng = random.Random(7)
    fd = os.open(path, os.O_RDWR)
    try:
        for rnd in ("create", "overwrite"):
            image = rng.randbytes(region)
            for off in range(0, region, step):
                assert os.pwrite(fd, image[off:off + step], off) == step
            sizes = folio_pages(raw, 0, region)
            assert sum(sizes) == region // 4096, f"{rnd}: the written pages are not all cached"
            assert max(sizes) <= 8, f"{rnd}: a {max(sizes)}-page folio in the data file"
            want = hashlib.sha256(image).hexdigest()
            assert sha256_range(path, region) == want
        os.fsync(fd)
    finally:
        os.close(fd)
    daemon.stop()
    daemon.start()
    res.assert_mounted(os.path.join(daemon.home, "mnt"))
    assert sha256_range(path, region) == want
    assert not daemon.unexpected_log_errors()


def test_encrypted_chunk_fill_keeps_folios_small(daemon, res, tmp_path):
    """A first 4 KiB write into an encrypted volume's chunk fills the whole chunk (vol.c,
    FILL_PIECE): it reaches the data file in 16 KiB pieces, so ext4 keeps no folio larger
    than that there (a 64 KiB one made every later 4 KiB write into the chunk walk 16 buffer
    heads). The bytes read back, after a restart too, and the data file holds ciphertext."""
    probe = os.path.join(daemon.home, "folio-probe")  # the data files' file system
    with open(probe, "wb") as f:
        f.write(os.urandom(65536))
    big = max(folio_pages(probe, 0, 65536))
    os.unlink(probe)
    if big < 16:
        pytest.skip(f"this file system made a {big}-page folio of a 64 KiB write")

    v = daemon.create_volume(1, "--encrypted")
    path, raw = v["LocalPath"], os.path.join(daemon.home, "volumes", v["VolumeId"], "data")
    res.assert_mounted(os.path.join(daemon.home, "mnt"))
    chunk, nchunks = 65536, 64
    rng = random.Random(11)
    image = bytearray(nchunks * chunk)
    blocks = set()
    fd = os.open(path, os.O_RDWR)
    try:
        for c in range(nchunks):
            off = c * chunk + rng.randrange(16) * 4096
            data = rng.randbytes(4096)
            assert os.pwrite(fd, data, off) == 4096
            image[off:off + 4096] = data
            blocks.add(data)
        sizes = folio_pages(raw, 0, nchunks * chunk)
        assert sum(sizes) == nchunks * chunk // 4096, "the filled chunks are not all cached"
        assert max(sizes) <= 4, f"a {max(sizes)}-page folio in the data file"
        want = hashlib.sha256(image).hexdigest()
        assert sha256_range(path, len(image)) == want
        os.fsync(fd)
    finally:
        os.close(fd)

    daemon.stop()
    with open(raw, "rb") as f:
        stored = f.read(len(image))
    assert not any(stored[i:i + 4096] in blocks for i in range(0, len(stored), 4096)), \
        "plaintext in the data file"
    assert stored.count(bytes(4096)) == 0, "a filled sector holds zeros, not ciphertext"
    daemon.start()
    res.assert_mounted(os.path.join(daemon.home, "mnt"))
    assert sha256_range(path, len(image)) == want
    assert not daemon.unexpected_log_errors()

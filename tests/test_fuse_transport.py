# SPDX-License-Identifier: MIT
"""FUSE over io_uring (ebsimd --fuse-transport io_uring, fuse/furing.c).

The kernel hands requests to the daemon as io_uring command completions and takes the
replies back with COMMIT_AND_FETCH, instead of read(2)/writev(2) on /dev/fuse. These tests
check the outcome a user sees: the bytes written through the FUSE file and through a loop
device read back with the same sha256 through both transports and across a restart that
switches transport; the requests really went through the ring (the daemon logs how many
the ring served when it stops: all the I/O of the test, not a handful); the classic
transport has no ring; and a bad transport name is refused before anything is mounted.
"""
import hashlib
import os
import random
import re

import pytest

from conftest import is_mounted, run

MIB = 1 << 20


def served(log):
    m = re.findall(r"FUSE over io_uring served (\d+) requests", log)
    return [int(x) for x in m]


def write_pattern(path, seed, length):
    """Writes of mixed sizes (4 KiB to 1 MiB, aligned and not) over [0, length); returns
    the expected image and how many writes were issued."""
    rng = random.Random(seed)
    image = bytearray(length)
    fd = os.open(path, os.O_RDWR)
    n = 0
    try:
        for _ in range(400):
            size = rng.choice([4096, 8192, 65536, 69632, 512, 33, MIB])
            off = rng.randrange(0, length - size)
            if size >= 4096:
                off &= ~4095
            data = rng.randbytes(size)
            assert os.pwrite(fd, data, off) == size
            image[off:off + size] = data
            n += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return image, n


def sha(path, length):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        left = length
        while left:
            b = f.read(min(4 * MIB, left))
            assert b
            h.update(b)
            left -= len(b)
    return h.hexdigest()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_io_uring_transport_round_trip(make_daemon, res, encrypted):
    d = make_daemon(transport="io_uring")
    v = d.create_volume(1, *(["--encrypted"] if encrypted else []))
    path = v["LocalPath"]
    res.assert_mounted(os.path.join(d.home, "mnt"))
    length = 48 * MIB
    image, nwrites = write_pattern(path, 11, length)
    want = hashlib.sha256(image).hexdigest()
    assert sha(path, length) == want
    dev = res.losetup(path)  # through the kernel's block layer as well
    assert sha(dev, length) == want
    # and writes through the loop device (direct I/O, as users attach volumes)
    tail = random.Random(5).randbytes(8 * MIB)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, len(tail))
        buf.write(tail)
        assert os.pwritev(fd, [buf], length) == len(tail)
        os.fsync(fd)
    finally:
        os.close(fd)
    image += tail
    length += len(tail)
    want = hashlib.sha256(image).hexdigest()
    assert sha(dev, length) == want
    res.detach(dev)
    d.stop()
    counts = served(d.log())
    # every write and read above went through the ring: far more than nwrites requests
    assert counts and counts[-1] >= nwrites + (length // MIB), d.log()
    # the same bytes through the classic transport after a restart
    d.transport = "dev"
    d.start()
    res.assert_mounted(os.path.join(d.home, "mnt"))
    assert sha(path, length) == want
    d.stop()
    assert len(served(d.log())) == len(counts), "the dev transport must not use a ring"
    assert "FUSE transport dev" in d.log()


def test_bad_transport_is_refused(home):
    from conftest import EBSIMD
    p = run([EBSIMD, "--home", home, "--fuse-transport", "carrier-pigeon"], check=False)
    assert p.returncode == 1
    assert "unknown FUSE transport 'carrier-pigeon' (dev or io_uring)" in p.stderr
    assert not is_mounted(os.path.join(home, "mnt"))
    assert not os.path.exists(os.path.join(home, "ebsimd.pid"))

# SPDX-License-Identifier: MIT
"""ebsimd as a service: it returns only when ready, one daemon per home, clean stop by
--stop and by SIGTERM (flushing unsynced writes), recovery after kill -9, and refusal to
start, touching nothing, when its catalog or a volume header is damaged.

Design notes
------------
- Daemons are started through conftest's ``make_daemon`` so teardown always stops them by
  PID; tests that run ``ebsimd`` by hand register the PID on that object.
- "Touching nothing" is checked with ``tree_state``: every file under HOME/volumes with
  its mode, size, allocated extents and the SHA-256 of its allocated bytes.
"""
import errno
import hashlib
import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import EBSIMD, ROOT, is_mounted, pid_running, run, wait_stat_fails

GIB = 1 << 30
MIB = 1 << 20


def tree_state(top):
    """{relative path: (mode, size, [(extent start, end)], sha256 of the extents)}."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames):
            p = os.path.join(dirpath, name)
            state[os.path.relpath(p, top)] = (os.lstat(p).st_mode, None, None, None)
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h, extents = hashlib.sha256(), []
            fd = os.open(p, os.O_RDONLY)
            try:
                off = 0
                while off < st.st_size:
                    try:
                        start = os.lseek(fd, off, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno == errno.ENXIO:
                            break
                        raise
                    end = os.lseek(fd, start, os.SEEK_HOLE)
                    extents.append((start, end))
                    pos = start
                    while pos < end:
                        b = os.pread(fd, min(4 * MIB, end - pos), pos)
                        h.update(b)
                        pos += len(b)
                    off = end
            finally:
                os.close(fd)
            state[os.path.relpath(p, top)] = (st.st_mode, st.st_size, extents, h.hexdigest())
    return state


def write_nosync(path, off, data):
    """A plain write through the FUSE file: no fsync, no O_DIRECT."""
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def read(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(length)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def log_tail(d, since):
    return d.log()[since:]


# ---- start-up ------------------------------------------------------------------------------

def test_returns_only_when_ready(make_daemon):
    d = make_daemon(start=False)
    p = run([EBSIMD, "--home", d.home, "--io-engine", d.engine])
    # immediately after it returns, without polling:
    mnt = os.path.join(d.home, "mnt")
    assert is_mounted(mnt)
    with open("/proc/self/mountinfo") as f:
        fstype = [l.split(" - ")[1].split()[0] for l in f if l.split()[4] == mnt]
    assert fstype and fstype[0].startswith("fuse"), fstype
    sock = os.path.join(d.home, "ebsimd.sock")
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert mode(sock) == 0o600
    with open(os.path.join(d.home, "ebsimd.pid")) as f:
        d.pid = int(f.read())
    assert d.alive()
    assert p.stdout == ""
    # and it serves at once
    v = d.create_volume(1)
    assert os.path.getsize(v["LocalPath"]) == GIB
    assert f"ready: pid {d.pid}" in d.log()


def test_second_daemon_refused(make_daemon):
    d = make_daemon()
    v = d.create_volume(1)
    p = run([EBSIMD, "--home", d.home], check=False)
    assert p.returncode != 0
    assert f"pid {d.pid}" in p.stderr, p.stderr
    assert "already" in p.stderr
    # the first keeps serving, on the same pid file, mount and socket
    assert d.alive()
    with open(os.path.join(d.home, "ebsimd.pid")) as f:
        assert int(f.read()) == d.pid
    assert is_mounted(os.path.join(d.home, "mnt"))
    assert [x["VolumeId"] for x in d.ok("describe-volumes")["Volumes"]] == [v["VolumeId"]]
    data = os.urandom(MIB)
    write_nosync(v["LocalPath"], 0, data)
    assert read(v["LocalPath"], 0, MIB) == data


def test_unknown_engine_refused(home):
    p = run([EBSIMD, "--home", home, "--io-engine", "bogus"], check=False)
    assert p.returncode != 0
    assert "bogus" in p.stderr and "io_uring" in p.stderr, p.stderr
    assert not is_mounted(os.path.join(home, "mnt"))
    assert not os.path.exists(os.path.join(home, "ebsimd.pid"))


# ---- stopping ----------------------------------------------------------------------------

def stop_by_option(d):
    p = run([EBSIMD, "--home", d.home, "--stop"])
    assert str(d.pid) in p.stderr  # "stopped the daemon on HOME (pid N)"
    # --stop returns when the daemon has released its home: nothing left to wait for
    assert not is_mounted(os.path.join(d.home, "mnt"))
    d._wait_gone()


def stop_by_sigterm(d):
    os.kill(d.pid, signal.SIGTERM)
    d._wait_gone()
    assert not is_mounted(os.path.join(d.home, "mnt"))


@pytest.mark.parametrize("how", ["stop-option", "sigterm"])
def test_stop_flushes_and_unmounts(make_daemon, how):
    d = make_daemon()
    v = d.create_volume(1)
    data = os.urandom(3 * MIB)
    write_nosync(v["LocalPath"], 5 * MIB + 512, data)
    pid = d.pid

    (stop_by_option if how == "stop-option" else stop_by_sigterm)(d)
    assert not pid_running(pid)
    assert not is_mounted(os.path.join(d.home, "mnt"))
    assert not os.path.exists(os.path.join(d.home, "ebsimd.sock"))
    log = d.log()
    assert log.rfind("info: stopped") > log.rfind("shutting down") >= 0

    d.start()
    assert "not closed cleanly" not in d.log()
    assert read(v["LocalPath"], 5 * MIB + 512, len(data)) == data
    assert read(v["LocalPath"], 0, 4096) == bytes(4096)


def test_stop_with_loop_attached(make_daemon, res):
    """--stop does not hang on a volume that a loop device holds open: it aborts the FUSE
    connection (the loop device then fails I/O), still flushes every volume, and the data
    written through the loop device is there after a restart."""
    d = make_daemon()
    v = d.create_volume(1)
    dev = res.losetup(v["LocalPath"])
    data = os.urandom(2 * MIB)
    subprocess.run(["dd", f"of={dev}", "bs=1M", "oflag=direct,seek_bytes", f"seek={7 * MIB}",
                    "status=none"], input=data, check=True)  # direct, never fsync'ed
    t0 = time.monotonic()
    stop_by_option(d)
    assert time.monotonic() - t0 < 30
    assert "still open" in d.log()
    p = run(["dd", f"if={dev}", "of=/dev/null", "bs=4k", "count=1", "iflag=direct"],
            check=False, timeout=60)
    assert p.returncode != 0
    res.detach(dev)
    d.start()
    assert "not closed cleanly" not in d.log()
    assert read(v["LocalPath"], 7 * MIB, len(data)) == data


def test_restart_after_kill9_serves_all(make_daemon):
    d = make_daemon()
    vols = [d.create_volume(n) for n in (1, 2, 1)]
    datas = {}
    for v in vols:
        datas[v["VolumeId"]] = os.urandom(MIB)
        fd = os.open(v["LocalPath"], os.O_RDWR)
        os.pwrite(fd, datas[v["VolumeId"]], MIB)
        os.fsync(fd)
        os.close(fd)
    before = sorted(d.ok("describe-volumes")["Volumes"], key=lambda x: x["VolumeId"])

    d.kill9()
    mnt = os.path.join(d.home, "mnt")
    assert is_mounted(mnt)  # stale; ebsimd must clear it itself
    # stat() is answered from cache for 1 s after the crash: see
    # (a restart within that second works too: test_volumes.py::test_restart_right_after_kill9)
    wait_stat_fails(mnt)
    d.start()
    assert "cleared a stale FUSE mount" in d.log()

    after = sorted(d.ok("describe-volumes")["Volumes"], key=lambda x: x["VolumeId"])
    assert after == before
    for v in vols:
        assert os.path.getsize(v["LocalPath"]) == v["Size"] * GIB
        assert read(v["LocalPath"], MIB, MIB) == datas[v["VolumeId"]]


# ---- refusing damaged state --------------------------------------------------------------

def test_damaged_catalog_refused(make_daemon):
    d = make_daemon()
    v = d.create_volume(1)
    write_nosync(v["LocalPath"], 0, os.urandom(MIB))
    d.stop()
    vols = os.path.join(d.home, "volumes")
    before = tree_state(vols)
    cat = os.path.join(d.home, "catalog.db")
    garbage = os.urandom(16384)
    with open(cat, "wb") as f:
        f.write(garbage)

    d.expect_errors()
    offset = len(d.log())
    p = run([EBSIMD, "--home", d.home, "--io-engine", d.engine], check=False)
    assert p.returncode != 0
    assert "ebsimd.log" in p.stderr
    log = log_tail(d, offset)
    assert "catalog" in log and "refusing to start" in log, log
    assert not is_mounted(os.path.join(d.home, "mnt"))
    assert not os.path.exists(os.path.join(d.home, "ebsimd.sock"))
    assert tree_state(vols) == before
    with open(cat, "rb") as f:
        assert f.read() == garbage  # nothing "repaired" behind the user's back


def test_damaged_volume_header_refused(make_daemon):
    d = make_daemon()
    keep = d.create_volume(1)
    bad = d.create_volume(1)
    for v in (keep, bad):
        write_nosync(v["LocalPath"], 0, os.urandom(MIB))
    d.stop()
    header = os.path.join(d.home, "volumes", bad["VolumeId"], "header")
    with open(header, "r+b") as f:
        b = bytearray(f.read())
        b[16] ^= 0x01  # inside the size field
        f.seek(0)
        f.write(b)
    vols = os.path.join(d.home, "volumes")
    before = tree_state(vols)

    d.expect_errors()
    offset = len(d.log())
    p = run([EBSIMD, "--home", d.home, "--io-engine", d.engine], check=False)
    assert p.returncode != 0
    log = log_tail(d, offset)
    assert bad["VolumeId"] in log, log
    assert "refusing to start" in log and "nothing was deleted" in log, log
    assert not is_mounted(os.path.join(d.home, "mnt"))
    assert tree_state(vols) == before


# ---- the sanitized daemon ------------------------------------------------------------------

ASAN_BUILD = os.path.join(ROOT, "build-asan")
needs_asan = pytest.mark.skipif(not os.path.exists(os.path.join(ASAN_BUILD, "ebsimd")),
                                reason="build-asan/ebsimd not built: run 'make asan'")


def asan_daemon(make_daemon, engine, detect_leaks):
    d = make_daemon(engine=engine, start=False, ebsimd=os.path.join(ASAN_BUILD, "ebsimd"),
                    ebsim=os.path.join(ASAN_BUILD, "ebsim"))
    env = dict(os.environ, ASAN_OPTIONS=f"detect_leaks={detect_leaks}:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return d.start(env=env), env


def exercise(d, env):
    """Create, write, read, grow and delete through the daemon, then stop it."""
    v = d.create_volume(1)
    data = os.urandom(3 * MIB)
    write_nosync(v["LocalPath"], MIB - 512, data)
    assert read(v["LocalPath"], MIB - 512, len(data)) == data
    d.ok("modify-volume", "--volume-id", v["VolumeId"], "--size", "2")
    e = d.create_volume(1, "--encrypted")
    write_nosync(e["LocalPath"], 4096, data)
    assert read(e["LocalPath"], 4096, len(data)) == data
    r = d.cli("describe-volumes", "--volume-ids", "vol-../../x")
    assert r.error_code() == "InvalidVolumeID.Malformed"
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    d.stop()
    d.start(env=env)
    assert read(e["LocalPath"], 4096, len(data)) == data
    d.stop()


@needs_asan
@pytest.mark.parametrize("engine", ["io_uring", "libaio", "psync"])
def test_asan_daemon_no_errors(make_daemon, engine):
    """The ASan+UBSan daemon through a volume's life and a fio verify: no memory error and
    no undefined behaviour (leaks are the next test's business)."""
    d, env = asan_daemon(make_daemon, engine, detect_leaks=0)
    v = d.create_volume(1)
    p = run(["fio", "--name=v", f"--filename={v['LocalPath']}", "--direct=1",
             "--ioengine=libaio", "--iodepth=16", "--rw=randwrite", "--bs=4k", "--size=32M",
             "--verify=crc32c", "--verify_fatal=1", "--do_verify=1"], check=False, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    exercise(d, env)
    log = d.log()
    assert "ERROR: AddressSanitizer" not in log and "runtime error" not in log, log[-4000:]
    assert log.count("info: stopped") == 2


@needs_asan
def test_asan_daemon_no_leaks(make_daemon):
    d, env = asan_daemon(make_daemon, "io_uring", detect_leaks=1)
    exercise(d, env)
    log = d.log()
    assert "LeakSanitizer" not in log, log[-4000:]

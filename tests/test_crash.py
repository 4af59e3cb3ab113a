# SPDX-License-Identifier: MIT
"""Crash consistency: kill ebsimd (SIGKILL at random times, or at named crash points of the
CRASH build) under ext4 + a record writer, under create-volume, and under fio on the raw
loop device; after each restart nothing acknowledged may be lost and e2fsck must be clean.
The lying-flush build must be caught. See tests/crash/README.md and tests/crash/harness.py.

Scale: `make test` runs 40 crash points in total (20 random, 9 writer points, 6 catalog
points, 5 fio); EBSIM_STRESS=1 (`make stress`) runs 1,050. EBSIM_CRASH_SEED=<n> replays a
run's choices; EBSIM_CRASH_ITERS=<n> overrides the random-kill and fio iteration counts.
"""
import os
import random
import sys

import pytest

from conftest import STRESS, Daemon, _teardown_daemon

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash"))
import harness as H  # noqa: E402

MASTER = H.master_seed()
ITERS = int(os.environ["EBSIM_CRASH_ITERS"]) if os.environ.get("EBSIM_CRASH_ITERS") else None

RANDOM_ITERS = ITERS or (700 if STRESS else 20)
FIO_ITERS = ITERS or (150 if STRESS else 5)
POINT_ROUNDS = 40 if STRESS else 3  # per writer crash point
CATALOG_ROUNDS = 40 if STRESS else 3  # per catalog crash point
LYING_MAX_ITERS = 20

# EBSIM_CRASH_AFTER ranges per writer crash point: early (may hit while mounting), middle,
# late; rounds cycle through them.
AFTER_RANGES = {
    "after-data-write": [(1, 8), (20, 200), (300, 1500)],
    "after-data-fsync": [(1, 3), (4, 40), (50, 250)],
    "after-map-persist": [(1, 3), (4, 40), (50, 250)],
}
CATALOG_POINTS = ["in-catalog-txn", "before-reply"]


def replay_cmd(test):
    stress = "EBSIM_STRESS=1 " if STRESS else ""
    return f"{stress}make test PYTEST_ARGS='-k {test}'"


class Summary:
    def __init__(self):
        self.lines = []
        self.crash_points = 0
        self.checked = 0
        self.lost = 0
        self.fsck = 0
        self.checks = 0
        self.check_corruptions = 0


@pytest.fixture(scope="module")
def summary(request):
    s = Summary()
    yield s
    capman = request.config.pluginmanager.getplugin("capturemanager")
    text = (f"\ncrash suite (seed {MASTER}, {'stress' if STRESS else 'test'} scale), honest "
            f"variants: crash points: {s.crash_points}, acknowledged records checked: "
            f"{s.checked}, lost: {s.lost}, fsck errors: {s.fsck}, ebsim check runs: "
            f"{s.checks}, corruptions: {s.check_corruptions}\n")
    if capman:
        with capman.global_and_fixture_disabled():
            sys.stdout.write(text)
    else:
        print(text)


@pytest.fixture
def crash_daemon(home, res, tmp_path):
    """Factory of daemons from a build variant on the test's home; teardown: loops and
    mounts first, then each daemon by PID. The variant's binaries are copied first, so a
    rebuild of the shared tree during a long run can neither break a restart nor swap the
    binary between a crash and its recovery."""
    made = []

    def factory(variant, start=True):
        bins = H.snapshot_binaries(variant, str(tmp_path))
        if not bins:
            pytest.skip(f"{H.BUILDS[variant]}/ebsimd is not built: run "
                        f"'make {variant.upper()}=1 all' (make test does)")
        d = Daemon(home, ebsimd=bins[0], ebsim=bins[1])
        made.append(d)
        if start:
            d.start(env=H.clean_env())
        return d

    factory.made = made
    yield factory
    res.cleanup()
    for d in made:
        _teardown_daemon(d)
    for i, d in enumerate(made):  # keep the daemon logs: the home is removed next
        with open(os.path.join(tmp_path, f"ebsimd-{i}.log"), "w") as f:
            f.write(d.log())


@pytest.fixture
def ctx(request, tmp_path, capsys, summary):
    """Per-test seed, tally, log; prints the closing figures and adds honest ones to the
    module summary."""
    name = request.node.name
    seed = H.sub_seed(MASTER, name)
    tally = H.Tally(name)
    log = H.Log(os.path.join(tmp_path, "crash.log"))
    with capsys.disabled():
        print(f"\n[{name}] crash seed {MASTER} (replay: EBSIM_CRASH_SEED={MASTER} "
              f"{replay_cmd(name)}); log {tmp_path}/crash.log")
    c = type("Ctx", (), dict(name=name, seed=seed, tally=tally, log=log, workdir=str(tmp_path),
                             replay=replay_cmd(name)))
    yield c
    log.close()
    with capsys.disabled():
        print(tally.line())
    if not name.startswith("test_crash_lying"):
        summary.crash_points += tally.crash_points
        summary.checked += tally.records_checked
        summary.lost += tally.lost
        summary.fsck += tally.fsck_errors
        summary.checks += tally.checks
        summary.check_corruptions += tally.check_corruptions


def guarded(c, daemons, fn, *args, **kw):
    """Run a harness loop; a CrashFailure fails the test with the tails of the harness
    log and of the daemon's log."""
    try:
        return fn(*args, **kw)
    except H.CrashFailure as e:
        msg = f"{e}\n--- last harness log lines ---\n" + "\n".join(c.log.tail)
        for d in daemons.made:
            msg += f"\n--- last lines of {d.home}/ebsimd.log ---\n"
            msg += "\n".join(d.log().splitlines()[-40:])
    pytest.fail(msg, pytrace=False)


def assert_clean_logs(crash_daemon):
    errs = [e for d in crash_daemon.made for e in H.unexpected_log_errors(d)]
    assert not errs, "unexpected errors in ebsimd.log:\n" + "\n".join(errs[:20])


def test_crash_random_kill(crash_daemon, res, ctx):
    """Random-time SIGKILL of ebsimd (normal build) while the writer appends to ext4."""
    d = crash_daemon("normal")
    rig = H.FsRig(d, res, ctx.workdir, ctx.seed, ctx.tally, ctx.log,
                  epoch_len=25 if STRESS else 7)
    guarded(ctx, crash_daemon, H.random_kill_loop, rig, RANDOM_ITERS, ctx.name, MASTER,
            ctx.replay, snapshot_every=2)
    n, j = H.store_check(d, ctx.tally, "the end")
    assert n == 0, j
    assert ctx.tally.crash_points == RANDOM_ITERS
    assert ctx.tally.snapshots > 0 and ctx.tally.check_corruptions == 0
    assert ctx.tally.lost == 0 and ctx.tally.fsck_errors == 0
    assert ctx.tally.records_checked > 0, "the writer never got a batch acknowledged"
    assert_clean_logs(crash_daemon)


def test_crash_points_writer(crash_daemon, res, ctx):
    """Named crash points of the CRASH build on the flush path, under the writer."""
    d = crash_daemon("crash")
    rng = random.Random(ctx.seed)
    plan = []
    for rnd in range(POINT_ROUNDS):
        for point, ranges in AFTER_RANGES.items():
            lo, hi = ranges[rnd % len(ranges)]
            plan.append((point, rng.randint(lo, hi)))
    rig = H.FsRig(d, res, ctx.workdir, ctx.seed, ctx.tally, ctx.log, epoch_len=30)
    guarded(ctx, crash_daemon, H.crash_point_loop, rig, plan, ctx.name, MASTER, ctx.replay)
    assert ctx.tally.crash_points == len(plan)
    assert ctx.tally.lost == 0 and ctx.tally.fsck_errors == 0
    assert_clean_logs(crash_daemon)


def test_crash_points_catalog(crash_daemon, ctx):
    """in-catalog-txn and before-reply during create-volume: nothing half-made."""
    d = crash_daemon("crash", start=False)
    rng = random.Random(ctx.seed)
    plan = [(p, rng.randint(1, 4)) for _ in range(CATALOG_ROUNDS) for p in CATALOG_POINTS]
    vols = guarded(ctx, crash_daemon, H.catalog_loop, d, plan, ctx.tally, ctx.log, MASTER,
                   ctx.replay, ctx.name)
    assert ctx.tally.crash_points == len(plan)
    ctx.log(f"{len(vols)} volumes exist at the end")
    assert_clean_logs(crash_daemon)


def test_crash_fio_raw(crash_daemon, res, ctx):
    """fio verify_state_save/verify_only on the raw loop device across SIGKILL."""
    d = crash_daemon("normal")
    guarded(ctx, crash_daemon, H.fio_loop, d, res, ctx.workdir, FIO_ITERS, ctx.seed,
            ctx.tally, ctx.log, MASTER, ctx.replay, ctx.name)
    assert ctx.tally.crash_points == FIO_ITERS
    assert ctx.tally.blocks_verified > 0
    assert_clean_logs(crash_daemon)


def test_crash_lying_flush_is_caught(crash_daemon, res, ctx):
    """The LYING build acknowledges flushes without syncing: the same random-kill harness
    must catch a lost acknowledged record (proof the harness can fail). Each epoch's mkfs
    is done by an honest daemon of the same `make variants` (the CRASH build, no crash
    variables): the lying one never persists its map, so its first crash would otherwise
    wipe the whole volume and the check would only prove that mount fails."""
    d = crash_daemon("lying")
    rig = H.FsRig(d, res, ctx.workdir, ctx.seed, ctx.tally, ctx.log, epoch_len=LYING_MAX_ITERS,
                  prep=(H.snapshot_binaries("crash", ctx.workdir)
                        or H.snapshot_binaries("normal", ctx.workdir)))
    detections = H.random_kill_loop(rig, LYING_MAX_ITERS, ctx.name, MASTER, ctx.replay,
                                    stop_on_detect=True)
    ctx.log(f"caught after {ctx.tally.crash_points} crash(es): {detections}")
    with_records = ctx.tally.lost > 0
    assert detections and with_records, (
        f"the lying flush went undetected in {ctx.tally.crash_points} crashes "
        f"({ctx.tally.records_checked} acknowledged records checked)")


def _direct_write(dev, off, data):
    """One O_DIRECT write to a loop device, without any flush."""
    import mmap
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, off) == len(data)
    finally:
        os.close(fd)
        buf.close()


def test_crash_unflushed_write_into_discarded_chunk(crash_daemon, res, ctx):
    """Known bug (a): an unflushed write into a chunk whose flushed state is ZERO reached
    the data file; the unclean open punched only ABSENT chunks, so the bytes stayed under a
    map that says ZERO. The volume read zeros there, until a later partial write made the
    chunk PRESENT and the never-acknowledged bytes around it came back (in reads and in
    snapshots). After recovery every chunk that is not PRESENT must be a hole."""
    from test_snapshots import sha_range, wait_completed
    chunk = 64 << 10
    rng = random.Random(ctx.seed)
    d = crash_daemon("normal")
    v = d.create_volume(1)
    path = v["LocalPath"]
    vdir = os.path.join(d.home, "volumes", v["VolumeId"])
    dev = res.losetup(path)
    acked = rng.randbytes(chunk)
    _direct_write(dev, 16 * chunk, acked)  # chunk 16: written and flushed
    H.run(["blkdiscard", "-o", "0", "-l", str(8 * chunk), dev])  # chunks 0-7: ZERO
    fd = os.open(dev, os.O_RDONLY)
    os.fsync(fd)  # flush: the ZERO states and chunk 16 are durable
    os.close(fd)
    with open(os.path.join(vdir, "map"), "rb") as f:
        m = f.read(17)
    assert [b & 3 for b in m[:8]] == [2] * 8 and m[16] & 3 == 1, m.hex()
    lost = {0: rng.randbytes(chunk), 5: rng.randbytes(chunk), 24: rng.randbytes(chunk)}
    for c, data in lost.items():  # into ZERO (0, 5) and ABSENT (24) chunks, never flushed
        _direct_write(dev, c * chunk, data)
    with open(os.path.join(vdir, "data"), "rb") as f:
        assert any(f.read(chunk)), "the unflushed write did not reach the data file"
    H.kill9(d)
    res.detach(dev)
    assert H.loop_gone(dev)
    H.start_daemon(d, H.clean_env(), ctx.tally)
    ctx.tally.crash_points += 1
    assert "recovering" in d.log()

    with open(os.path.join(vdir, "map"), "rb") as f:
        m = f.read(25)
    with open(os.path.join(vdir, "data"), "rb") as f:
        for c in lost:
            st = m[c] & 3
            f.seek(c * chunk)
            raw = f.read(chunk)
            assert st != 1, f"chunk {c}: an unflushed write became PRESENT"
            assert not any(raw), f"chunk {c}: map state {st} but the data file holds bytes"
    zero = bytes(chunk)
    with open(path, "r+b", buffering=0) as f:
        assert f.read(chunk) == zero
        f.seek(16 * chunk)
        assert f.read(chunk) == acked, "an acknowledged write was lost"
        # a partial write makes chunks 0 and 24 PRESENT: the rest of them must stay zeros
        for c in (0, 24):
            f.seek(c * chunk)
            f.write(b"A" * 4096)
        os.fsync(f.fileno())
        for c in (0, 24):
            f.seek(c * chunk)
            assert f.read(chunk) == b"A" * 4096 + zero[4096:], \
                f"chunk {c}: never-acknowledged bytes came back after a partial write"
    sha = sha_range(path, 0, 32 * chunk)
    s = wait_completed(d, d.ok("create-snapshot", "--volume-id", v["VolumeId"])["SnapshotId"])
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(r["LocalPath"], 0, 32 * chunk) == sha, "snapshot differs from reads"
    n, j = H.store_check(d, ctx.tally, "after the restore")
    assert n == 0 and j["ObjectsChecked"] > 0, j
    assert_clean_logs(crash_daemon)


def test_crash_unflushed_discard_of_encrypted_chunk(crash_daemon, res, ctx):
    """An unflushed whole-chunk discard of a PRESENT chunk of an encrypted volume punched
    the data file, but the flushed map still says PRESENT: after the crash the chunk must
    read as its old bytes or as zeros (what the discard may leave), never as the
    decryption of a hole (pseudo-random bytes nobody wrote)."""
    chunk = 64 << 10
    rng = random.Random(ctx.seed)
    d = crash_daemon("normal")
    v = d.create_volume(1, "--encrypted")
    path = v["LocalPath"]
    dev = res.losetup(path)
    old = rng.randbytes(4 * chunk)
    _direct_write(dev, 0, old)  # chunks 0-3, flushed below
    fd = os.open(dev, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    H.run(["blkdiscard", "-o", str(chunk), "-l", str(2 * chunk), dev])  # chunks 1, 2; no flush
    H.kill9(d)
    res.detach(dev)
    assert H.loop_gone(dev)
    H.start_daemon(d, H.clean_env(), ctx.tally)
    ctx.tally.crash_points += 1
    with open(path, "rb") as f:
        got = f.read(4 * chunk)
    assert got[:chunk] == old[:chunk] and got[3 * chunk:] == old[3 * chunk:], \
        "a flushed chunk next to the discard changed"
    for c in (1, 2):
        piece = got[c * chunk:(c + 1) * chunk]
        assert piece in (old[c * chunk:(c + 1) * chunk], bytes(chunk)), \
            f"chunk {c}: neither its old bytes nor zeros after an unflushed discard"
    assert_clean_logs(crash_daemon)

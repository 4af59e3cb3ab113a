# SPDX-License-Identifier: MIT
"""Crash-consistency harness: drives ebsimd, a loop device, ext4 and a record writer (or
fio) through crash / restart / fsck / verify cycles and keeps the figures.

Design notes
------------
One crash iteration on a file system (FsRig):
  1. writer.py appends checksummed records to NFILES files on ext4 (ext4 on /dev/loopN,
     --direct-io=on, over HOME/mnt/vol-...), acknowledging each fdatasync'd batch in an
     ack log in the test's own temp dir (never on the volume);
  2. ebsimd dies: SIGKILL at a seeded random time (random_kill_loop) or at a named crash
     point of the CRASH build (EBSIM_CRASH_AT / EBSIM_CRASH_AFTER in its environment);
  3. the writer is SIGKILLed, the dead ext4 lazily unmounted, the dead loop detached (and
     waited for), ebsimd restarted from the same build with no crash variables, the volume
     re-attached; mount (journal replay), umount, `e2fsck -fn` must exit 0, mount again;
  4. every acknowledged record must read back exactly (records after the last ACK may be
     missing or torn); files are then truncated to their acknowledged length so the next
     iteration appends to the same, accumulated file system. Every EPOCH_LEN iterations
     the file system is made anew (mkfs) and ebsimd restarted cleanly, cycling I/O engines.

Seeds: one master seed per run (EBSIM_CRASH_SEED replays it), from which every test,
epoch and iteration derives its own; every failure names the master seed, test and
iteration. Kill timing is wall-clock, so a replay repeats the same choices (kill delays,
batch sizes, payloads, crash-point counts), not necessarily the same interleaving.

Cleanup: loops and mounts go through conftest's Resources; daemons are stopped or killed
by PID only; HOME/mnt is never unmounted here (a restarted ebsimd clears a dead FUSE
mount itself; the fixtures unmount it at final teardown).
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from conftest import ROOT, run, is_mounted  # tests/ is on sys.path under pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import writer as rec  # noqa: E402  (record format shared with the writer process)

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "writer.py")
PYTHON = "/usr/bin/python3"
BUILDS = {"normal": "build", "crash": "build-crash", "lying": "build-lying"}
ENGINES = ("io_uring", "libaio", "psync")
GIB = 1 << 30


def build_binaries(variant):
    """(ebsimd, ebsim) of a build variant, or None when it is not built."""
    b = os.path.join(ROOT, BUILDS[variant])
    if variant == "normal":
        b = os.environ.get("EBSIM_BUILD", b)
    ebsimd, ebsim = os.path.join(b, "ebsimd"), os.path.join(b, "ebsim")
    if os.access(ebsimd, os.X_OK) and os.access(ebsim, os.X_OK):
        return ebsimd, ebsim
    return None


def snapshot_binaries(variant, workdir):
    """Private copies of a variant's (ebsimd, ebsim) under workdir, or None if not built."""
    bins = build_binaries(variant)
    if not bins:
        return None
    dst = os.path.join(workdir, "bin-" + variant)
    os.makedirs(dst, exist_ok=True)
    out = []
    for b in bins:
        t = os.path.join(dst, os.path.basename(b))
        if not os.path.exists(t):
            shutil.copy2(b, t + ".tmp")
            os.rename(t + ".tmp", t)
        out.append(t)
    return tuple(out)


def clean_env():
    """This process's environment without any crash-point variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EBSIM_CRASH_")}


def crash_env(point, after):
    return dict(clean_env(), EBSIM_CRASH_AT=point, EBSIM_CRASH_AFTER=str(after))


def master_seed():
    s = os.environ.get("EBSIM_CRASH_SEED")
    return int(s, 0) if s else random.SystemRandom().randrange(1 << 32)


def sub_seed(*parts):
    """A 63-bit seed derived from the master seed and names/numbers."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def pid_running(pid):
    """True while any thread of pid is alive. A zombie leader is not enough: ebsimd's
    parent is PID 1, which may reap late, and while another thread is still exiting the
    process keeps its files, so its home lock and /dev/fuse are still held."""
    try:
        os.kill(pid, 0)
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
    except (ProcessLookupError, FileNotFoundError):
        pass
    return False


def wait_pid_gone(pid, timeout=30.0):
    end = time.monotonic() + timeout
    while pid and pid_running(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def kill9(d):
    """SIGKILL d and wait until every one of its threads is gone."""
    pid = d.pid
    d.kill9()
    if not wait_pid_gone(pid):
        raise CrashFailure(f"ebsimd {pid} still has live threads 30 s after SIGKILL")


def wait_daemon_dead(d, timeout):
    """Wait for d (killed by a crash point) to be gone; True if it is."""
    if not wait_pid_gone(d.pid, timeout):
        return False
    d.pid = None
    return True


def loop_gone(dev, timeout=10.0):
    """Wait until a detached loop device has really let go of its backing file (a
    lazily unmounted ext4 may hold it a little longer; losetup -d then only sets
    autoclear)."""
    f = f"/sys/block/{os.path.basename(dev)}/loop/backing_file"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(f):
            return True
        time.sleep(0.02)
    return False


class CrashFailure(AssertionError):
    pass


STALE_BUSY = "is mounted and in use"
LOCK_BUSY = "is already serving"


def start_daemon(d, env, tally, timeout=5.0):
    """Start ebsimd; after a crash, retry while it refuses because the dead FUSE mount
    still answers stat() from the kernel's attribute cache (volfs_clear_stale takes a
    successful stat for a live server; the cache lasts ATTR_TIMEOUT, 1 s). Each refusal
    is counted in tally.restart_refusals and reported."""
    end = time.monotonic() + timeout
    while True:
        try:
            return d.start(env=env)
        except AssertionError as e:
            if time.monotonic() > end:
                raise
            if STALE_BUSY in str(e):
                tally.restart_refusals += 1
            elif LOCK_BUSY not in str(e):  # (a dead daemon's last threads still exiting)
                raise
            time.sleep(0.2)


class Tally:
    """The closing figures of one test."""

    def __init__(self, name):
        self.name = name
        self.crash_points = 0
        self.records_checked = 0  # acknowledged records read back and compared, summed
        self.lost = 0  # acknowledged records missing or wrong
        self.fsck_errors = 0
        self.unmountable = 0
        self.blocks_verified = 0  # fio blocks verified
        self.restart_refusals = 0  # restarts refused: "mounted and in use" (dead FUSE)
        self.snapshots = 0  # snapshots started between crashes (a kill may interrupt one)
        self.checks = 0  # `ebsim check` runs
        self.check_corruptions = 0  # Corrupt + Missing + BadManifests entries they found
        self.check_objects = 0  # objects they read back and verified
        self.check_leaked = 0  # leaked objects they saw (an interrupted snapshot's; harmless)
        self.by_point = {}
        self.t0 = time.monotonic()

    def line(self):
        s = (f"[{self.name}] crash points: {self.crash_points}, acknowledged records "
             f"checked: {self.records_checked}, lost: {self.lost}, fsck errors: "
             f"{self.fsck_errors}")
        if self.unmountable:
            s += f", unmountable: {self.unmountable}"
        if self.restart_refusals:
            s += f", restarts refused while the dead mount looked alive: {self.restart_refusals}"
        if self.checks:
            s += (f", snapshots started: {self.snapshots}, ebsim check runs: {self.checks} "
                  f"({self.check_objects} objects verified), corruptions: "
                  f"{self.check_corruptions}, leaked objects seen: {self.check_leaked}")
        if self.blocks_verified:
            s += f", fio blocks verified: {self.blocks_verified}"
        if self.by_point:
            s += ", per point: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_point.items()))
        return s + f", {time.monotonic() - self.t0:.1f} s"


class Log:
    """Progress lines to a file in the work dir, plus a short in-memory tail."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.tail = []

    def __call__(self, msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        self.f.write(line + "\n")
        self.tail = (self.tail + [line])[-40:]

    def close(self):
        self.f.close()


KNOWN_LOG_ERRORS = (STALE_BUSY,)  # counted as restart_refusals


def unexpected_log_errors(d):
    """ " error: " lines of d's log other than the known restart refusals."""
    return [l for l in d.log().splitlines()
            if " error: " in l and not any(k in l for k in KNOWN_LOG_ERRORS)]


class Result:
    """Outcome of one recovery + verification."""

    def __init__(self):
        self.fsck_rc = None
        self.fsck_out = ""
        self.mounted = False
        self.checked = 0
        self.lost = 0
        self.survivors = 0  # unacknowledged records that survived (allowed either way)
        self.problems = []

    def ok(self):
        return self.mounted and self.fsck_rc == 0 and not self.lost and not self.problems


class FsRig:
    """One volume with ext4, the record writer and the ack log, across crashes."""

    def __init__(self, d, res, workdir, seed, tally, log, nfiles=4, vol_gib=1,
                 epoch_len=25, max_delay=0.8, prep=None):
        self.d, self.res, self.workdir = d, res, workdir
        self.seed, self.tally, self.log = seed, tally, log
        self.nfiles, self.vol_gib, self.epoch_len, self.max_delay = (
            nfiles, vol_gib, epoch_len, max_delay)
        self.mnt = os.path.join(d.home, "fs")
        self.datadir = os.path.join(self.mnt, "data")
        self.vol = None
        self.dev = None
        self.epoch = 0
        self.payload_seed = None
        self.acklog = None
        self.next = []
        self.writer = None
        self.writer_log = None
        self.engine_i = 0
        # (ebsimd, ebsim) of another build that makes each epoch's fresh file system, or
        # None: the lying test prepares with the honest build so that its crashes lose only
        # what the lying daemon acknowledged, not the mkfs itself
        self.prep = prep
        self.main_bins = (d.ebsimd, d.ebsim)

    # ---- plumbing ---------------------------------------------------------------------
    def _path(self):
        return os.path.join(self.d.home, "mnt", self.vol)

    def attach(self):
        self.dev = self.res.losetup(self._path())
        return self.dev

    def mount(self):
        self.res.mount(self.dev, self.mnt)
        self.res.assert_mounted(self.mnt)

    def mounted(self):
        return ("mount", self.mnt) in self.res.items

    def create_volume(self):
        self.vol = self.d.create_volume(self.vol_gib)["VolumeId"]
        self.attach()

    def new_epoch(self):
        """A fresh ext4 (mkfs), empty files, a new ack log; then a clean daemon restart
        (with the next I/O engine) so each epoch starts from a cleanly closed volume."""
        if self.prep:
            self.d.ebsimd, self.d.ebsim = self.prep
            self.cycle(clean_env(), mount=False)
        if self.mounted():
            self.res.umount(self.mnt)
        # mkfs's discard leaves every chunk ZERO; until recovery punched ZERO chunks too
        # (known bug (a), fixed) such an epoch could not notice a map that was never
        # persisted. Two epochs in three skip the discard (new ext4 blocks land in ABSENT
        # chunks); the third keeps it, to crash over the discard/ZERO paths too.
        discard = (self.epoch + 1) % 3 == 0
        run(["mkfs.ext4", "-q", "-F"] + ([] if discard else ["-E", "nodiscard"]) + [self.dev])
        self.mount()
        os.makedirs(self.datadir)
        for fid in range(self.nfiles):
            fd = os.open(os.path.join(self.datadir, rec.file_name(fid)),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.fsync(fd)
            os.close(fd)
        for p in (self.datadir, self.mnt):
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
        self.epoch += 1
        self.payload_seed = sub_seed(self.seed, "epoch", self.epoch)
        self.acklog = os.path.join(self.workdir, f"acks-{self.epoch}.log")
        fd = os.open(self.acklog, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.fsync(fd)
        os.close(fd)
        self.next = [0] * self.nfiles
        self.engine_i += 1
        self.d.engine = ENGINES[self.engine_i % len(ENGINES)]
        self.d.ebsimd, self.d.ebsim = self.main_bins
        self.cycle(clean_env())
        self.log(f"epoch {self.epoch}: fresh ext4 ({'with' if discard else 'no'} mkfs "
                 f"discard) on {self.vol}, engine {self.d.engine}, "
                 f"payload seed {self.payload_seed}")

    def cycle(self, env, mount=True):
        """Clean stop and restart of ebsimd (env for the new one), re-attach, mount. With
        crash variables the new daemon may die during the mount: then the mount fails and
        the caller goes on to recovery."""
        if self.mounted():
            self.res.umount(self.mnt)
        self.res.detach(self.dev)
        loop_gone(self.dev)
        self.d.stop()
        start_daemon(self.d, env, self.tally)
        self.attach()
        if not mount:
            return
        try:
            self.mount()
        except AssertionError:
            # a crash point that fires during the mount fails it; the daemon may still be
            # exiting when mount returns
            if not wait_daemon_dead(self.d, 5):
                raise
            self.log("daemon died during mount (crash point hit early)")

    def start_writer(self, wseed):
        self.res.assert_mounted(self.mnt)
        self.writer_log = os.path.join(self.workdir, "writer.log")
        with open(self.writer_log, "a") as err:
            err.write(f"--- epoch {self.epoch} wseed {wseed} next {self.next}\n")
            err.flush()
            self.writer = subprocess.Popen(
                [PYTHON, WRITER, "--mnt", self.mnt, "--dir", self.datadir,
                 "--ack", self.acklog, "--seed", str(self.payload_seed),
                 "--epoch", str(self.epoch), "--next", ",".join(map(str, self.next)),
                 "--wseed", str(wseed)],
                stdout=err, stderr=err)

    def writer_tail(self):
        try:
            with open(self.writer_log) as f:
                return f.read().strip().splitlines()[-1]
        except (OSError, IndexError, TypeError):
            return "?"

    def kill_writer(self):
        if self.writer is None:
            return
        if self.writer.poll() is None:
            self.writer.send_signal(signal.SIGKILL)
        try:
            self.writer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise CrashFailure(f"writer {self.writer.pid} survived SIGKILL for 60 s "
                               "(stuck in uninterruptible I/O on the dead volume?)")
        self.writer = None

    def after_crash(self):
        """Step 3's first half: writer killed, dead ext4 and loop removed."""
        self.kill_writer()
        if self.mounted():
            self.res.umount(self.mnt, lazy=True)
        self.res.detach(self.dev)
        if not loop_gone(self.dev):
            self.log(f"{self.dev} still bound 10 s after detach (autoclear pending)")
        self.dev = None

    def recover(self):
        """Step 3's second half and step 4: restart, replay, fsck, verify."""
        r = Result()
        start_daemon(self.d, clean_env(), self.tally)
        self.attach()
        try:
            self.mount()
        except AssertionError as e:
            r.problems.append(f"mount after restart failed: {e}")
            r.lost = self._acked_total()
            r.fsck_rc = run(["e2fsck", "-fn", self.dev], check=False).returncode
            return r
        self.res.umount(self.mnt)
        p = run(["e2fsck", "-fn", self.dev], check=False)
        r.fsck_rc, r.fsck_out = p.returncode, (p.stdout + p.stderr)[-3000:]
        self.mount()
        r.mounted = True
        self.verify(r)
        return r

    def _acked_total(self):
        return sum(s + 1 for s in rec.read_acks(self.acklog).values())

    def verify(self, r):
        """Every acknowledged record must read back exactly; then truncate every file to
        its acknowledged length (dropping allowed torn/unacknowledged tails)."""
        self.res.assert_mounted(self.mnt)
        acks = rec.read_acks(self.acklog)
        for fid in range(self.nfiles):
            last = acks.get(fid, -1)
            path = os.path.join(self.datadir, rec.file_name(fid))
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                r.problems.append(f"{rec.file_name(fid)}: cannot read: {e}")
                r.lost += last + 1
                continue
            bad = []
            for seq in range(last + 1):
                why = rec.check_record(data[seq * rec.REC:(seq + 1) * rec.REC],
                                       self.payload_seed, self.epoch, fid, seq)
                r.checked += 1
                if why:
                    r.lost += 1
                    bad.append((seq, why))
            if bad:
                r.problems.append(
                    f"{rec.file_name(fid)}: {len(bad)} of {last + 1} acknowledged records "
                    f"lost or wrong (file is {len(data)} bytes); first: "
                    + "; ".join(f"seq {s}: {w}" for s, w in bad[:5]))
            seq = last + 1
            while not rec.check_record(data[seq * rec.REC:(seq + 1) * rec.REC],
                                       self.payload_seed, self.epoch, fid, seq):
                r.survivors += 1
                seq += 1
            if len(data) != (last + 1) * rec.REC:
                fd = os.open(path, os.O_WRONLY)
                os.ftruncate(fd, (last + 1) * rec.REC)
                os.fsync(fd)
                os.close(fd)
            self.next[fid] = last + 1

    def record(self, r, where):
        """Add r to the tally; raise CrashFailure (with the replay line) if it failed."""
        self.tally.records_checked += r.checked
        self.tally.lost += r.lost
        if r.fsck_rc != 0:
            self.tally.fsck_errors += 1
        if not r.mounted:
            self.tally.unmountable += 1
        self.log(f"{where}: fsck rc {r.fsck_rc}, acknowledged records checked {r.checked}, "
                 f"lost {r.lost}, unacknowledged survivors {r.survivors}")
        if r.ok():
            return
        msg = [f"{where}: crash consistency violated"]
        if r.fsck_rc != 0:
            msg.append(f"e2fsck -fn exited {r.fsck_rc}:\n{r.fsck_out}")
        msg += r.problems
        raise CrashFailure("\n".join(msg))

    def daemon_log_since(self, offset):
        log = self.d.log()
        return log[offset:], len(log)


def store_check(d, tally, where):
    """`ebsim check` of d's snapshot stores: every Corrupt, Missing or BadManifests entry
    counts in tally.check_corruptions (leaked objects of a snapshot a kill interrupted are
    not corruption). Raises when check cannot run."""
    end = time.monotonic() + 120
    while True:
        r = d.cli("check")  # 0 clean, 2 corrupt, 3 leaks; IncorrectState while a job runs
        if r.rc == 254 and "IncorrectState" in r.err and time.monotonic() < end:
            time.sleep(0.5)
            continue
        break
    if r.rc not in (0, 2, 3) or not r.json:
        raise CrashFailure(f"{where}: ebsim check -> {r.rc}: {r.err}")
    j = r.json
    tally.check_leaked += j.get("LeakedCount", 0)
    n = len(j["Corrupt"]) + len(j["Missing"]) + len(j["BadManifests"])
    tally.checks += 1
    tally.check_objects += j["ObjectsChecked"]
    tally.check_corruptions += n
    return n, j


def random_kill_loop(rig, iters, label, master, replay, stop_on_detect=False,
                     snapshot_every=0):
    """Random-time SIGKILL of ebsimd under the writer, `iters` times. Returns the list of
    failed iterations' messages when stop_on_detect (the lying build), else raises on the
    first failure. With snapshot_every=n, every n-th recovered iteration starts a snapshot
    of the volume (not waited for: the next kill may interrupt its copy) and `ebsim check`
    verifies the stores; a corruption it finds fails the run."""
    d, log, tally = rig.d, rig.log, rig.tally
    detections = []
    rig.create_volume()
    for i in range(iters):
        if i % rig.epoch_len == 0:
            rig.new_epoch()
        rng = random.Random(sub_seed(rig.seed, "iter", i))
        delay = rng.uniform(0.02, rig.max_delay)
        where = (f"{label} iteration {i} (epoch {rig.epoch}, engine {d.engine}, kill after "
                 f"{delay:.3f} s; replay: EBSIM_CRASH_SEED={master} {replay})")
        rig.start_writer(sub_seed(rig.seed, "writer", i))
        time.sleep(delay)
        if rig.writer.poll() is not None:
            raise CrashFailure(f"{where}: the writer stopped before the kill (exit "
                               f"{rig.writer.returncode}: {rig.writer_tail()})")
        kill9(d)
        tally.crash_points += 1
        rig.after_crash()
        r = rig.recover()
        try:
            rig.record(r, where)
        except CrashFailure as e:
            if not stop_on_detect:
                raise
            detections.append(str(e))
            break
        if snapshot_every and i % snapshot_every == 0:
            n, j = store_check(d, tally, where)
            if n:
                raise CrashFailure(f"{where}: ebsim check found corruption: {j}")
            s = d.cli("create-snapshot", "--volume-id", rig.vol)
            if s.rc != 0:
                raise CrashFailure(f"{where}: create-snapshot -> {s.rc}: {s.err}")
            tally.snapshots += 1
    return detections


def crash_point_loop(rig, plan, label, master, replay):
    """Named crash points under the writer: for each (point, after) in plan, restart
    ebsimd with the crash variables, run the writer until the point kills it, recover,
    verify."""
    d, log, tally = rig.d, rig.log, rig.tally
    rig.create_volume()
    for i, (point, after) in enumerate(plan):
        if i % rig.epoch_len == 0:
            rig.new_epoch()
        where = (f"{label} iteration {i} ({point} after {after}, epoch {rig.epoch}, engine "
                 f"{d.engine}; replay: EBSIM_CRASH_SEED={master} {replay})")
        _, off = rig.daemon_log_since(0)
        rig.cycle(crash_env(point, after))
        if rig.mounted():
            rig.start_writer(sub_seed(rig.seed, "writer", i))
        end = time.monotonic() + 60
        while not wait_daemon_dead(d, 0.2):
            if rig.writer and rig.writer.poll() is not None and not wait_daemon_dead(d, 3):
                raise CrashFailure(
                    f"{where}: the writer stopped (exit {rig.writer.returncode}: "
                    f"{rig.writer_tail()}) while ebsimd was alive and the crash point "
                    f"not reached")
            if time.monotonic() > end:
                raise CrashFailure(f"{where}: crash point not reached within 60 s")
        new, _ = rig.daemon_log_since(off)
        if f"crash point {point} reached" not in new:
            raise CrashFailure(f"{where}: ebsimd died, but not at the crash point:\n{new[-2000:]}")
        tally.crash_points += 1
        tally.by_point[point] = tally.by_point.get(point, 0) + 1
        rig.after_crash()
        rig.record(rig.recover(), where)


# ---- create-volume under catalog crash points -------------------------------------------
def volume_whole(d, v):
    """Why volume v (a DescribeVolumes entry) is not whole, or None."""
    vid = v["VolumeId"]
    if not os.path.isdir(os.path.join(d.home, "volumes", vid)):
        return f"{vid}: listed but HOME/volumes/{vid} is missing"
    path = os.path.join(d.home, "mnt", vid)
    try:
        size = os.stat(path).st_size
        if size != v["Size"] * GIB:
            return f"{vid}: served size {size}, catalog says {v['Size']} GiB"
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in (0, size // 2, size - 4096):
                if len(os.pread(fd, 4096, off)) != 4096:
                    return f"{vid}: short read at {off}"
        finally:
            os.close(fd)
    except OSError as e:
        return f"{vid}: not served: {e}"
    return None


def catalog_check(d, answered, unanswered):
    """After a restart: nothing half-made. Returns (problems, the unanswered create's ID if
    it exists)."""
    problems = []
    vols = d.ok("describe-volumes")["Volumes"]
    listed = {v["VolumeId"]: v for v in vols}
    for v in vols:
        why = volume_whole(d, v)
        if why:
            problems.append(why)
    dirs = set(os.listdir(os.path.join(d.home, "volumes")))
    orphans = sorted(dirs - set(listed))
    if orphans:
        problems.append(f"orphan entries under HOME/volumes with no catalog row: {orphans}")
    missing = sorted(set(answered) - set(listed))
    if missing:
        problems.append(f"answered creates missing after restart: {missing}")
    extra = sorted(set(listed) - set(answered))
    if len(extra) > unanswered:
        problems.append(f"{len(extra)} unknown volumes but only {unanswered} unanswered "
                        f"create(s): {extra}")
    return problems, extra


def catalog_loop(d, plan, tally, log, master, replay, label):
    """create-volume calls until a catalog crash point kills ebsimd; then check."""
    answered = []
    for i, (point, after) in enumerate(plan):
        rng = random.Random(sub_seed(master, label, "iter", i))
        where = (f"{label} iteration {i} ({point} after {after}; replay: "
                 f"EBSIM_CRASH_SEED={master} {replay})")
        off = len(d.log())
        d.start(env=crash_env(point, after))
        unanswered = 0
        for _ in range(after + 3):
            r = d.cli("create-volume", "--size", rng.choice([1, 2, 4]), "--volume-type",
                      rng.choice(["gp2", "gp3", "standard"]))
            if r.rc == 0:
                answered.append(r.json["VolumeId"])
                continue
            unanswered += 1
            break
        if not wait_daemon_dead(d, 30):
            raise CrashFailure(f"{where}: ebsimd still alive after {after + 3} creates")
        new = d.log()[off:]
        if f"crash point {point} reached" not in new:
            raise CrashFailure(f"{where}: ebsimd died, but not at the crash point:\n{new[-2000:]}")
        tally.crash_points += 1
        tally.by_point[point] = tally.by_point.get(point, 0) + 1
        start_daemon(d, clean_env(), tally)
        problems, extra = catalog_check(d, answered, unanswered)
        log(f"{where}: answered {len(answered)} so far, unanswered create "
            f"{'exists whole: ' + extra[0] if extra else 'does not exist'}")
        if problems:
            raise CrashFailure(f"{where}: half-made state after restart:\n" + "\n".join(problems))
        answered += extra
        d.stop()
    return answered


# ---- fio on the raw loop device ---------------------------------------------------------
def fio_args(name, dev, bs, offset, size, seed):
    return ["fio", f"--name={name}", f"--filename={dev}", "--ioengine=psync", "--direct=1",
            "--rw=write", f"--bs={bs}", f"--offset={offset}", f"--size={size}",
            "--verify=crc32c", "--fdatasync=1", "--sync=1", f"--randseed={seed}",
            "--output-format=json"]


def parse_size(s):
    return int(s[:-1]) << 10 if s.endswith("k") else int(s)


def fio_json(out):
    i = out.find("{")
    try:
        return json.loads(out[i:]) if i >= 0 else None
    except json.JSONDecodeError:
        return None


def fio_loop(d, res, workdir, iters, seed, tally, log, master, replay, label):
    """fio write with verify_state_save on /dev/loopN, SIGKILL ebsimd mid-run, restart,
    fio --verify_only --verify_state_load=1 must pass."""
    vol = d.create_volume(1)["VolumeId"]
    path = os.path.join(d.home, "mnt", vol)
    for i in range(iters):
        rng = random.Random(sub_seed(seed, "fio", i))
        bs = rng.choice(["4k", "8k", "16k", "64k", "128k"])
        offset = rng.randrange(0, 512) << 20
        size = 256 << 20
        delay = rng.uniform(0.2, 1.5)
        fseed = rng.randrange(1, 1 << 31)
        name = f"crash{i}"
        where = (f"{label} iteration {i} (bs {bs}, offset {offset}, kill after {delay:.3f} s; "
                 f"replay: EBSIM_CRASH_SEED={master} {replay})")
        state = os.path.join(workdir, f"local-{name}-0-verify.state")
        if os.path.exists(state):
            os.unlink(state)
        dev = res.losetup(path)
        args = fio_args(name, dev, bs, offset, size, fseed)
        w = subprocess.Popen(args + ["--verify_state_save=1"], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        if w.poll() is not None:
            raise CrashFailure(f"{where}: fio ended before the kill (rc {w.returncode}): "
                               f"{w.stderr.read()[-2000:]}")
        kill9(d)
        tally.crash_points += 1
        try:
            wout, werr = w.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            w.send_signal(signal.SIGTERM)  # SIGTERM still saves the verify state
            wout, werr = w.communicate(timeout=30)
        wj = fio_json(wout)
        written = wj["jobs"][0]["write"]["total_ios"] if wj else -1
        # fio counts the write that failed in total_ios; every write before it completed
        # (with --sync=1: was flushed) and must verify.
        expect = written
        for line in werr.splitlines():
            if "io_u error" in line and ": write offset=" in line:
                failed = int(line.split("write offset=")[1].split(",")[0])
                expect = (failed - offset) // parse_size(bs)
        res.detach(dev)
        loop_gone(dev)
        if not os.path.exists(state):
            raise CrashFailure(f"{where}: fio saved no verify state ({state}); fio said:\n"
                               f"{werr[-2000:]}")
        start_daemon(d, clean_env(), tally)
        dev = res.losetup(path)
        p = subprocess.run(fio_args(name, dev, bs, offset, size, fseed)
                           + ["--verify_only", "--verify_state_load=1", "--verify_fatal=1"],
                           cwd=workdir, capture_output=True, text=True, timeout=300)
        res.detach(dev)
        loop_gone(dev)
        vj = fio_json(p.stdout)
        verified = vj["jobs"][0]["read"]["total_ios"] if vj else -1
        err = ([l for l in werr.splitlines() if "error" in l] + ["no error"])[0]
        log(f"{where}: fio wrote {written} blocks before the kill ({err}), verified "
            f"{verified}, rc {p.returncode}")
        if p.returncode != 0 or verified < 0 or "verify:" in p.stderr + p.stdout:
            raise CrashFailure(f"{where}: fio verify failed (rc {p.returncode}):\n"
                               f"{p.stderr[-3000:]}\n" + "\n".join(
                                   l for l in p.stdout.splitlines() if "verify" in l)[-2000:])
        if verified < expect:
            raise CrashFailure(f"{where}: fio verified {verified} blocks but {expect} "
                               "writes had completed")
        tally.blocks_verified += verified

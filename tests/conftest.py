# SPDX-License-Identifier: MIT
"""Shared pytest fixtures for ebsim: a private home and daemon per test, and a tracker of
every loop device and mount a test creates, so teardown removes exactly those.

Design notes
------------
- Each test gets its own home under /tmp (``home`` fixture) and, through ``daemon``, its
  own ebsimd, which is killed by PID at teardown (never by name).
- ``Resources`` records loop devices and mounts by exact name; teardown unmounts, then
  detaches, in reverse order, and ignores what is already gone.
- Before a test writes into a mount point it calls ``res.assert_mounted(path)``: writing
  into an unmounted directory would fill the root disk instead.
- At teardown the daemon log is scanned for unexpected "error:" lines (tests that provoke
  errors on purpose pass ``expect_log_errors=True`` via ``daemon.expect_errors()``).
- Binaries come from $EBSIM_BUILD (default: build/ at the repository root).
- Sanitizer reports: `make test`'s second pass runs the suite against the ASan+UBSan
  build with $EBSIM_SAN_LOG_DIR set; this file then points ASan, UBSan and LSan (with
  tests/lsan.supp) at log files in one directory per xdist worker, so a report from any
  process (a daemon's stderr is its log, in a home the test removes) lands there; the
  autouse ``no_sanitizer_reports`` fixture fails the test during which one appeared.
- Loop devices of a home (``home_loops``): those whose kernel backing path (sysfs
  backing_file) lies under the home, or, once a crashed daemon's FUSE mount has been
  detached, is "/<name>" for a volume or instance store of that home (the kernel then
  prints the path relative to the detached mount). The ``home`` fixture detaches, by exact
  device and after checking its backing again, whatever a test's killed daemon left, before
  it lazily unmounts the home's dead FUSE mount (after which only the relative form shows).
- Daemons start with ``--no-base-images`` (no base AMIs: faster); a test that wants them
  asks ``make_daemon(base_images=True)`` (optionally ``cache_dir=`` a private cache).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("EBSIM_BUILD", os.path.join(ROOT, "build"))
EBSIMD = os.path.join(BUILD, "ebsimd")
EBSIM = os.path.join(BUILD, "ebsim")
STRESS = os.environ.get("EBSIM_STRESS") == "1"


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def run(cmd, check=True, **kw):
    """Run a command; on failure raise with its output (so the test log shows why). A
    command that hangs fails the test after 10 minutes instead of holding up the run."""
    kw.setdefault("timeout", 600)
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_stat_fails(path, timeout=5.0):
    """Wait until stat(path) on a dead FUSE mount fails. The kernel answers stat() from the
    root inode's cached attributes for ATTR_TIMEOUT (1 s) after the server died, and
    ebsimd's stale-mount check uses stat(), so a restart inside that second is refused
    (fixed: test_restart_right_after_kill9). Tests about other things still wait it out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.stat(path)
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"stat({path}) still succeeds {timeout} s after the daemon died")


def is_mounted(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4] == real:
                return True
    return False


def pid_running(pid):
    """True until pid has finished exiting. ebsimd daemonizes, so its exit status goes to
    PID 1, which may reap late; a zombie leader whose other threads are gone has closed its
    files (FUSE device, lock, socket), which is what callers wait for."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        return not (zombie and os.listdir(f"/proc/{pid}/task") == [str(pid)])
    except (FileNotFoundError, ProcessLookupError):
        return False


def _loop_backing(name):
    """The kernel's backing path of /dev/<name> without " (deleted)", or None."""
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            backing = f.read().rstrip("\n")
    except OSError:
        return None
    return backing[:-len(" (deleted)")] if backing.endswith(" (deleted)") else backing


def _home_names(home):
    """Names of the files a home's FUSE mount serves: volume ids and instance-store names
    (i-<id>.ephN, matched by instance id)."""
    def ls(sub):
        try:
            return set(os.listdir(os.path.join(home, sub)))
        except OSError:
            return set()
    return ls("volumes"), ls("instances")


def _of_home(backing, prefix, vols, insts):
    if backing.startswith(prefix):
        return True
    name = backing[1:] if backing.startswith("/") and "/" not in backing[1:] else None
    if not name:
        return False
    return name in vols or ".eph" in name and name.split(".eph")[0] in insts


def home_loops(home):
    """Loop devices backed by a file of home, live or left by a crashed daemon:
    {"/dev/loopN": kernel backing path}."""
    prefix = os.path.realpath(home) + "/"
    vols, insts = _home_names(home)
    out = {}
    for name in os.listdir("/sys/block"):
        backing = _loop_backing(name) if name.startswith("loop") else None
        if backing and _of_home(backing, prefix, vols, insts):
            out["/dev/" + name] = backing
    return out


def detach_home_loops(home):
    """Detach the loop devices of home (after its daemons are gone), each by exact device
    after checking it is still backed by the same file. Returns the devices detached.
    First the instance root file systems a killed daemon left mounted under home are
    unmounted (lazily, by exact path): a loop with a mounted file system is not freed, and
    the home's removal would leave the mount."""
    inst = os.path.join(os.path.realpath(home), "instances") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(inst)), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)
    done = []
    for dev, backing in home_loops(home).items():
        if _loop_backing(os.path.basename(dev)) == backing:
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                done.append(dev)
    return done


class Resources:
    """Loop devices and mounts made by one test, removed at teardown by exact name."""

    def __init__(self):
        self.items = []  # ("mount", path) | ("loop", dev)

    def losetup(self, path, direct_io=True):
        cmd = ["losetup", "-f", "--show"]
        if direct_io:
            cmd.append("--direct-io=on")
        dev = run(cmd + [path]).stdout.strip()
        self.items.append(("loop", dev))
        return dev

    def mount(self, dev, path, opts=None):
        os.makedirs(path, exist_ok=True)
        cmd = ["mount"] + (["-o", opts] if opts else []) + [dev, path]
        run(cmd)
        self.items.append(("mount", path))
        return path

    def umount(self, path, lazy=False):
        run(["umount"] + (["-l"] if lazy else []) + [path])
        self.items.remove(("mount", path))

    def detach(self, dev):
        run(["losetup", "-d", dev])
        self.items.remove(("loop", dev))

    def assert_mounted(self, path):
        assert is_mounted(path), f"{path} is not a mount point: refusing to write into it"

    def cleanup(self):
        for kind, what in reversed(self.items):
            if kind == "mount" and is_mounted(what):
                subprocess.run(["umount", what], capture_output=True)
                if is_mounted(what):
                    subprocess.run(["umount", "-l", what], capture_output=True)
            elif kind == "loop":
                subprocess.run(["losetup", "-d", what], capture_output=True)
        self.items = []


class CliResult:
    def __init__(self, p):
        self.rc = p.returncode
        self.out = p.stdout
        self.err = p.stderr
        self.json = None
        if p.stdout.strip():
            try:
                self.json = json.loads(p.stdout)
            except ValueError:
                assert self.rc != 0, f"exit 0 with non-JSON output: {p.stdout[:200]}"

    def error_code(self):
        """The EC2 code in 'An error occurred (CODE) when calling ...', or None."""
        marker = "An error occurred ("
        i = self.err.find(marker)
        if i < 0:
            return None
        return self.err[i + len(marker):].split(")", 1)[0]


class Daemon:
    """One ebsimd on one home; started, stopped and killed by PID."""

    def __init__(self, home, engine="io_uring", ebsimd=EBSIMD, ebsim=EBSIM,
                 account="123456789012", region="us-east-1", base_images=False,
                 cache_dir=None, transport=None):
        # base_images: offer the base AMIs (ebsimd builds or imports them at start);
        # off by default so that tests which do not need them do not pay for them.
        # cache_dir: ebsimd --cache-dir (None: its default, /var/cache/ebsim).
        self.home = home
        self.base_images = base_images
        self.cache_dir = cache_dir
        self.engine = engine
        # ebsimd --fuse-transport: dev (the default) or io_uring (tests/test_fuse_transport.py;
        # never killed with requests in flight: see the README's "FUSE transports")
        self.transport = transport or "dev"
        self.ebsimd = ebsimd
        self.ebsim = ebsim
        self.account = account
        self.region = region
        self.pid = None
        self.allow_errors = False
        self.log_offset = 0

    def start(self, extra=(), env=None):
        opts = [] if self.base_images else ["--no-base-images"]
        if self.cache_dir:
            opts += ["--cache-dir", self.cache_dir]
        p = run([self.ebsimd, "--home", self.home, "--io-engine", self.engine,
                 "--fuse-transport", self.transport, *opts, *extra], check=False, env=env)
        if p.returncode != 0:
            raise AssertionError(f"ebsimd failed to start: {p.stderr}\n{self.log()}")
        with open(os.path.join(self.home, "ebsimd.pid")) as f:
            self.pid = int(f.read())
        assert is_mounted(os.path.join(self.home, "mnt"))
        return self

    def stop(self):
        """Clean stop (SIGTERM via --stop), waiting for the daemon to finish."""
        run([self.ebsimd, "--home", self.home, "--stop"])
        self._wait_gone()

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        self._wait_gone()

    def _wait_gone(self):
        for _ in range(600):
            if not pid_running(self.pid):
                break
            # reap if it is our child (it is not: ebsimd daemonizes), else poll
            time.sleep(0.05)
        else:
            raise AssertionError(f"ebsimd {self.pid} did not exit")
        self.pid = None

    def alive(self):
        return bool(self.pid) and pid_running(self.pid)

    def cli(self, *args, account=None, region=None, env=None):
        cmd = [self.ebsim, "--home", self.home, "--account", account or self.account,
               "--region", region or self.region, *map(str, args)]
        return CliResult(subprocess.run(cmd, capture_output=True, text=True, env=env))

    def ok(self, *args, **kw):
        r = self.cli(*args, **kw)
        assert r.rc == 0, f"ebsim {args} -> {r.rc}: {r.err}"
        return r.json

    def create_volume(self, size=1, *extra):
        return self.ok("create-volume", "--size", size, *extra)

    def log(self):
        try:
            with open(os.path.join(self.home, "ebsimd.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def expect_errors(self):
        self.allow_errors = True

    def unexpected_log_errors(self):
        if self.allow_errors:
            return []
        return [l for l in self.log().splitlines() if " error: " in l]


SAN_LOG_DIR = os.environ.get("EBSIM_SAN_LOG_DIR")
SANITIZED = bool(SAN_LOG_DIR)  # the ASan+UBSan pass: model tests run fewer sequences
if SANITIZED:
    # one directory per xdist worker: its tests run one at a time, so a report that appears
    # there during a test is that test's (every process a test starts inherits this)
    SAN_LOG_DIR = os.path.join(SAN_LOG_DIR, os.environ.get("PYTEST_XDIST_WORKER", "main"))
    os.makedirs(SAN_LOG_DIR, exist_ok=True)
    for var, name, extra in (
            ("ASAN_OPTIONS", "asan", ""),
            ("UBSAN_OPTIONS", "ubsan", ":print_stacktrace=1"),
            ("LSAN_OPTIONS", "lsan",
             ":print_suppressions=0:suppressions=" +
             os.path.join(os.path.dirname(__file__), "lsan.supp"))):
        os.environ[var] = f"log_path={os.path.join(SAN_LOG_DIR, name)}{extra}"


@pytest.fixture(autouse=True)
def no_sanitizer_reports():
    """Fail the test if an ASan, UBSan or LeakSanitizer report was written while it ran
    (only in the sanitizer pass: $EBSIM_SAN_LOG_DIR set)."""
    if not SANITIZED:
        yield
        return
    before = set(os.listdir(SAN_LOG_DIR))
    yield
    reports = []
    for n in sorted(set(os.listdir(SAN_LOG_DIR)) - before):
        with open(os.path.join(SAN_LOG_DIR, n), errors="replace") as f:
            text = f.read()
        # a report says "ERROR: AddressSanitizer/LeakSanitizer" or "runtime error:" (UBSan);
        # LSan's warnings ("Running thread ... was not suspended") alone are not one
        if "ERROR: " in text or "runtime error" in text:
            reports.append(f"--- {n} ---\n{text[:4000]}")
    assert not reports, f"sanitizer reports in {SAN_LOG_DIR}:\n" + "\n".join(reports)


@pytest.fixture
def home():
    d = tempfile.mkdtemp(prefix="ebsim-test-", dir="/tmp")
    yield d
    # what a test's killed daemon left; while its dead mount is attached the full path shows
    detach_home_loops(d)
    mnt = os.path.join(d, "mnt")
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def res():
    r = Resources()
    yield r
    r.cleanup()


def _teardown_daemon(d):
    if d.alive():
        try:
            d.stop()
        except AssertionError:
            os.kill(d.pid, signal.SIGKILL)
            d._wait_gone()


@pytest.fixture
def daemon(home, res):
    """A running ebsimd (io_uring) on a private home. Teardown: loops/mounts first (res is
    torn down after this fixture because this fixture depends on it), then the daemon."""
    d = Daemon(home).start()
    yield d
    res.cleanup()
    stopped_cleanly = d.alive()
    _teardown_daemon(d)
    # a clean stop detaches every device the daemon made, including those an earlier
    # daemon on this home left when it was killed (a killed last daemon leaves its own)
    left = home_loops(home) if stopped_cleanly else {}
    assert not left, f"loop devices left behind: {left}"
    errors = d.unexpected_log_errors()
    assert not errors, "unexpected errors in ebsimd.log:\n" + "\n".join(errors)


@pytest.fixture
def make_daemon(home, res):
    """Factory for tests that choose the engine or start/stop daemons themselves."""
    made = []

    def factory(engine="io_uring", start=True, subhome=None, **kw):
        h = home if subhome is None else os.path.join(home, subhome)
        os.makedirs(h, exist_ok=True)
        d = Daemon(h, engine=engine, **kw)  # kw: ebsimd=, ebsim=, base_images=, cache_dir=
        made.append(d)
        return d.start() if start else d

    yield factory
    res.cleanup()
    for d in made:
        _teardown_daemon(d)
        detach_home_loops(d.home)
        mnt = os.path.join(d.home, "mnt")
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True)

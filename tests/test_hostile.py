# SPDX-License-Identifier: MIT
"""Hostile input: malformed and path-like IDs on every volume and snapshot verb, symlinks
planted in the home, and the permissions and secrets of a home.

Every hostile ID must come back as the right EC2 error code (InvalidVolumeID.Malformed,
InvalidSnapshotID.Malformed, or *.NotFound for a well-formed ID that does not exist) with
exit code 254, and nothing outside the home may change: a canary directory outside it is
compared (listing, bytes, modes, mtimes) before and after, while symlinks planted inside
the home point at it."""
import base64
import json
import os
import shutil
import socket
import stat
import tempfile

import pytest

from test_snapshots import wait_completed

MIB = 1 << 20
VALID_ABSENT_VOL = "vol-0123456789abcdef0"
VALID_ABSENT_SNAP = "snap-0123456789abcdef0"
PLANTED_VOL = "vol-00000000000000bad"  # a symlink in HOME/volumes, not in the catalog
PLANTED_SNAP = "snap-00000000000000bad"  # a symlink in HOME/regions/us-east-1/manifests

# (id, why it is hostile). None of them is a valid ID of any kind; the same texts get the
# "snap-" treatment below where the prefix matters.
HOSTILE = [
    ("vol-../../etc", "traversal after a valid prefix"),
    ("../../../../etc/passwd", "relative traversal"),
    ("/etc/passwd", "absolute path"),
    ("{canary}", "absolute path of the canary directory"),
    ("{canary}/canary.txt", "absolute path of the canary file"),
    ("vol-0123456789abcdef0/../../../x", "traversal behind a valid id"),
    ("vol-0123456789abcdef0/", "trailing slash"),
    ("volumes/vol-0123456789abcdef0", "home-relative path"),
    ("vol-0123456789abcdef", "16 hex digits"),
    ("vol-0123456789abcdef01", "18 hex digits"),
    ("vol-0123456789ABCDEF0", "upper-case hex"),
    ("VOL-0123456789abcdef0", "upper-case prefix"),
    ("vol0123456789abcdef0", "no dash"),
    ("vol_0123456789abcdef0", "underscore"),
    ("vol--123456789abcdef0", "double dash"),
    ("vol-+123456789abcdef0", "sign"),
    ("vol-0x123456789abcdef", "0x prefix"),
    ("vol-0123456789abcdeg0", "non-hex letter"),
    ("vol-", "prefix only"),
    ("", "empty"),
    ("-", "a lone dash"),
    ("-rf", "leading dash"),
    ("--help", "an option word as a value"),
    ("vol-0123456789abcdef0\n", "newline"),
    ("vol-0123456789abcdef0\t", "tab"),
    ("vol-\x1b[31m0123456789abcd", "ANSI escape"),
    ("vol-0123456789abcdef0\x7f", "DEL"),
    ("vol-\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12\x13\x14", "C0 controls"),
    (" vol-0123456789abcdef0", "leading space"),
    ("vol-0123456789abcdef0 ", "trailing space"),
    ("vol-%2e%2e%2f%2e%2e%2fetc", "percent-encoded traversal"),
    ("%2e%2e/%2e%2e/etc/passwd", "percent-encoded dots"),
    ("vol-\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19abcdef0", "full-width digits"),
    ("vol-0123456789abcde\u00e9", "accented letter"),
    ("vol-0123456789abcde\ufb00", "ligature"),
    ("vol-\u202e0fedcba9876543210", "right-to-left override"),
    ("vol-0123456789abcdef0\u200b", "zero-width space"),
    ("vol-" + "a" * 1000, "over-long (1 KiB)"),
    ("x" * 100000, "over-long (100 KB)"),
    ("vol-*", "glob star"),
    ("vol-?????????????????", "glob of 17 ?"),
    ("vol-0123456789abcdef0;rm -rf /", "shell metacharacters"),
    ("$(touch {canary}/pwned)", "command substitution"),
    ("vol-0123456789abcdef0\\..\\..", "backslashes"),
    (".", "dot"),
    ("..", "dot-dot"),
    ("~root", "tilde"),
    ('vol-0123456789abcdef0"}', "JSON breakout"),
    ("snap-0123456789abcdef0", "wrong prefix (snap- for a volume)"),
]


def _for_snap(text):
    """The same hostile text aimed at a snapshot verb (keep wrong-prefix cases wrong)."""
    if text == "snap-0123456789abcdef0":
        return "vol-0123456789abcdef0"
    return text.replace("vol-", "snap-").replace("VOL-", "SNAP-").replace("vol", "snap")


def tree_state(root):
    """Everything observable about a directory tree: per path, type, mode, size, mtime and
    (for files) content hash; symlinks by target."""
    import hashlib
    st = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            if stat.S_ISLNK(s.st_mode):
                st[p] = ("link", os.readlink(p))
            elif stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    st[p] = ("file", s.st_mode, s.st_size, s.st_mtime_ns,
                             hashlib.sha256(f.read()).hexdigest())
            else:
                st[p] = ("dir", s.st_mode, s.st_mtime_ns)
    s = os.lstat(root)
    st[root] = ("root", s.st_mode, s.st_mtime_ns)
    return st


@pytest.fixture
def canary():
    d = tempfile.mkdtemp(prefix="ebsim-canary-", dir="/tmp")
    with open(os.path.join(d, "canary.txt"), "wb") as f:
        f.write(b"do not touch\n" * 100)
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "sub", "header"), "wb") as f:
        f.write(b"\0" * 4096)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def plant(home, canary):
    """Symlinks inside the home, named like valid IDs, pointing at the canary."""
    links = {
        os.path.join(home, "volumes", PLANTED_VOL): canary,
        os.path.join(home, "regions", "us-east-1", "manifests", PLANTED_SNAP):
            os.path.join(canary, "canary.txt"),
        os.path.join(home, "regions", "us-west-1"): canary,  # a region not used yet
    }
    for link, target in links.items():
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
    return links


def verbs_for(vid, sid):
    """Every verb that takes a volume or snapshot ID, with that ID in the --opt=value form
    (so a value that starts with '-' is still a value), and the error-code family."""
    return [
        (["describe-volumes", f"--volume-ids={vid}"], "vol"),
        (["delete-volume", f"--volume-id={vid}"], "vol"),
        (["modify-volume", f"--volume-id={vid}", "--size", "2"], "vol"),
        (["create-snapshot", f"--volume-id={vid}"], "vol"),
        (["initialize-volume", f"--volume-id={vid}", "--no-wait"], "vol"),
        (["describe-snapshots", f"--snapshot-ids={sid}"], "snap"),
        (["delete-snapshot", f"--snapshot-id={sid}"], "snap"),
        (["create-volume", f"--snapshot-id={sid}"], "snap"),
        (["copy-snapshot", "--source-region", "us-east-1", f"--source-snapshot-id={sid}"],
         "snap"),
        (["list-snapshot-blocks", f"--snapshot-id={sid}"], "snap"),
        (["list-changed-blocks", f"--second-snapshot-id={sid}"], "snap"),
    ]


def test_hostile_ids(daemon, home, canary, capsys):
    d = daemon
    # a real volume and snapshot, so that nothing fails merely for lack of objects
    v = d.create_volume(1)
    fd = os.open(v["LocalPath"], os.O_WRONLY)
    os.pwrite(fd, os.urandom(MIB), 0)
    os.fsync(fd)
    os.close(fd)
    s = wait_completed(d, d.ok("create-snapshot", "--volume-id", v["VolumeId"])["SnapshotId"])
    links = plant(home, canary)
    before = tree_state(canary)
    home_before = {p: st for p, st in tree_state(home).items()
                   if not p.endswith(("ebsimd.log", "catalog.db-wal", "catalog.db-shm"))}

    calls = 0
    wrong = []
    ids = [t.replace("{canary}", canary) for t, _ in HOSTILE]
    for text in ids:
        for args, kind in verbs_for(text, _for_snap(text)):
            r = d.cli(*args)
            calls += 1
            want = "InvalidVolumeID.Malformed" if kind == "vol" else "InvalidSnapshotID.Malformed"
            if r.rc != 254 or r.error_code() != want:
                wrong.append((args[0], repr(text[:60]), r.rc, r.error_code(), r.err[-200:]))
    # well-formed IDs that do not exist, including the planted symlinks: NotFound
    for vid, sid in ((VALID_ABSENT_VOL, VALID_ABSENT_SNAP), (PLANTED_VOL, PLANTED_SNAP)):
        for args, kind in verbs_for(vid, sid):
            r = d.cli(*args)
            calls += 1
            want = "InvalidVolume.NotFound" if kind == "vol" else "InvalidSnapshot.NotFound"
            if r.rc != 254 or r.error_code() != want:
                wrong.append((args[0], vid if kind == "vol" else sid, r.rc, r.error_code(),
                              r.err[-200:]))
    assert not wrong, "\n".join(map(str, wrong))

    # hostile names: regions, accounts, zones, descriptions
    names = [
        (["describe-volumes"], {"region": "../../etc"}, "InvalidParameterValue"),
        (["describe-volumes"], {"region": canary}, "InvalidParameterValue"),
        (["describe-volumes"], {"region": "us-east-1/../../x"}, "InvalidParameterValue"),
        (["describe-volumes"], {"account": "../../../root"}, "AuthFailure"),
        (["describe-volumes"], {"account": "12345678901\n"}, "AuthFailure"),
        (["create-volume", "--size", "1", "--availability-zone", "../../etc"], {},
         "InvalidZone.NotFound"),
        (["copy-snapshot", "--source-region", "../../tmp", "--source-snapshot-id",
          s["SnapshotId"]], {}, ("InvalidParameterValue", "InvalidSnapshot.NotFound")),
        (["create-snapshot", "--volume-id", v["VolumeId"], "--description", "d" * 300], {},
         "InvalidParameterValue"),
    ]
    for args, kw, want in names:
        r = d.cli(*args, **kw)
        calls += 1
        # a source region is only ever compared with catalog rows, never used as a path
        # until it matched one: NotFound is as safe as InvalidParameterValue
        assert r.rc == 254 and r.error_code() in (want if isinstance(want, tuple) else (want,)), \
            (args, kw, r.rc, r.err)

    # a region whose store directory is a planted symlink: refused, nothing followed
    r = d.cli("copy-snapshot", "--source-region", "us-east-1", "--source-snapshot-id",
              s["SnapshotId"], region="us-west-1")
    calls += 1
    assert r.rc != 0, r.out
    d.expect_errors()  # the refused store open is logged

    # nothing outside the home changed; inside it, only the planted links remain extra
    assert tree_state(canary) == before
    assert not os.path.exists(os.path.join(canary, "pwned"))
    home_after = {p: st for p, st in tree_state(home).items()
                  if not p.endswith(("ebsimd.log", "catalog.db-wal", "catalog.db-shm"))}
    gone = sorted(set(home_before) - set(home_after))
    assert not gone, gone
    for link, target in links.items():
        assert os.readlink(link) == target

    # a restart removes the orphan volume link (an interrupted create, as far as it can
    # tell) without following it
    d.stop()
    d.start()
    assert tree_state(canary) == before
    assert d.ok("describe-volumes", "--volume-ids", v["VolumeId"])["Volumes"]
    # GC on delete removes the orphan manifest link, again without following it
    d.ok("delete-snapshot", "--snapshot-id", s["SnapshotId"])
    assert tree_state(canary) == before
    with capsys.disabled():
        print(f"\nhostile input: {len(HOSTILE) + 2} IDs x {len(verbs_for('', ''))} verbs + "
              f"{len(names) + 1} hostile names = {calls} calls, all refused with the right "
              f"code; canary untouched")


def test_nul_in_id_over_the_socket(daemon, home):
    """argv cannot carry a NUL, a raw client can: the daemon refuses it before any lookup."""
    for params in ({"VolumeIds": ["vol-0123456789abcdef0\u0000/../../etc"]},
                   {"VolumeIds": ["vol-0123456789abcdef\u0000"]}):
        req = {"Action": "DescribeVolumes", "Account": daemon.account,
               "Region": daemon.region, "Params": params}
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(os.path.join(home, "ebsimd.sock"))
            c.sendall(json.dumps(req).encode() + b"\n")
            reply = json.loads(c.makefile("rb").readline())
        assert reply["Error"]["Code"] in ("InvalidParameterValue", "InvalidVolumeID.Malformed"), reply


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_permissions_and_secrets(make_daemon, home, capsys):
    d = make_daemon(start=False)
    d.start(extra=("--log-level", "debug"))  # the most the daemon ever logs
    v = d.create_volume(1, "--encrypted")
    p = d.create_volume(1)
    for vol in (v, p):
        fd = os.open(vol["LocalPath"], os.O_WRONLY)
        os.pwrite(fd, os.urandom(MIB), 0)
        os.fsync(fd)
        os.close(fd)
    s = d.ok("create-snapshot", "--volume-id", v["VolumeId"])
    wait_completed(d, s["SnapshotId"])
    d.ok("create-volume", "--snapshot-id", s["SnapshotId"])  # a restore unwraps the key
    d.stop()
    d.start(extra=("--log-level", "debug"))  # re-reads the master key, reopens the volumes

    problems = []
    checked = []

    def want(path, mode):
        checked.append(path)
        if _mode(path) != mode:
            problems.append(f"{path}: {oct(_mode(path))}, want {oct(mode)}")

    want(os.path.join(home, "keys"), 0o700)
    want(os.path.join(home, "keys", "master.key"), 0o600)
    want(os.path.join(home, "ebsimd.sock"), 0o600)
    want(os.path.join(home, "volumes"), 0o700)
    want(os.path.join(home, "regions"), 0o700)
    for vid in os.listdir(os.path.join(home, "volumes")):
        vd = os.path.join(home, "volumes", vid)
        want(vd, 0o700)
        for f in os.listdir(vd):
            want(os.path.join(vd, f), 0o600)
    for vol in (v, p):
        want(vol["LocalPath"], 0o600)
    for root, dirs, files in os.walk(os.path.join(home, "regions")):
        for n in dirs:
            want(os.path.join(root, n), 0o700)
        for n in files:
            want(os.path.join(root, n), 0o600)
    assert not problems, "\n".join(problems)

    mnt = os.path.realpath(os.path.join(home, "mnt"))
    with open("/proc/self/mountinfo") as f:
        lines = [l for l in f if l.split()[4] == mnt]
    assert lines, "no FUSE mount"
    fields = lines[-1].split(" - ", 1)[1].split()  # fstype, source, super options
    assert fields[0] == "fuse.ebsim"
    assert "default_permissions" in fields[2].split(","), lines[-1]

    with open(os.path.join(home, "keys", "master.key"), "rb") as f:
        key = f.read()
    assert len(key) == 32
    with open(os.path.join(home, "ebsimd.log"), "rb") as f:
        log = f.read()
    assert log, "empty log"
    for form in (key, key.hex().encode(), key.hex().upper().encode(),
                 base64.b64encode(key), base64.b64encode(key).rstrip(b"=")):
        assert form not in log, "the master key appears in ebsimd.log"
    # no 8-byte window of the key either (a partial dump)
    for i in range(0, len(key) - 8):
        assert key[i:i + 8] not in log and key[i:i + 8].hex().encode() not in log
    with capsys.disabled():
        print(f"\npermissions: {len(checked)} paths with the right mode (0700 dirs, 0600 "
              f"files, socket, key, volume files, store), FUSE default_permissions, master key "
              f"in none of 5 encodings nor any 8-byte window in the debug log")

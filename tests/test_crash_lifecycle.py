# SPDX-License-Identifier: MIT
"""Crashes in the middle of lifecycle operations: a snapshot delete (and the garbage
collection it runs) and an instance-store destroy (stop and terminate).

Each round sends the request and kills ebsimd (SIGKILL) at a random moment while it is being
served, then restarts it. What must hold afterwards:
- snapshot delete: every snapshot that was not being deleted restores byte for byte, the one
  being deleted is either gone or still whole, and `ebsim check` finds no corruption (exit 0,
  or 3 for leaks only) — then, once it is deleted for good, no leak either;
- instance-store destroy: the instance comes back stopped or terminated, its EBS root keeps
  every byte, and no piece of the 1 MiB canary written to its instance store is found in any
  file under the home (the catalog and its WAL included).

`make test` runs ROUNDS rounds of each; EBSIM_STRESS=1 runs 40. The seed is printed;
EBSIM_CRASH_SEED=<n> replays a run's delays.
"""
import os
import random
import subprocess
import time

import pytest

from conftest import STRESS
from test_instances import (check_image_files, describe, image, needles_of,  # noqa: F401
                            pread_direct, pwrite_direct, run1, scan_tree)
from test_snapshots import GIB, MIB, sha_range, snapshot, vol, write_pattern

ROUNDS = 40 if STRESS else 4


def rng(name):
    s = int(os.environ.get("EBSIM_CRASH_SEED") or random.randrange(1 << 32))
    print(f"[{name}] crash seed {s} (replay: EBSIM_CRASH_SEED={s} make test "
          f"PYTEST_ARGS='-k {name}')")
    return random.Random(s)


def kill_during(d, r, *args):
    """Send `ebsim args` and kill -9 the daemon after a random delay, while it serves it.
    Returns the delay (s) and the request's exit code (None: it was cut off)."""
    cmd = [d.ebsim, "--home", d.home, "--account", d.account, "--region", d.region,
           *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = r.uniform(0, 0.08)
    time.sleep(delay)
    d.kill9()
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = None
    d.start()
    return delay, rc


def test_crash_during_snapshot_delete(daemon):
    d = daemon
    d.expect_errors()  # a cut-off request is logged
    r = rng("test_crash_during_snapshot_delete")
    stats = {"gone": 0, "kept": 0, "leak_checks": 0}
    for i in range(ROUNDS):
        vid, path = vol(d, 1)
        # a chain whose middle snapshot owns chunks of its own: [0, 48) MiB "a", then
        # [16, 32) MiB "b" (only s2 has it), then [24, 40) MiB "c"
        write_pattern(path, f"a{i}", 48 * MIB)
        s1 = snapshot(d, vid)["SnapshotId"]
        sha1 = sha_range(path, 0, 48 * MIB)
        write_pattern(path, f"b{i}", 16 * MIB, off=16 * MIB)
        s2 = snapshot(d, vid)["SnapshotId"]
        sha2 = sha_range(path, 0, 48 * MIB)
        write_pattern(path, f"c{i}", 16 * MIB, off=24 * MIB)
        s3 = snapshot(d, vid)["SnapshotId"]
        sha3 = sha_range(path, 0, 48 * MIB)
        victim = r.choice([s1, s2])
        kill_during(d, r, "delete-snapshot", "--snapshot-id", victim)
        c = d.cli("check")
        assert c.rc in (0, 3), f"round {i}: check found corruption: {c.out} {c.err}"
        left = {s["SnapshotId"] for s in d.ok("describe-snapshots")["Snapshots"]}
        expect = {s1: sha1, s2: sha2, s3: sha3}
        if victim in left:
            stats["kept"] += 1
        else:
            stats["gone"] += 1
            del expect[victim]
        for s, sha in expect.items():
            assert s in left, f"round {i}: {s} vanished (deleting {victim})"
            v = d.ok("create-volume", "--snapshot-id", s)
            assert sha_range(v["LocalPath"], 0, 48 * MIB) == sha, f"round {i}: {s} changed"
            d.ok("delete-volume", "--volume-id", v["VolumeId"])
        for s in expect:
            d.ok("delete-snapshot", "--snapshot-id", s)
        d.ok("delete-volume", "--volume-id", vid)
        c = d.cli("check")
        assert c.rc == 0 and c.json["LeakedCount"] == 0, f"round {i}: {c.out} {c.err}"
        stats["leak_checks"] += 1
    print(f"[test_crash_during_snapshot_delete] {ROUNDS} crashes during delete-snapshot: "
          f"{stats['gone']} deletes had happened, {stats['kept']} had not; every other "
          f"snapshot restored byte for byte; 0 corruptions; 0 leaks after the final deletes "
          f"({stats['leak_checks']} checks)")


@pytest.mark.parametrize("action", ["stop-instances", "terminate-instances"])
def test_crash_during_instance_store_destroy(daemon, image, action):
    d = daemon
    d.expect_errors()
    r = rng(f"test_crash_during_instance_store_destroy[{action}]")
    states = {}
    for i in range(ROUNDS):
        inst = run1(d, image["ami"])
        iid = inst["InstanceId"]
        canary = os.urandom(MIB)
        off = GIB + r.randrange(0, 256) * MIB
        pwrite_direct(inst["LocalDevices"]["/dev/sdb"], off, canary)
        assert pread_direct(inst["LocalDevices"]["/dev/sdb"], off, MIB) == canary
        kill_during(d, r, action, "--instance-ids", iid)
        st = describe(d, iid)["State"]["Name"]
        states[st] = states.get(st, 0) + 1
        # after a restart no instance survives running, whatever the request reached
        assert st in ("stopped", "terminated"), f"round {i}: {st}"
        hits, scanned = scan_tree(d.home, needles_of(canary),
                                  skip={os.path.join(d.home, "mnt")})
        assert hits == {}, f"round {i}: the canary survived in {hits}"
        assert os.path.join(d.home, "catalog.db") in scanned
        if st == "stopped":
            d.ok("start-instances", "--instance-ids", iid)
            inst = describe(d, iid)
            assert pread_direct(inst["LocalDevices"]["/dev/sdb"], off, MIB) == bytes(MIB)
            check_image_files(inst["RootMount"], image["files"])
        d.ok("terminate-instances", "--instance-ids", iid)
    print(f"[test_crash_during_instance_store_destroy[{action}]] {ROUNDS} crashes during "
          f"{action}: states after restart {states}; canary found 0 times in every scan")

# SPDX-License-Identifier: MIT
"""Loop devices a killed ebsimd leaves behind are detached by the next daemon on the home.

After `kill -9`, the loop devices of running instances stay attached to files of the dead
FUSE mount. The next daemon detaches its stale mount first, after which the kernel prints
each backing file relative to that detached mount ("/vol-…", "/i-….eph0"), no longer under
the home; the start-up cleanup must still recognise the devices it recorded, and must leave
alone a device it did not attach (a user's loop on a volume file) and a recorded number that
someone else has attached to another file meanwhile.
"""
import os
import time

from conftest import _loop_backing, home_loops, run
from test_instances import describe, image, run1  # noqa: F401


def backing(dev):
    return _loop_backing(os.path.basename(dev))


def test_restart_detaches_the_loops_a_killed_daemon_left(daemon, image, res, tmp_path):
    d = daemon
    mnt = os.path.realpath(os.path.join(d.home, "mnt"))
    iid = run1(d, image["ami"])["InstanceId"]
    data = d.create_volume(1)["VolumeId"]
    d.ok("attach-volume", "--volume-id", data, "--instance-id", iid, "--device", "/dev/sdf")
    devs = describe(d, iid)["LocalDevices"]
    assert set(devs) == {"/dev/xvda", "/dev/sdb", "/dev/sdf"}
    # a loop the daemon did not make: the user's, on another volume's file
    other = d.create_volume(1)
    user_dev = res.losetup(other["LocalPath"])

    d.kill9()
    # the bug's precondition: the dead daemon's devices are still attached to its files
    files = {loop: backing(loop) for loop in devs.values()}
    assert all(f and f.startswith(mnt + "/") for f in files.values()), files
    assert set(home_loops(d.home)) == set(devs.values()) | {user_dev}

    # someone else takes one of the numbers, for a file that even has the volume's name
    reused = devs["/dev/sdf"]
    run(["losetup", "-d", reused])
    foreign = tmp_path / "elsewhere" / data
    foreign.parent.mkdir()
    foreign.write_bytes(bytes(1 << 20))
    # another worker's `losetup -f` may take the freed number first (EBUSY): wait for it to
    # be free again, as that test detaches its own devices
    deadline = time.monotonic() + 60
    while (p := run(["losetup", reused, str(foreign)], check=False)).returncode:
        assert "busy" in p.stderr and time.monotonic() < deadline, p.stderr
        time.sleep(0.2)
    res.items.append(("loop", reused))

    d.start()
    inst = describe(d, iid)
    assert inst["State"]["Name"] == "stopped" and "LocalDevices" not in inst
    # every device the dead daemon recorded is gone (its number may already serve someone
    # else: only that it no longer holds one of our files counts) ...
    left = home_loops(d.home)
    assert left == {user_dev: "/" + other["VolumeId"]}, left
    for loop, f in files.items():
        if loop != reused:
            now = backing(loop)
            assert now is None or os.path.basename(now) != os.path.basename(f), (loop, now)
    # ... and the two devices that are not the daemon's are untouched
    assert backing(reused) == str(foreign)
    assert backing(user_dev) == "/" + other["VolumeId"]

    # the instance comes back with fresh devices, and a clean stop leaves none
    d.ok("start-instances", "--instance-ids", iid)
    fresh = describe(d, iid)["LocalDevices"]
    assert set(fresh) == {"/dev/xvda", "/dev/sdb", "/dev/sdf"}
    assert set(home_loops(d.home)) == set(fresh.values()) | {user_dev}
    res.cleanup()
    d.stop()
    assert home_loops(d.home) == {}

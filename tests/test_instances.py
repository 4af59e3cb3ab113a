# SPDX-License-Identifier: MIT
"""Instances and their storage (issue 4): run, reboot, stop, start, terminate, attach and
detach, proven with real data: files and patterns are written through the root mount and
the loop devices, the instance acts, and everything is read back and compared byte for
byte (sha256) with what DESIGN.md's lifecycle table says must survive.

Design notes
------------
- Images are built the way a person would: a 1 GiB volume gets an ext4 file system of
  768 MiB (mkfs on its LocalPath), is loop-mounted through ``res`` to receive /etc/fstab,
  /sbin/init, /boot/grub/menu.lst and a known file, then unmounted, snapshotted and
  registered with /dev/xvda -> the snapshot and /dev/sdb -> ephemeral0. The last 256 MiB of
  the root device lie outside the file system, so tests may write raw patterns there
  through the root's loop device while it is mounted.
- The default instance type is m3.medium: x86_64, HVM and paravirtual, one 4 GiB
  instance-store volume (ephemeral0).
- Raw I/O goes through the loop devices of LocalDevices (or a volume's LocalPath) with
  O_DIRECT and fsync, so nothing is read back from a page cache.
- "Nothing changed" is checked on the API (describe-volumes, describe-instances), on disk
  (HOME/volumes, HOME/instances, HOME/instance-store) and on the host (loop devices backed
  by a file under HOME, mounts under HOME): loop devices of other homes do not count and
  are never touched.
- The model test drives random sequences of actions from a seeded RNG and compares the
  daemon with a model of DESIGN.md's table after every step; EBSIM_MODEL_SEED replays a
  run, EBSIM_STRESS=1 runs five times as many sequences, the ASan pass a quarter.
"""
import collections
import errno
import hashlib
import json
import mmap
import os
import random
import re
import stat
import statistics
import threading
import time

import pytest

from conftest import EBSIM, SANITIZED, STRESS, home_loops, is_mounted, run, sha256_file
from test_snapshots import snapshot

GIB = 1 << 30
MIB = 1 << 20
BLK = 4096
FS_SIZE = 768 * MIB  # the image's ext4; [FS_SIZE, 1 GiB) of the root is raw space
INST_ID_RE = re.compile(r"\Ai-[0-9a-f]{17}\Z")
ITYPE = "m3.medium"  # x86_64, hvm + paravirtual, one 4 GiB instance-store volume
EPH_SIZE = 4 * GIB
ZERO = bytes(BLK)


# ---- raw I/O ---------------------------------------------------------------------------

def pwrite_direct(path, off, data):
    """Write data at off with O_DIRECT, then fsync: acknowledged means durable."""
    assert off % BLK == 0 and len(data) % BLK == 0
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, off) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def pread_direct(path, off, size):
    assert off % BLK == 0 and size % BLK == 0
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], off) == size, f"short read of {path} at {off}"
        return bytes(buf)
    finally:
        os.close(fd)
        buf.close()


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def blockdev_size(dev):
    return int(run(["blockdev", "--getsize64", dev]).stdout)


# ---- what a home holds -------------------------------------------------------------------

def home_mounts(home):
    """Mount points under home, except home/mnt (ebsimd's FUSE mount)."""
    real = os.path.realpath(home) + "/"
    fuse = real + "mnt"
    with open("/proc/self/mountinfo") as f:
        points = [l.split()[4] for l in f]
    return sorted(p for p in points if p.startswith(real) and p != fuse)


def listdir(home, sub):
    try:
        return sorted(os.listdir(os.path.join(home, sub)))
    except FileNotFoundError:
        return []


def world(d):
    """Everything a failed request must leave as it was."""
    inst = d.ok("describe-instances")
    return {
        "volumes": sorted((v["VolumeId"], v["State"]) for v in d.ok("describe-volumes")["Volumes"]),
        "instances": sorted((i["InstanceId"], i["State"]["Name"])
                            for r in inst["Reservations"] for i in r["Instances"]),
        "dir volumes": listdir(d.home, "volumes"),
        "dir instances": listdir(d.home, "instances"),
        "dir instance-store": listdir(d.home, "instance-store"),
        "fuse files": listdir(d.home, "mnt"),
        "loops": home_loops(d.home),
        "mounts": home_mounts(d.home),
    }


# ---- images ------------------------------------------------------------------------------

INIT = b"""#!/bin/sh
# /sbin/init of the ebsim test image: mount what fstab says, then a shell
mount -a
exec /bin/sh
"""
MENU_LST = b"""default 0
timeout 0
title ebsim test image
    root (hd0)
    kernel /boot/vmlinuz root=/dev/xvda ro console=hvc0
"""


def make_base(d, res, size_gib=1, fs_size=FS_SIZE, seed=1):
    """Build a root file system on a new volume and snapshot it. Returns the snapshot id
    and {relative path: sha256} of the files it holds."""
    v = d.create_volume(size_gib)
    # nodiscard: a discard would mark every chunk written and make the snapshot copy it all
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", "ebsim-root", v["LocalPath"],
         str(fs_size // 1024) + "k"])
    files = {
        "etc/fstab": b"LABEL=ebsim-root / ext4 defaults,noatime 0 1\n",
        "sbin/init": INIT,
        "boot/grub/menu.lst": MENU_LST,
        "opt/known.bin": random.Random(seed).randbytes(256 * 1024 + 123),
    }
    mnt = os.path.join(d.home, "image-build")
    loop = res.losetup(v["LocalPath"])
    res.mount(loop, mnt)
    res.assert_mounted(mnt)
    for rel, data in files.items():
        os.makedirs(os.path.join(mnt, os.path.dirname(rel)), exist_ok=True)
        write_file(os.path.join(mnt, rel), data)
    os.chmod(os.path.join(mnt, "sbin/init"), 0o755)
    res.umount(mnt)
    res.detach(loop)
    s = snapshot(d, v["VolumeId"])
    return s["SnapshotId"], {rel: sha(data) for rel, data in files.items()}


def register(d, snap, name, arch="x86_64", virt="hvm", ephemeral=True):
    bdm = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}]
    if ephemeral:
        bdm.append({"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"})
    return d.ok("register-image", "--name", name, "--root-device-name", "/dev/xvda",
                "--block-device-mappings", json.dumps(bdm), "--architecture", arch,
                "--virtualization-type", virt)["ImageId"]


@pytest.fixture
def image(daemon, res):
    """The base image, HVM x86_64: {"ami", "snap", "files"}."""
    snap, files = make_base(daemon, res)
    return {"ami": register(daemon, snap, "ebsim-base-hvm"), "snap": snap, "files": files}


def run1(d, ami, itype=ITYPE, *extra):
    out = d.ok("run-instances", "--image-id", ami, "--instance-type", itype, *extra)
    assert len(out["Instances"]) == 1
    return out["Instances"][0]


def describe(d, iid):
    r = d.ok("describe-instances", "--instance-ids", iid)["Reservations"]
    assert len(r) == 1 and len(r[0]["Instances"]) == 1
    return r[0]["Instances"][0]


def volume(d, vid):
    return d.ok("describe-volumes", "--volume-ids", vid)["Volumes"][0]


def root_volume(inst):
    return next(m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]
                if m["DeviceName"] == inst["RootDeviceName"])


def check_image_files(root, files):
    for rel, digest in files.items():
        assert sha256_file(os.path.join(root, rel)) == digest, rel
    assert os.stat(os.path.join(root, "sbin/init")).st_mode & 0o111


def assert_error(r, code):
    assert r.rc == 254, (r.rc, r.out, r.err)
    assert r.error_code() == code, r.err


def patterns(seed, n, lo, hi, blocks=1):
    """n writes of `blocks` 4 KiB blocks at distinct random aligned offsets in [lo, hi)."""
    rnd = random.Random(seed)
    offs = rnd.sample(range(lo // BLK, (hi - BLK * blocks) // BLK), n)
    return {o * BLK: rnd.randbytes(BLK * blocks) for o in offs}


def write_patterns(dev, pats):
    for off, data in pats.items():
        pwrite_direct(dev, off, data)


def read_patterns(dev, pats):
    return {off: pread_direct(dev, off, len(data)) for off, data in pats.items()}


# ---- run-instances -----------------------------------------------------------------------

def test_run_instances_output_devices_and_root(daemon, image):
    d = daemon
    before = d.ok("describe-volumes")["Volumes"]
    out = d.ok("run-instances", "--image-id", image["ami"], "--instance-type", ITYPE)
    assert out["Groups"] == [] and out["OwnerId"] == d.account
    assert re.match(r"\Ar-[0-9a-f]{17}\Z", out["ReservationId"])
    (inst,) = out["Instances"]
    iid = inst["InstanceId"]
    assert INST_ID_RE.match(iid), iid
    assert inst["State"] == {"Code": 0, "Name": "pending"}
    assert inst["InstanceType"] == ITYPE and inst["ImageId"] == image["ami"]
    assert inst["RootDeviceType"] == "ebs" and inst["RootDeviceName"] == "/dev/xvda"
    assert inst["Architecture"] == "x86_64" and inst["VirtualizationType"] == "hvm"
    assert inst["Placement"] == {"AvailabilityZone": "us-east-1a"}
    (m,) = inst["BlockDeviceMappings"]  # instance store is not an EBS mapping
    assert m["DeviceName"] == "/dev/xvda"
    assert m["Ebs"]["DeleteOnTermination"] is True and m["Ebs"]["Status"] == "attached"
    root_vol = m["Ebs"]["VolumeId"]
    assert set(inst["LocalDevices"]) == {"/dev/xvda", "/dev/sdb"}

    running = describe(d, iid)
    assert running["State"] == {"Code": 16, "Name": "running"}
    assert running["LocalDevices"] == inst["LocalDevices"]

    # dev/ links name the loop devices of LocalDevices, which are backed by the FUSE files
    loops = home_loops(d.home)
    mnt = os.path.join(os.path.realpath(d.home), "mnt")
    for dev, loop in inst["LocalDevices"].items():
        link = os.path.join(d.home, "instances", iid, "dev", os.path.basename(dev))
        assert os.path.islink(link) and os.readlink(link) == loop, (link, loop)
        assert stat.S_ISBLK(os.stat(link).st_mode)
    assert loops[inst["LocalDevices"]["/dev/xvda"]] == os.path.join(mnt, root_vol)
    assert loops[inst["LocalDevices"]["/dev/sdb"]] == os.path.join(mnt, iid + ".eph0")
    assert blockdev_size(inst["LocalDevices"]["/dev/xvda"]) == GIB
    assert blockdev_size(inst["LocalDevices"]["/dev/sdb"]) == EPH_SIZE

    # the root file system is mounted and holds the image's files
    root = os.path.join(d.home, "instances", iid, "root")
    assert inst["RootMount"] == root and is_mounted(root)
    check_image_files(root, image["files"])

    # the root volume was restored lazily from the image's snapshot
    v = volume(d, root_vol)
    assert v["SnapshotId"] == image["snap"] and v["Size"] == 1 and v["State"] == "in-use"
    assert v["Attachments"][0]["InstanceId"] == iid
    assert v["Attachments"][0]["Device"] == "/dev/xvda"
    init = v["InitializationStatusDetails"]
    assert init["State"] == "lazy" and init["Progress"] < 100, init
    assert len(d.ok("describe-volumes")["Volumes"]) == len(before) + 1


def test_run_instances_count_user_data_and_filters(daemon, image, tmp_path):
    d = daemon
    ud = tmp_path / "user-data.sh"
    ud.write_text("#!/bin/sh\necho hello from user data\n")
    out = d.ok("run-instances", "--image-id", image["ami"], "--instance-type", ITYPE,
               "--count", "2", "--user-data", f"file://{ud}")
    ids = sorted(i["InstanceId"] for i in out["Instances"])
    assert len(ids) == 2
    r = d.ok("describe-instances", "--filters", "Name=instance-state-name,Values=running")
    assert [res["ReservationId"] for res in r["Reservations"]] == [out["ReservationId"]]
    assert sorted(i["InstanceId"] for i in r["Reservations"][0]["Instances"]) == ids
    # MIN:MAX launches MaxCount; a count that is not a number is a usage error (awscli's)
    out = d.ok("run-instances", "--image-id", image["ami"], "--instance-type", "t3.micro",
               "--count", "1:2")
    assert len(out["Instances"]) == 2
    for bad in ("two", "1:2:3", "1:", ""):
        r = d.cli("run-instances", "--image-id", image["ami"], "--count", bad)
        assert r.rc == 252 and "count parameter should be of form min[:max]" in r.err, r.err
    r = d.cli("run-instances", "--image-id", image["ami"], "--count", "0")
    assert_error(r, "InvalidParameterValue")
    r = d.cli("run-instances", "--image-id", image["ami"], "--user-data",
              f"file://{tmp_path}/missing")
    assert r.rc == 252 and "Unable to load paramfile" in r.err
    r = d.ok("describe-instances", "--filters", "Name=instance-type,Values=t3.micro")
    assert sum(len(res["Instances"]) for res in r["Reservations"]) == 2


# ---- the CLI's pages, images ------------------------------------------------------------

INSTANCE_VERBS = ["register-image", "describe-images", "deregister-image", "run-instances",
                  "describe-instances", "stop-instances", "start-instances",
                  "reboot-instances", "terminate-instances", "modify-instance-attribute",
                  "attach-volume", "detach-volume"]


@pytest.mark.parametrize("verb", INSTANCE_VERBS)
def test_help_of_instance_verbs(verb):
    out = run([EBSIM, verb, "--help"]).stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "OUTPUT", "EXAMPLES"):
        assert re.search(rf"^{section}$", out, re.M), section
    synopsis = out.split("DESCRIPTION")[0]
    options = out.split("\nOPTIONS\n")[1].split("\nGLOBAL OPTIONS\n")[0]
    for opt in re.findall(r"\[?--([a-z-]+)", synopsis):
        if opt.startswith("no-"):  # --no-x of a boolean --x, documented with it
            opt = opt[3:]
        assert re.search(rf"^       --{opt}\b", options, re.M), f"--{opt} is not documented"
    assert f"ebsim {verb}" in out.split("EXAMPLES")[1]


def test_deregister_image(daemon, image):
    d = daemon
    ami2 = register(d, image["snap"], "ebsim-second")
    assert_error(d.cli("delete-snapshot", "--snapshot-id", image["snap"]), "InvalidSnapshot.InUse")
    assert d.ok("deregister-image", "--image-id", image["ami"], "--delete-associated-snapshots") \
        == {"Return": True}
    # the snapshot is kept while another image uses it
    assert d.ok("describe-snapshots", "--snapshot-ids", image["snap"])["Snapshots"]
    assert_error(d.cli("run-instances", "--image-id", image["ami"]), "InvalidAMIID.NotFound")
    assert [i["ImageId"] for i in d.ok("describe-images", "--owners", "self")["Images"]] == [ami2]
    assert d.ok("deregister-image", "--image-id", ami2, "--delete-associated-snapshots")
    assert_error(d.cli("describe-snapshots", "--snapshot-ids", image["snap"]),
                 "InvalidSnapshot.NotFound")
    assert d.ok("describe-images")["Images"] == []


# ---- reboot, stop, start -----------------------------------------------------------------

def launch_with_data(d, image, seed):
    """An instance with a data volume attached at /dev/sdf, and what was written to its
    root (files, and raw blocks past the file system), data volume and instance store."""
    inst = run1(d, image["ami"])
    iid = inst["InstanceId"]
    dv = d.create_volume(1)["VolumeId"]
    a = d.ok("attach-volume", "--volume-id", dv, "--instance-id", iid, "--device", "/dev/sdf")
    assert a["State"] == "attaching" and a["Device"] == "/dev/sdf"
    inst = describe(d, iid)
    devs = inst["LocalDevices"]
    assert set(devs) == {"/dev/xvda", "/dev/sdb", "/dev/sdf"}
    rnd = random.Random(seed)
    w = {
        "files": {f"home/user/f{i}.bin": rnd.randbytes(rnd.randrange(1, 64 * 1024))
                  for i in range(4)},
        "root": patterns(rnd.random(), 4, FS_SIZE, GIB),
        "data": patterns(rnd.random(), 4, 0, GIB, blocks=4),
        "eph": patterns(rnd.random(), 4, 0, EPH_SIZE, blocks=2),
    }
    root = inst["RootMount"]
    os.makedirs(os.path.join(root, "home/user"))
    for rel, data in w["files"].items():
        write_file(os.path.join(root, rel), data)
    write_patterns(devs["/dev/xvda"], w["root"])
    write_patterns(devs["/dev/sdf"], w["data"])
    write_patterns(devs["/dev/sdb"], w["eph"])
    return iid, dv, w


def check_ebs(d, iid, image, w):
    inst = describe(d, iid)
    devs = inst["LocalDevices"]
    root = inst["RootMount"]
    assert is_mounted(root)
    check_image_files(root, image["files"])
    for rel, data in w["files"].items():
        assert sha256_file(os.path.join(root, rel)) == sha(data), rel
    assert read_patterns(devs["/dev/xvda"], w["root"]) == w["root"]
    assert read_patterns(devs["/dev/sdf"], w["data"]) == w["data"]
    return inst


def test_reboot_keeps_ebs_and_instance_store(daemon, image):
    d = daemon
    iid, dv, w = launch_with_data(d, image, seed=11)
    before = describe(d, iid)
    assert d.cli("reboot-instances", "--instance-ids", iid).out == ""  # prints nothing
    inst = check_ebs(d, iid, image, w)
    assert inst["State"]["Name"] == "running"
    assert inst["LocalDevices"] == before["LocalDevices"]  # same devices, never detached
    assert read_patterns(inst["LocalDevices"]["/dev/sdb"], w["eph"]) == w["eph"]
    assert volume(d, dv)["State"] == "in-use"


def test_stop_start_keeps_ebs_wipes_instance_store(daemon, image):
    d = daemon
    iid, dv, w = launch_with_data(d, image, seed=12)
    eph_name = iid + ".eph0"
    assert eph_name in listdir(d.home, "instance-store")
    out = d.ok("stop-instances", "--instance-ids", iid)["StoppingInstances"]
    assert out == [{"CurrentState": {"Code": 64, "Name": "stopping"}, "InstanceId": iid,
                    "PreviousState": {"Code": 16, "Name": "running"}}]
    inst = describe(d, iid)
    assert inst["State"] == {"Code": 80, "Name": "stopped"}
    assert inst["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert "LocalDevices" not in inst and "RootMount" not in inst
    assert home_loops(d.home) == {} and home_mounts(d.home) == []
    assert eph_name not in listdir(d.home, "instance-store")
    assert eph_name not in listdir(d.home, "mnt")
    assert volume(d, dv)["State"] == "in-use"  # EBS stays attached while stopped

    out = d.ok("start-instances", "--instance-ids", iid)["StartingInstances"]
    assert out[0]["CurrentState"] == {"Code": 0, "Name": "pending"}
    assert out[0]["PreviousState"] == {"Code": 80, "Name": "stopped"}
    inst = check_ebs(d, iid, image, w)
    assert inst["State"] == {"Code": 16, "Name": "running"} and "StateReason" not in inst
    eph = inst["LocalDevices"]["/dev/sdb"]
    assert blockdev_size(eph) == EPH_SIZE
    got = read_patterns(eph, w["eph"])
    assert all(b == bytes(len(b)) for b in got.values()), "instance store survived a stop"


# ---- terminate ---------------------------------------------------------------------------

def test_terminate_deletes_root_keeps_data_volumes(daemon, image, res):
    d = daemon
    iid, dv, w = launch_with_data(d, image, seed=13)
    root_vol = root_volume(describe(d, iid))
    out = d.ok("terminate-instances", "--instance-ids", iid)["TerminatingInstances"]
    assert out[0]["CurrentState"] == {"Code": 32, "Name": "shutting-down"}
    inst = describe(d, iid)  # visible for an hour, without devices
    assert inst["State"] == {"Code": 48, "Name": "terminated"}
    assert inst["BlockDeviceMappings"] == [] and "LocalDevices" not in inst
    assert_error(d.cli("describe-volumes", "--volume-ids", root_vol), "InvalidVolume.NotFound")
    assert root_vol not in listdir(d.home, "volumes") and root_vol not in listdir(d.home, "mnt")
    assert iid not in listdir(d.home, "instances")
    assert home_loops(d.home) == {} and home_mounts(d.home) == []
    v = volume(d, dv)
    assert v["State"] == "available" and v["Attachments"] == []

    # the data volume's bytes, attached to another instance
    other = run1(d, image["ami"])["InstanceId"]
    d.ok("attach-volume", "--volume-id", dv, "--instance-id", other, "--device", "/dev/sdg")
    dev = describe(d, other)["LocalDevices"]["/dev/sdg"]
    assert read_patterns(dev, w["data"]) == w["data"]


def test_terminate_keeps_root_with_delete_on_termination_false(daemon, image, res):
    d = daemon
    keep = json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": False}}])
    inst = run1(d, image["ami"], ITYPE, "--block-device-mappings", keep)
    iid = inst["InstanceId"]
    (m,) = inst["BlockDeviceMappings"]
    assert m["Ebs"]["DeleteOnTermination"] is False
    root_vol = m["Ebs"]["VolumeId"]
    assert volume(d, root_vol)["SnapshotId"] == image["snap"]  # still the image's root
    data = random.Random(14).randbytes(100_000)
    write_file(os.path.join(inst["RootMount"], "etc/kept.bin"), data)
    raw = patterns(15, 3, FS_SIZE, GIB)
    write_patterns(inst["LocalDevices"]["/dev/xvda"], raw)
    d.ok("terminate-instances", "--instance-ids", iid)
    v = volume(d, root_vol)
    assert v["State"] == "available" and v["Attachments"] == []

    other = run1(d, image["ami"])["InstanceId"]
    d.ok("attach-volume", "--volume-id", root_vol, "--instance-id", other, "--device", "/dev/sdh")
    dev = describe(d, other)["LocalDevices"]["/dev/sdh"]
    mnt = res.mount(dev, os.path.join(d.home, "old-root"), "ro")
    try:
        check_image_files(mnt, image["files"])
        assert sha256_file(os.path.join(mnt, "etc/kept.bin")) == sha(data)
    finally:
        res.umount(mnt)
    assert read_patterns(dev, raw) == raw
    d.ok("detach-volume", "--volume-id", root_vol, "--instance-id", other)
    assert volume(d, root_vol)["State"] == "available"


# ---- modify-instance-attribute -----------------------------------------------------------

def test_modify_instance_type_only_when_stopped(daemon, image):
    d = daemon
    iid = run1(d, image["ami"])["InstanceId"]
    r = d.cli("modify-instance-attribute", "--instance-id", iid, "--instance-type", "m3.large")
    assert_error(r, "IncorrectInstanceState")
    assert describe(d, iid)["InstanceType"] == ITYPE
    d.ok("stop-instances", "--instance-ids", iid)
    # the three spellings awscli users write; each prints nothing
    for value, want in (("Value=m3.large", "m3.large"), ('{"Value": "c3.large"}', "c3.large"),
                        ("m3.xlarge", "m3.xlarge")):
        r = d.cli("modify-instance-attribute", "--instance-id", iid, "--instance-type", value)
        assert r.rc == 0 and r.out == "", r.err
        assert describe(d, iid)["InstanceType"] == want
    r = d.cli("modify-instance-attribute", "--instance-id", iid, "--attribute", "instanceType",
              "--value", "m3.large")
    assert r.rc == 0 and r.out == ""
    assert describe(d, iid)["InstanceType"] == "m3.large"
    r = d.cli("modify-instance-attribute", "--instance-id", iid, "--instance-type", "m6g.large")
    assert_error(r, "InvalidParameterCombination")  # arm64 type, x86_64 image
    r = d.cli("modify-instance-attribute", "--instance-id", iid, "--instance-type", "t9.nano")
    assert_error(r, "InvalidInstanceType")
    assert describe(d, iid)["InstanceType"] == "m3.large"
    d.ok("modify-instance-attribute", "--instance-id", iid, "--user-data", "Value=#!/bin/sh")
    d.ok("start-instances", "--instance-ids", iid)
    inst = describe(d, iid)
    assert inst["InstanceType"] == "m3.large" and inst["State"]["Name"] == "running"
    assert blockdev_size(inst["LocalDevices"]["/dev/sdb"]) == 32 * GIB  # m3.large's store


# ---- the instance-store wipe -------------------------------------------------------------

def needles_of(canary, n=16, size=32):
    """Short pieces of the canary, spread over it: any one of them found means a leak."""
    step = len(canary) // n
    return [canary[i * step + 1000:i * step + 1000 + size] for i in range(n)]


def count_in_file(path, needles):
    """Occurrences of any needle in the data (not the holes) of a file."""
    count = 0
    overlap = max(map(len, needles)) - 1
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            tail, pos = b"", start
            while pos < end:
                b = os.pread(fd, min(8 * MIB, end - pos), pos)
                if not b:
                    break
                buf = tail + b
                count += sum(buf.count(n) for n in needles)
                tail = buf[-overlap:]
                pos += len(b)
            off = end
    finally:
        os.close(fd)
    return count


def scan_tree(top, needles, skip=()):
    """{file: occurrences} over every regular file under top, not crossing mount points
    and not entering the paths in skip. Returns the hits and the files scanned."""
    hits, scanned = {}, []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [n for n in dirnames if os.path.join(dirpath, n) not in skip
                       and not os.path.ismount(os.path.join(dirpath, n))]
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            scanned.append(p)
            c = count_in_file(p, needles)
            if c:
                hits[p] = c
    return hits, scanned


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_instance_store_wipe_is_real(daemon, image, tmp_path, how):
    d = daemon
    canary = os.urandom(MIB)
    needles = needles_of(canary)
    # the scanner finds the canary anywhere in a file, at any alignment
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(12345) + canary + os.urandom(777))
    assert count_in_file(str(probe), needles) == len(needles)

    inst = run1(d, image["ami"])
    iid = inst["InstanceId"]
    eph = inst["LocalDevices"]["/dev/sdb"]
    off = 1 * GIB + 64 * MIB
    pwrite_direct(eph, off, canary)
    assert pread_direct(eph, off, MIB) == canary
    store = os.path.join(d.home, "instance-store", iid + ".eph0")
    data = os.path.join(store, "data")
    hits, scanned = scan_tree(os.path.join(d.home, "instance-store"), needles)
    assert data in scanned and hits == {}, f"plaintext in the instance store: {hits}"
    with open(data, "rb") as f:  # identity-mapped, encrypted: ciphertext at the same place
        f.seek(off)
        cipher = f.read(MIB)
    assert len(cipher) == MIB and cipher != canary and cipher.count(0) < MIB // 64

    if how == "stop":
        d.ok("stop-instances", "--instance-ids", iid)
    else:
        d.kill9()
        # the daemon is gone; its file is still there, encrypted under a key that died
        assert os.path.getsize(data) == EPH_SIZE
        assert count_in_file(data, needles) == 0
        d.start()
        assert describe(d, iid)["State"]["Name"] == "stopped"
    assert not os.path.exists(store)
    hits, scanned = scan_tree(d.home, needles, skip={os.path.join(d.home, "mnt")})
    assert hits == {}, f"the canary survived in {hits}"
    names = {os.path.relpath(p, d.home).split("/")[0] for p in scanned}
    assert {"catalog.db", "catalog.db-wal", "catalog.db-shm", "volumes", "regions",
            "ebsimd.log"} <= names, names
    # and a new instance store reads zeros where the canary was
    d.ok("start-instances", "--instance-ids", iid)
    assert pread_direct(describe(d, iid)["LocalDevices"]["/dev/sdb"], off, MIB) == bytes(MIB)


# ---- daemon restart ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_daemon_restart_stops_instances_keeps_ebs(daemon, image, how):
    d = daemon
    iid, dv, w = launch_with_data(d, image, seed=16)
    stopped_one = run1(d, image["ami"])["InstanceId"]
    d.ok("stop-instances", "--instance-ids", stopped_one)
    if how == "stop":
        d.stop()
    else:
        d.kill9()
    d.start()
    inst = describe(d, iid)
    assert inst["State"] == {"Code": 80, "Name": "stopped"}
    assert inst["StateReason"]["Code"] == "Server.InternalError", inst["StateReason"]
    assert "LocalDevices" not in inst and "RootMount" not in inst
    other = describe(d, stopped_one)
    assert other["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert home_loops(d.home) == {}, "stale loop devices"
    assert home_mounts(d.home) == []
    assert listdir(d.home, "instance-store") == []
    assert volume(d, dv)["State"] == "in-use"
    d.ok("start-instances", "--instance-ids", iid)
    inst = check_ebs(d, iid, image, w)
    got = read_patterns(inst["LocalDevices"]["/dev/sdb"], w["eph"])
    assert all(b == bytes(len(b)) for b in got.values())
    d.ok("start-instances", "--instance-ids", stopped_one)
    check_image_files(describe(d, stopped_one)["RootMount"], image["files"])


# ---- launch checks -----------------------------------------------------------------------

def test_launch_checks(daemon, res):
    d = daemon
    snap, files = make_base(d, res)
    hvm = register(d, snap, "ebsim-hvm")
    arm = register(d, snap, "ebsim-arm64", arch="arm64")
    pv = register(d, snap, "ebsim-pv", virt="paravirtual")
    before = world(d)
    cases = [
        (arm, "t3.micro", "InvalidParameterCombination"),
        (hvm, "m6g.large", "InvalidParameterCombination"),
        (pv, "t3.micro", "InvalidParameterCombination"),
        (pv, "m5.large", "InvalidParameterCombination"),
        ("ami-0123456789abcdef0", "t3.micro", "InvalidAMIID.NotFound"),
        ("ami-XYZ", "t3.micro", "InvalidAMIID.Malformed"),
        ("ami-../x", "t3.micro", "InvalidAMIID.Malformed"),
        (hvm, "t9.nano", "InvalidInstanceType"),
    ]
    for ami, itype, code in cases:
        r = d.cli("run-instances", "--image-id", ami, "--instance-type", itype)
        assert_error(r, code)
        assert world(d) == before, (ami, itype)
    # describe-images filters
    def names(*filters):
        return sorted(i["Name"] for i in d.ok("describe-images", "--filters", *filters)["Images"])
    assert names("Name=architecture,Values=arm64") == ["ebsim-arm64"]
    assert names("Name=virtualization-type,Values=paravirtual") == ["ebsim-pv"]
    assert names("Name=name,Values=ebsim-*", "Name=architecture,Values=x86_64") == \
        ["ebsim-hvm", "ebsim-pv"]
    assert names("Name=is-public,Values=true") == []
    assert names(f"Name=image-id,Values={hvm},{arm}") == ["ebsim-arm64", "ebsim-hvm"]
    assert_error(d.cli("describe-images", "--filters", "Name=colour,Values=red"),
                 "InvalidParameterValue")
    # the same images on types that fit them
    for ami, itype in ((pv, "m3.medium"), (pv, "t1.micro"), (arm, "m6g.large"), (hvm, "t3.micro")):
        inst = run1(d, ami, itype)
        assert describe(d, inst["InstanceId"])["State"]["Name"] == "running", (ami, itype)
        check_image_files(inst["RootMount"], files)
        d.ok("terminate-instances", "--instance-ids", inst["InstanceId"])


def test_placement_zone(daemon, image):
    d = daemon
    inst = run1(d, image["ami"], ITYPE, "--placement", '{"AvailabilityZone": "us-east-1b"}')
    iid = inst["InstanceId"]
    assert inst["Placement"] == {"AvailabilityZone": "us-east-1b"}
    assert volume(d, root_volume(inst))["AvailabilityZone"] == "us-east-1b"
    other_zone = d.create_volume(1)["VolumeId"]  # us-east-1a
    r = d.cli("attach-volume", "--volume-id", other_zone, "--instance-id", iid, "--device", "/dev/sdf")
    assert_error(r, "InvalidVolume.ZoneMismatch")
    same_zone = d.create_volume(1, "--availability-zone", "us-east-1b")["VolumeId"]
    d.ok("attach-volume", "--volume-id", same_zone, "--instance-id", iid, "--device", "/dev/sdf")
    before = world(d)
    for placement, code in (('{"AvailabilityZone": "eu-west-1a"}', "InvalidZone.NotFound"),
                            ('{"AvailabilityZone": "us-east-1z"}', "InvalidZone.NotFound"),
                            ('"us-east-1a"', "InvalidParameterValue")):
        r = d.cli("run-instances", "--image-id", image["ami"], "--instance-type", ITYPE,
                  "--placement", placement)
        assert_error(r, code)
        assert world(d) == before, placement


# ---- bad input ---------------------------------------------------------------------------

def test_attach_errors_and_terminated_instances(daemon, image):
    d = daemon
    a = run1(d, image["ami"])["InstanceId"]
    b = run1(d, image["ami"])["InstanceId"]
    v = d.create_volume(1)
    w = d.create_volume(1)["VolumeId"]
    d.ok("attach-volume", "--volume-id", v["VolumeId"], "--instance-id", a, "--device", "/dev/sdf")
    devs = describe(d, a)["LocalDevices"]
    r = d.cli("attach-volume", "--volume-id", v["VolumeId"], "--instance-id", b, "--device", "/dev/sdf")
    assert_error(r, "VolumeInUse")
    for dev in ("/dev/sdf", "/dev/xvda", "/dev/sdb", "sdf"):
        r = d.cli("attach-volume", "--volume-id", w, "--instance-id", a, "--device", dev)
        assert_error(r, "InvalidParameterValue")
    # a volume someone holds open through its LocalPath is in use too
    fd = os.open(volume(d, w)["LocalPath"], os.O_RDONLY)
    try:
        r = d.cli("attach-volume", "--volume-id", w, "--instance-id", b, "--device", "/dev/sdf")
        assert_error(r, "VolumeInUse")
    finally:
        os.close(fd)
    r = d.cli("detach-volume", "--volume-id", root_volume(describe(d, a)))
    assert_error(r, "IncorrectState")  # the root of a running instance
    assert_error(d.cli("detach-volume", "--volume-id", w), "IncorrectState")  # not attached
    assert describe(d, a)["LocalDevices"] == devs
    assert volume(d, w)["State"] == "available"

    d.ok("terminate-instances", "--instance-ids", b)
    before = world(d)
    for verb in ("stop-instances", "start-instances", "reboot-instances"):
        assert_error(d.cli(verb, "--instance-ids", b), "IncorrectInstanceState")
    r = d.cli("attach-volume", "--volume-id", w, "--instance-id", b, "--device", "/dev/sdf")
    assert_error(r, "IncorrectInstanceState")
    r = d.cli("modify-instance-attribute", "--instance-id", b, "--instance-type", "m3.large")
    assert_error(r, "IncorrectInstanceState")
    # one terminated instance in the list: the whole call changes nothing
    assert_error(d.cli("stop-instances", "--instance-ids", a, b), "IncorrectInstanceState")
    assert world(d) == before
    out = d.ok("terminate-instances", "--instance-ids", b)["TerminatingInstances"]
    assert out[0]["PreviousState"]["Name"] == out[0]["CurrentState"]["Name"] == "terminated"
    assert describe(d, a)["State"]["Name"] == "running"


def test_run_instances_failure_rolls_back(daemon, image):
    d = daemon
    big = d.create_volume(2)["VolumeId"]
    pwrite_direct(volume(d, big)["LocalPath"], GIB + 4096, os.urandom(BLK))
    big_snap = snapshot(d, big)["SnapshotId"]
    before = world(d)
    created = d.log().count(" created vol-")
    cases = [
        # the root volume is created first, then the second mapping fails
        ([{"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": "snap-0123456789abcdef0"}}],
         "InvalidSnapshot.NotFound"),
        ([{"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": big_snap, "VolumeSize": 1}}],
         "InvalidBlockDeviceMapping"),
        ([{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20000}}], "InvalidBlockDeviceMapping"),
    ]
    for bdm, code in cases:
        r = d.cli("run-instances", "--image-id", image["ami"], "--instance-type", ITYPE,
                  "--count", "2", "--block-device-mappings", json.dumps(bdm))
        assert_error(r, code)
        assert world(d) == before, bdm
    # the failures came after volumes were made: what was undone had been done
    assert d.log().count(" created vol-") >= created + 2


# ---- instance-store-backed images --------------------------------------------------------

def test_stop_instance_store_backed_is_unsupported(daemon, tmp_path):
    # a real bundle: an ext4 image bundled with ebsim-ami, uploaded, registered
    from test_bundle_launch import bundle, make_image, register as register_bundle, \
        upload, user_keys
    d = daemon
    key, cert = user_keys(tmp_path)
    img = make_image(tmp_path, 64 * MIB, {"etc/hostname": b"instance-store\n"})
    dest = bundle(d, tmp_path, img, "is-root", key, cert)
    ami = register_bundle(d, upload(d, dest, "is-root", cert), "ebsim-instance-store")
    inst = run1(d, ami)
    assert inst["RootDeviceType"] == "instance-store"
    before = world(d)
    r = d.cli("stop-instances", "--instance-ids", inst["InstanceId"])
    assert_error(r, "UnsupportedOperation")
    assert describe(d, inst["InstanceId"])["State"]["Name"] == "running"
    assert world(d) == before
    with open(os.path.join(describe(d, inst["InstanceId"])["RootMount"], "etc/hostname")) as f:
        assert f.read() == "instance-store\n"
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"])


# ---- performance: launch time does not follow image size ----------------------------------

def median_launch(d, ami, n=3):
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        inst = run1(d, ami)
        times.append(time.monotonic() - t0)
        assert is_mounted(inst["RootMount"])
        d.ok("terminate-instances", "--instance-ids", inst["InstanceId"])
    return statistics.median(times)


def test_launch_time_vs_full_copy(daemon, res):
    d = daemon
    snap1, _ = make_base(d, res, 1, seed=21)
    snap8, files8 = make_base(d, res, 8, fs_size=8 * GIB, seed=22)
    ami1 = register(d, snap1, "ebsim-1g")
    ami8 = register(d, snap8, "ebsim-8g")
    t1 = median_launch(d, ami1)
    t8 = median_launch(d, ami8)
    # a full copy reads every byte once: time a read of the 8 GiB restored volume
    path = d.ok("create-volume", "--snapshot-id", snap8)["LocalPath"]
    t0 = time.monotonic()
    run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none"])
    tc = time.monotonic() - t0
    print(f"\nrun-instances (root restored lazily and mounted), median of 3: "
          f"1 GiB AMI {t1 * 1000:.0f} ms, 8 GiB AMI {t8 * 1000:.0f} ms; "
          f"reading the 8 GiB image once (a lower bound of a full copy): {tc:.2f} s "
          f"({8 * GIB / tc / 1e9:.2f} GB/s)")


# ---- the model ---------------------------------------------------------------------------

# under ASan (10x slower CLI and daemon) the paths, not the count, are the point
MODEL_SEQUENCES = 1000 if STRESS else 50 if SANITIZED else 200
DATA_DEVS = ("/dev/sdf", "/dev/sdg")
SLOTS = 8  # 4 KiB slots per region, at random offsets chosen once per run


class Inst:
    def __init__(self, iid, root_vol):
        self.iid, self.root_vol = iid, root_vol
        self.state = "running"
        self.root = {}  # raw root blocks past the file system, by slot
        self.eph = {}  # instance-store blocks written since the last start, by slot
        self.files = {}  # file name -> bytes, on the root file system
        self.devs = None  # LocalDevices when last seen running
        self.rebooted = False


class Model:
    """DESIGN.md's lifecycle table, with every byte the test wrote.

    After every step the states, devices, links, loop devices and volume states are
    compared, and the bytes of what the step touched; at the end of each sequence every
    byte of every instance and data volume is read back."""

    def __init__(self, d, image, rnd):
        self.d, self.image, self.rnd = d, image, rnd
        self.insts = {}  # iid -> Inst (at most 2 terminated ones kept, as targets)
        self.terminated = []
        self.vols = {}  # data volume id -> {"data": {slot: bytes}, "att": (iid, dev) | None}
        self.slot_off = {
            "root": [o * BLK for o in rnd.sample(range(FS_SIZE // BLK, GIB // BLK), SLOTS)],
            "eph": [o * BLK for o in rnd.sample(range(EPH_SIZE // BLK), SLOTS)],
            "data": [o * BLK for o in rnd.sample(range(GIB // BLK), SLOTS)],
        }
        self.log = []
        # what the last step may have changed: whole instances, (instance, region) pairs,
        # data volumes, volume states
        self.touched, self.regions, self.touched_vols = set(), set(), set()
        self.vol_change = False
        self.stats = collections.Counter()  # (action, outcome) -> count

    def live(self):
        return [i for i in self.insts.values() if i.state != "terminated"]

    def running(self):
        return [i for i in self.insts.values() if i.state == "running"]

    def attached_to(self, iid):
        """{device: volume id} of the data volumes attached to instance iid."""
        return {v["att"][1]: vid for vid, v in self.vols.items()
                if v["att"] and v["att"][0] == iid}

    def pick(self):
        """An instance to act on: a live one, and now and then a terminated one."""
        live, dead = self.live(), [self.insts[i] for i in self.terminated]
        if dead and (not live or self.rnd.random() < 0.15):
            return self.rnd.choice(dead)
        return self.rnd.choice(live) if live else None

    def expect(self, r, code, what):
        assert r.rc in (0, 254), (what, r.rc, r.err)
        got = None if r.rc == 0 else r.error_code()
        assert got == code, f"{what}: expected {code or 'success'}, got {got}: {r.err}"
        self.stats[(what.split()[0], code or "ok")] += 1

    def touch(self, i):
        self.touched.add(i.iid)
        self.touched_vols |= set(self.attached_to(i.iid).values())
        self.vol_change = True

    # -- actions: each returns a line for the log, or None when it does not apply
    def act_run(self):
        if len(self.live()) >= 2:
            return None
        inst = run1(self.d, self.image["ami"])
        self.stats[("run", "ok")] += 1
        i = Inst(inst["InstanceId"], root_volume(inst))
        self.insts[i.iid] = i
        self.touch(i)
        return f"run -> {i.iid}"

    def act_lifecycle(self, verb):
        i = self.pick()
        if not i:
            return None
        self.touch(i)
        r = self.d.cli(f"{verb}-instances", "--instance-ids", i.iid)
        if i.state == "terminated":  # terminating again is a no-op
            code = None if verb == "terminate" else "IncorrectInstanceState"
        elif verb == "reboot" and i.state != "running":
            code = "IncorrectInstanceState"
        else:  # stop of a stopped, start of a running instance: no-ops
            code = None
        self.expect(r, code, f"{verb} {i.iid} ({i.state})")
        if code:
            return f"{verb} {i.iid} ({i.state}): {code}"
        line = f"{verb} {i.iid} ({i.state})"
        if verb == "stop" and i.state == "running":
            i.state, i.eph = "stopped", {}
        elif verb == "start" and i.state == "stopped":
            i.state = "running"
        elif verb == "reboot":
            i.rebooted = True
        elif verb == "terminate" and i.state != "terminated":
            i.state = "terminated"
            for v in self.vols.values():
                if v["att"] and v["att"][0] == i.iid:
                    v["att"] = None
            self.terminated.append(i.iid)
            if len(self.terminated) > 2:
                del self.insts[self.terminated.pop(0)]
        return line

    def act_attach(self):
        i = self.pick()
        if not i:
            return None
        free = [vid for vid, v in self.vols.items() if not v["att"]]
        vid = self.rnd.choice(free if free and self.rnd.random() < 0.8 else list(self.vols))
        v = self.vols[vid]
        dev = self.rnd.choice(DATA_DEVS + DATA_DEVS + ("/dev/sdb", "/dev/xvda"))
        self.touch(i)
        self.touched_vols.add(vid)
        r = self.d.cli("attach-volume", "--volume-id", vid, "--instance-id", i.iid,
                       "--device", dev)
        if i.state not in ("running", "stopped"):  # the daemon's order of checks
            code = "IncorrectInstanceState"
        elif v["att"]:
            code = "VolumeInUse"
        elif dev in {"/dev/xvda", "/dev/sdb"} | set(self.attached_to(i.iid)):
            code = "InvalidParameterValue"
        else:
            code = None
        self.expect(r, code, f"attach {vid} to {i.iid} ({i.state}) at {dev}")
        if not code:
            v["att"] = (i.iid, dev)
        return f"attach {vid} -> {i.iid} ({i.state}) {dev}: {code or 'ok'}"

    def act_detach(self):
        attached = [vid for vid, v in self.vols.items() if v["att"]]
        vid = self.rnd.choice(attached if attached and self.rnd.random() < 0.85
                              else list(self.vols))
        v = self.vols[vid]
        self.touched_vols.add(vid)
        self.vol_change = True
        r = self.d.cli("detach-volume", "--volume-id", vid)
        self.expect(r, None if v["att"] else "IncorrectState", f"detach {vid}")
        line = f"detach {vid} from {v['att']}"
        v["att"] = None
        return line

    def act_write(self, where):
        running = self.running()
        if not running:
            return None
        i = self.rnd.choice(running)
        devs = i.devs  # as the check after the previous step saw them
        if where == "file":
            name = f"m{self.rnd.randrange(4)}.bin"
            data = self.rnd.randbytes(self.rnd.randrange(1, 3 * BLK))
            write_file(os.path.join(self.d.home, "instances", i.iid, "root", name), data)
            i.files[name] = data
            self.stats[("write", "file")] += 1
            self.regions.add((i.iid, "file"))
            return f"file {i.iid} {name} ({len(data)} bytes)"
        if where == "data":
            mine = self.attached_to(i.iid)
            if not mine:
                return None
            dev = self.rnd.choice(sorted(mine))
            loop, store = devs[dev], self.vols[mine[dev]]["data"]
            self.touched_vols.add(mine[dev])
        else:
            loop = devs["/dev/xvda" if where == "root" else "/dev/sdb"]
            store = i.root if where == "root" else i.eph
            self.regions.add((i.iid, where))
        slots = self.rnd.sample(range(SLOTS), self.rnd.randint(1, 3))
        for s in slots:
            data = self.rnd.randbytes(BLK)
            pwrite_direct(loop, self.slot_off[where][s], data)
            store[s] = data
        self.stats[("write", where)] += 1
        return f"write {where} {i.iid} slots {slots}"

    def step(self):
        acts = [(self.act_run, 2), (lambda: self.act_lifecycle("reboot"), 2),
                (lambda: self.act_lifecycle("stop"), 2), (lambda: self.act_lifecycle("start"), 2),
                (lambda: self.act_lifecycle("terminate"), 1), (self.act_attach, 2),
                (self.act_detach, 1), (lambda: self.act_write("root"), 3),
                (lambda: self.act_write("eph"), 3), (lambda: self.act_write("data"), 3),
                (lambda: self.act_write("file"), 2)]
        while True:
            fn = self.rnd.choices([a for a, _ in acts], [w for _, w in acts])[0]
            line = fn()
            if line:
                self.log.append(line)
                return

    def check_slots(self, path, region, want, what):
        buf = mmap.mmap(-1, BLK)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            for s, off in enumerate(self.slot_off[region]):
                assert os.preadv(fd, [buf], off) == BLK, f"{what} slot {s}: short read"
                assert buf[:] == want.get(s, ZERO), f"{what} slot {s}"
        finally:
            os.close(fd)
            buf.close()

    def check(self, full=False):
        d = self.d
        got = {i["InstanceId"]: i for r in d.ok("describe-instances")["Reservations"]
               for i in r["Instances"]}
        vols = ({v["VolumeId"]: v for v in d.ok("describe-volumes")["Volumes"]}
                if full or self.vol_change else None)
        mnt = os.path.join(os.path.realpath(d.home), "mnt")
        want_loops = {}
        for i in self.insts.values():
            g = got[i.iid]
            assert g["State"]["Name"] == i.state, (i.iid, g["State"], i.state)
            if i.state == "terminated":
                assert g["BlockDeviceMappings"] == [] and "LocalDevices" not in g
                assert vols is None or i.root_vol not in vols, "root survived terminate"
                continue
            mine = self.attached_to(i.iid)
            ebs = sorted(m["DeviceName"] for m in g["BlockDeviceMappings"])
            assert ebs == sorted({"/dev/xvda"} | set(mine)), (i.iid, ebs, mine)
            assert vols is None or vols[i.root_vol]["State"] == "in-use"
            whole = full or i.iid in self.touched

            def look(region, i=i, whole=whole):
                return whole or (i.iid, region) in self.regions
            if i.state == "stopped":
                assert "LocalDevices" not in g and "RootMount" not in g, g
                if whole:  # the root volume is still readable through its LocalPath
                    path = vols[i.root_vol]["LocalPath"] if vols else \
                        volume(d, i.root_vol)["LocalPath"]
                    self.check_slots(path, "root", i.root, f"{i.iid} root (stopped)")
                continue
            devs = g["LocalDevices"]
            assert set(devs) == {"/dev/xvda", "/dev/sdb"} | set(mine), devs
            if i.rebooted:
                assert devs == i.devs, "reboot changed the devices"
            i.rebooted, i.devs = False, devs
            for dev, loop in devs.items():
                link = os.path.join(d.home, "instances", i.iid, "dev", os.path.basename(dev))
                assert os.readlink(link) == loop, (link, loop)
            want_loops[devs["/dev/xvda"]] = os.path.join(mnt, i.root_vol)
            want_loops[devs["/dev/sdb"]] = os.path.join(mnt, i.iid + ".eph0")
            for dev, vid in mine.items():
                want_loops[devs[dev]] = os.path.join(mnt, vid)
            assert is_mounted(g["RootMount"])
            if look("root"):
                self.check_slots(devs["/dev/xvda"], "root", i.root, f"{i.iid} root")
            if look("eph"):
                self.check_slots(devs["/dev/sdb"], "eph", i.eph, f"{i.iid} instance store")
            if look("file"):
                for name, data in i.files.items():
                    with open(os.path.join(g["RootMount"], name), "rb") as f:
                        assert f.read() == data, f"{i.iid} file {name}"
            if full:
                check_image_files(g["RootMount"], self.image["files"])
        for vid, v in self.vols.items():
            a = v["att"]
            assert vols is None or vols[vid]["State"] == ("in-use" if a else "available"), vid
            if not (full or vid in self.touched_vols):
                continue
            inst = self.insts.get(a[0]) if a else None
            path = (got[a[0]]["LocalDevices"][a[1]] if inst and inst.state == "running"
                    else volume(d, vid)["LocalPath"])
            self.check_slots(path, "data", v["data"], f"{vid} via {path}")
        assert home_loops(d.home) == want_loops
        self.touched, self.regions, self.touched_vols = set(), set(), set()
        self.vol_change = False


def test_model_random_sequences(daemon, res):
    d = daemon
    seed = int(os.environ.get("EBSIM_MODEL_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nmodel seed {seed} (replay: EBSIM_MODEL_SEED={seed}), "
          f"{MODEL_SEQUENCES} sequences")
    rnd = random.Random(seed)
    snap, files = make_base(d, res)
    image = {"ami": register(d, snap, "ebsim-model"), "snap": snap, "files": files}
    m = Model(d, image, rnd)
    for _ in range(2):
        m.vols[d.create_volume(1)["VolumeId"]] = {"data": {}, "att": None}
    # the run must not be vacuous: every kind of step happens, errors included; past
    # MODEL_SEQUENCES it goes on (up to 4x) until each of these has happened at least once
    wanted = [("run", "ok"), ("reboot", "ok"), ("stop", "ok"), ("start", "ok"),
              ("terminate", "ok"), ("attach", "ok"), ("detach", "ok"),
              ("attach", "VolumeInUse"), ("attach", "InvalidParameterValue"),
              ("reboot", "IncorrectInstanceState"), ("write", "root"), ("write", "eph"),
              ("write", "data"), ("write", "file")]
    t0 = time.monotonic()
    steps = seq = 0
    while seq < MODEL_SEQUENCES or (seq < 4 * MODEL_SEQUENCES and
                                    not all(m.stats[w] for w in wanted)):
        seq += 1
        m.log = []
        n = rnd.randint(3, 7)
        for k in range(n):
            m.step()
            steps += 1
            try:
                m.check(full=k == n - 1)
            except AssertionError as e:
                raise AssertionError(f"seed {seed}, sequence {seq}, step {k}: {e}\n"
                                     "this sequence: " + "; ".join(m.log)) from None
    dt = time.monotonic() - t0
    print(f"{seq} sequences, {steps} steps in {dt:.1f} s "
          f"({dt / steps * 1000:.0f} ms per step, with its check)")
    print("outcomes:", ", ".join(f"{a} {o}: {n}" for (a, o), n in sorted(m.stats.items())))
    for want in wanted:
        assert m.stats[want], f"no {want} in {seq} sequences (seed {seed})"


# ---- the lifecycle issue's leftovers -------------------------------------------------------

def test_describe_instances_pagination(daemon, image):
    d = daemon
    ami = register(d, image["snap"], "ebsim-no-store", ephemeral=False)
    out = d.ok("run-instances", "--image-id", ami, "--instance-type", "t3.micro", "--count", "7")
    ids = {i["InstanceId"] for i in out["Instances"]}
    assert len(ids) == 7

    def flat(reply):
        return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]

    p1 = d.ok("describe-instances", "--max-results", "5")
    assert len(flat(p1)) == 5 and p1["NextToken"]
    assert p1["Reservations"][0]["ReservationId"] == out["ReservationId"]
    p2 = d.ok("describe-instances", "--max-results", "5", "--next-token", p1["NextToken"])
    assert len(flat(p2)) == 2 and "NextToken" not in p2
    assert set(flat(p1)) | set(flat(p2)) == ids and not set(flat(p1)) & set(flat(p2))
    # a token alone continues to the end; the whole list without MaxResults has no token
    assert set(flat(d.ok("describe-instances", "--next-token", p1["NextToken"]))) == \
        set(flat(p2))
    everything = d.ok("describe-instances")
    assert set(flat(everything)) == ids and "NextToken" not in everything
    # filters apply before the page is cut
    f = d.ok("describe-instances", "--max-results", "5", "--filters",
             f"Name=instance-id,Values={sorted(ids)[0]}")
    assert flat(f) == [sorted(ids)[0]] and "NextToken" not in f
    for bad in ("4", "1001", "0", "-5"):
        assert_error(d.cli("describe-instances", "--max-results", bad), "InvalidParameterValue")
    assert_error(d.cli("describe-instances", "--max-results", "5", "--instance-ids",
                       sorted(ids)[0]), "InvalidParameterCombination")
    assert_error(d.cli("describe-instances", "--max-results", "5", "--next-token", "nope"),
                 "InvalidParameterValue")
    d.ok("terminate-instances", "--instance-ids", *sorted(ids))


def test_detach_volume_checks_device(daemon, image):
    d = daemon
    inst = run1(d, image["ami"])
    iid = inst["InstanceId"]
    vid = d.create_volume(1)["VolumeId"]
    d.ok("attach-volume", "--volume-id", vid, "--instance-id", iid, "--device", "/dev/sdf")
    for dev in ("/dev/sdg", "sdg", "/dev/xvda"):
        assert_error(d.cli("detach-volume", "--volume-id", vid, "--device", dev),
                     "InvalidAttachment.NotFound")
        assert_error(d.cli("detach-volume", "--volume-id", vid, "--instance-id", iid,
                           "--device", dev), "InvalidAttachment.NotFound")
    # nothing changed: still attached, its device still there
    assert volume(d, vid)["State"] == "in-use"
    assert "/dev/sdf" in describe(d, iid)["LocalDevices"]
    out = d.ok("detach-volume", "--volume-id", vid, "--instance-id", iid, "--device", "sdf")
    assert out["State"] == "detaching" and out["Device"] == "/dev/sdf"
    assert volume(d, vid)["State"] == "available"
    assert "/dev/sdf" not in describe(d, iid)["LocalDevices"]
    d.ok("terminate-instances", "--instance-ids", iid)


def test_detach_waits_for_the_device_to_let_go(daemon, image):
    """The kernel drops a loop device's reference to its file only when the last opener of
    the device closes it (udev's blkid probe after every attach does this under load).
    Detach waits for that: once it returns the volume is available and attaches again."""
    d = daemon
    iid = run1(d, image["ami"])["InstanceId"]
    vid = d.create_volume(1)["VolumeId"]
    d.ok("attach-volume", "--volume-id", vid, "--instance-id", iid, "--device", "/dev/sdf")
    loop = describe(d, iid)["LocalDevices"]["/dev/sdf"]
    fd = os.open(loop, os.O_RDONLY)  # a late opener of the device, like blkid
    closer = threading.Timer(1.0, os.close, (fd,))
    closer.start()
    try:
        d.ok("detach-volume", "--volume-id", vid)
        assert volume(d, vid)["State"] == "available"
        d.ok("attach-volume", "--volume-id", vid, "--instance-id", iid, "--device", "/dev/sdg")
    finally:
        closer.join()
    assert volume(d, vid)["State"] == "in-use"
    assert "/dev/sdg" in describe(d, iid)["LocalDevices"]
    d.ok("detach-volume", "--volume-id", vid)
    d.ok("terminate-instances", "--instance-ids", iid)


def test_kernel_and_ramdisk_ids(daemon, image):
    d = daemon
    inst = run1(d, image["ami"], ITYPE, "--kernel-id", "aki-919dcaf8", "--ramdisk-id",
                "ari-0123456789abcdef0")
    assert inst["KernelId"] == "aki-919dcaf8" and inst["RamdiskId"] == "ari-0123456789abcdef0"
    got = describe(d, inst["InstanceId"])
    assert got["KernelId"] == "aki-919dcaf8" and got["RamdiskId"] == "ari-0123456789abcdef0"
    # none given and none in the image: none shown
    plain = run1(d, image["ami"])
    assert "KernelId" not in plain and "RamdiskId" not in plain
    before = world(d)
    for opt, bad in (("--kernel-id", "aki-xyz"), ("--kernel-id", "ari-12345678"),
                     ("--kernel-id", "aki-1234567"), ("--kernel-id", "aki-0123456789ABCDEF0"),
                     ("--ramdisk-id", "aki-12345678"), ("--ramdisk-id", "ari-")):
        assert_error(d.cli("run-instances", "--image-id", image["ami"], "--instance-type",
                           ITYPE, opt, bad), "InvalidParameterValue")
    assert world(d) == before
    # modify-instance-attribute applies the same rule
    d.ok("stop-instances", "--instance-ids", plain["InstanceId"])
    assert_error(d.cli("modify-instance-attribute", "--instance-id", plain["InstanceId"],
                       "--kernel", "Value=bogus"), "InvalidParameterValue")
    d.ok("modify-instance-attribute", "--instance-id", plain["InstanceId"], "--kernel",
         "Value=aki-88aa75e1")
    assert describe(d, plain["InstanceId"])["KernelId"] == "aki-88aa75e1"
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], plain["InstanceId"])


def test_kernel_defaults_from_the_image(make_daemon, tmp_path):
    d = make_daemon(base_images=True, cache_dir=str(tmp_path / "cache"))
    imgs = {i["VirtualizationType"]: i
            for i in d.ok("describe-images", "--owners", "amazon")["Images"]}
    pv = imgs["paravirtual"]
    inst = run1(d, pv["ImageId"], "m1.small")
    assert inst["KernelId"] == pv["KernelId"]
    assert describe(d, inst["InstanceId"])["KernelId"] == pv["KernelId"]
    over = run1(d, pv["ImageId"], "m1.small", "--kernel-id", "aki-88aa75e1")
    assert describe(d, over["InstanceId"])["KernelId"] == "aki-88aa75e1"
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], over["InstanceId"])


def test_start_after_type_change_creates_new_instance_store(daemon, image):
    d = daemon
    # the image maps ephemeral0 at /dev/sdb; the launch also asks for ephemeral1 at /dev/sdc,
    # which m3.medium (one instance-store volume) cannot give
    bdm = [{"DeviceName": "/dev/sdc", "VirtualName": "ephemeral1"}]
    inst = run1(d, image["ami"], "m3.medium", "--block-device-mappings", json.dumps(bdm))
    iid = inst["InstanceId"]
    assert set(inst["LocalDevices"]) == {"/dev/xvda", "/dev/sdb"}
    d.ok("stop-instances", "--instance-ids", iid)
    d.ok("modify-instance-attribute", "--instance-id", iid, "--instance-type",
         "Value=m3.xlarge")  # two 40 GiB instance-store volumes
    d.ok("start-instances", "--instance-ids", iid)
    got = describe(d, iid)
    assert got["InstanceType"] == "m3.xlarge" and got["State"]["Name"] == "running"
    devs = got["LocalDevices"]
    assert set(devs) == {"/dev/xvda", "/dev/sdb", "/dev/sdc"}
    for dev in ("/dev/sdb", "/dev/sdc"):
        size = blockdev_size(devs[dev])
        assert size == 40 * GIB
        # fresh and empty: zeros at the start, the middle and the end
        for off in (0, size // 2, size - MIB):
            assert pread_direct(devs[dev], off, MIB) == bytes(MIB), (dev, off)
    # and usable
    pats = patterns(7, 4, 0, 40 * GIB)
    write_patterns(devs["/dev/sdc"], pats)
    assert read_patterns(devs["/dev/sdc"], pats) == pats
    # back to one volume: /dev/sdc goes away at the next start
    d.ok("stop-instances", "--instance-ids", iid)
    d.ok("modify-instance-attribute", "--instance-id", iid, "--instance-type",
         "Value=m3.medium")
    d.ok("start-instances", "--instance-ids", iid)
    assert set(describe(d, iid)["LocalDevices"]) == {"/dev/xvda", "/dev/sdb"}
    d.ok("terminate-instances", "--instance-ids", iid)


def test_launch_restores_the_root_lazily(daemon, res):
    """run-instances does not copy the image: right after launch (root mounted) the new root
    volume still reads almost all of its snapshot's chunks from the store; reading the
    image's big file afterwards is what fetches them."""
    d = daemon
    v = d.create_volume(8)
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", "ebsim-root", v["LocalPath"]])
    mnt = os.path.join(d.home, "image-build")
    loop = res.losetup(v["LocalPath"])
    res.mount(loop, mnt)
    res.assert_mounted(mnt)
    big = random.Random(5).randbytes(96 * MIB)
    write_file(os.path.join(mnt, "big.bin"), big)
    res.umount(mnt)
    res.detach(loop)
    snap = snapshot(d, v["VolumeId"])["SnapshotId"]
    ami = register(d, snap, "ebsim-8g-lazy", ephemeral=False)
    inst = run1(d, ami, "t3.micro")
    assert is_mounted(inst["RootMount"])
    st = volume(d, root_volume(inst))["InitializationStatusDetails"]
    # the file alone is 1536 of the snapshot's chunks: mounting touched a few metadata ones
    assert st["State"] == "lazy" and st["Progress"] <= 5, st
    assert sha256_file(os.path.join(inst["RootMount"], "big.bin")) == sha(big)
    st = volume(d, root_volume(inst))["InitializationStatusDetails"]
    assert st["Progress"] >= 80, st
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"])

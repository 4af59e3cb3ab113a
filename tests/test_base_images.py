# SPDX-License-Identifier: MIT
"""The base AMIs: a fresh home offers two public images owned by the amazon account
(BusyBox on ext4, x86_64, one HVM and one paravirtual), which any account can launch;
BuildBaseImages rebuilds and replaces them; the image file is built once per cache and
only imported by later homes.

Design notes
------------
- Every test uses a private cache directory (``cache_dir``) so that tests running at the
  same time never rebuild a cache another test is checking; the daemon's default cache
  (/var/cache/ebsim) is not touched.
- Launch checks are outcomes in the instance's root mount: the files exist with the
  expected content, and ``chroot ROOT /bin/busybox true`` runs the image's own binary.
- BuildBaseImages is sent over the control socket (the protocol of common/ctl_proto.h):
  ``ebsim-ami build-base`` is the user's way, written elsewhere.
"""
import json
import os
import socket
import subprocess

import pytest

from conftest import is_mounted, run

AMAZON = "137112412989"
OTHER = "111122223333"
NAMES = {"hvm": "ebsim-base-busybox-{v}-x86_64-hvm",
         "paravirtual": "ebsim-base-busybox-{v}-x86_64-paravirtual"}
ITYPES = {"paravirtual": "m1.small", "hvm": "t3.micro"}


def busybox_version():
    out = subprocess.run(["/bin/busybox"], capture_output=True, text=True).stdout
    return out.split()[1].lstrip("v")  # "BusyBox v1.35.0 (...)"


def ctl(d, action, params=None, account=None, region=None):
    """One control request; returns the decoded reply ({"Result"} or {"Error"})."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(os.path.join(d.home, "ebsimd.sock"))
    req = {"Action": action, "Account": account or d.account, "Region": region or d.region,
           "Params": params or {}}
    s.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    s.close()
    return json.loads(buf)


def base_images(d, account=None, region=None):
    imgs = d.ok("describe-images", "--owners", "amazon", account=account,
                region=region)["Images"]
    return {i["VirtualizationType"]: i for i in imgs}


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def cache_file(cache):
    """The one image file of the cache, named by the BusyBox version (and a format)."""
    names = [n for n in os.listdir(cache)
             if n.startswith(f"base-busybox-{busybox_version()}-") and n.endswith(".ext4")]
    assert len(names) == 1, names
    return os.path.join(cache, names[0])


def check_images(imgs):
    v = busybox_version()
    assert set(imgs) == {"hvm", "paravirtual"}
    for virt, i in imgs.items():
        assert i["Name"] == NAMES[virt].format(v=v)
        assert i["OwnerId"] == AMAZON and i["ImageOwnerAlias"] == "amazon"
        assert i["Public"] is True and i["State"] == "available"
        assert i["Architecture"] == "x86_64" and i["RootDeviceType"] == "ebs"
        m = i["BlockDeviceMappings"][0]
        assert m["DeviceName"] == i["RootDeviceName"]
        assert m["Ebs"]["SnapshotId"].startswith("snap-") and m["Ebs"]["VolumeSize"] == 1
    assert imgs["paravirtual"]["KernelId"].startswith("aki-")


def test_fresh_home_offers_base_images(make_daemon, cache):
    d = make_daemon(base_images=True, cache_dir=cache)
    imgs = base_images(d)
    check_images(imgs)
    # visible to any account, with or without --owners, and by owner id
    other = base_images(d, account=OTHER)
    assert {k: v["ImageId"] for k, v in other.items()} == \
        {k: v["ImageId"] for k, v in imgs.items()}
    ids = {i["ImageId"] for i in d.ok("describe-images", account=OTHER)["Images"]}
    assert ids >= {i["ImageId"] for i in imgs.values()}
    assert len(d.ok("describe-images", "--owners", AMAZON)["Images"]) == 2
    # but they are not the caller's own
    assert d.ok("describe-images", "--owners", "self")["Images"] == []
    # another region gets its own on its first request
    eu = base_images(d, region="eu-west-1")
    check_images(eu)
    assert not {i["ImageId"] for i in eu.values()} & {i["ImageId"] for i in imgs.values()}
    # the amazon account owns them: nobody else may deregister them
    r = d.cli("deregister-image", "--image-id", imgs["hvm"]["ImageId"])
    assert r.rc == 254 and r.error_code() == "AuthFailure", r.err


def check_root(inst):
    root = inst["RootMount"]
    assert is_mounted(root)
    for rel in ("sbin/init", "etc/fstab", "boot/grub/menu.lst", "etc/os-release",
                "etc/hostname", "bin/busybox"):
        assert os.path.isfile(os.path.join(root, rel)), rel
    for rel, mode in (("sbin/init", 0o755), ("bin/busybox", 0o755), ("tmp", 0o1777),
                      ("etc/fstab", 0o644), ("bin", 0o755), ("proc", 0o555)):
        assert os.stat(os.path.join(root, rel)).st_mode & 0o7777 == mode, rel
    assert os.readlink(os.path.join(root, "bin/sh")) == "busybox"
    with open(os.path.join(root, "etc/os-release")) as f:
        assert "ID=ebsim-base" in f.read()
    with open(os.path.join(root, "boot/grub/menu.lst")) as f:
        assert "root (hd0)" in f.read()
    run(["chroot", root, "/bin/busybox", "true"])
    out = run(["chroot", root, "/bin/sh", "-c", "echo $(cat /etc/hostname) ok"]).stdout
    assert out == "ebsim-base ok\n"


@pytest.mark.parametrize("virt", ["paravirtual", "hvm"])
def test_launch_base_image(make_daemon, cache, virt):
    d = make_daemon(base_images=True, cache_dir=cache)
    img = base_images(d, account=OTHER)[virt]
    out = d.ok("run-instances", "--image-id", img["ImageId"], "--instance-type", ITYPES[virt],
               account=OTHER)
    inst = out["Instances"][0]
    assert inst["VirtualizationType"] == virt and inst["ImageId"] == img["ImageId"]
    check_root(inst)
    # the root volume belongs to the launching account, restored from amazon's snapshot
    vid = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    vol = d.ok("describe-volumes", "--volume-ids", vid, account=OTHER)["Volumes"][0]
    assert vol["SnapshotId"] == img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    # the wrong virtualization type for the instance type is refused as EC2 does
    wrong = "t3.micro" if virt == "paravirtual" else "m1.small"
    if virt == "paravirtual":
        r = d.cli("run-instances", "--image-id", img["ImageId"], "--instance-type", wrong,
                  account=OTHER)
        assert r.rc == 254 and r.error_code() == "InvalidParameterCombination", r.err
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], account=OTHER)


def test_build_base_images_replaces_them(make_daemon, cache):
    d = make_daemon(base_images=True, cache_dir=cache)
    old = base_images(d)
    mtime = os.stat(cache_file(cache)).st_mtime_ns
    inst = d.ok("run-instances", "--image-id", old["hvm"]["ImageId"], "--instance-type",
                "t3.micro", account=OTHER)["Instances"][0]
    check_root(inst)
    rep = ctl(d, "BuildBaseImages")
    assert "Result" in rep, rep
    new = base_images(d)
    check_images(new)
    assert {i["ImageId"] for i in rep["Result"]["Images"]} == \
        {i["ImageId"] for i in new.values()}
    assert not {i["ImageId"] for i in new.values()} & {i["ImageId"] for i in old.values()}
    assert os.stat(cache_file(cache)).st_mtime_ns != mtime
    r = d.cli("describe-images", "--image-ids", old["hvm"]["ImageId"])
    assert r.rc == 254 and r.error_code() == "InvalidAMIID.NotFound", r.err
    # the instance launched from the old image is unaffected, and a reboot remounts it
    check_root(d.ok("describe-instances", "--instance-ids", inst["InstanceId"],
                    account=OTHER)["Reservations"][0]["Instances"][0])
    d.ok("reboot-instances", "--instance-ids", inst["InstanceId"], account=OTHER)
    check_root(d.ok("describe-instances", "--instance-ids", inst["InstanceId"],
                    account=OTHER)["Reservations"][0]["Instances"][0])
    # the new ones launch
    inst2 = d.ok("run-instances", "--image-id", new["hvm"]["ImageId"], "--instance-type",
                 "t3.micro", account=OTHER)["Instances"][0]
    check_root(inst2)
    # the action takes no parameters
    bad = ctl(d, "BuildBaseImages", {"Bogus": 1})
    assert bad["Error"]["Code"] == "UnknownParameter", bad
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], inst2["InstanceId"],
         account=OTHER)


def test_cache_reused_across_homes(make_daemon, cache):
    a = make_daemon(subhome="a", base_images=True, cache_dir=cache)
    assert "base images: built " in a.log()
    mtime = os.stat(cache_file(cache)).st_mtime_ns
    ids_a = {i["ImageId"] for i in base_images(a).values()}
    a.stop()
    b = make_daemon(subhome="b", base_images=True, cache_dir=cache)
    assert os.stat(cache_file(cache)).st_mtime_ns == mtime
    assert "base images: built " not in b.log()
    assert "base images: using the cached " in b.log()
    imgs = base_images(b)
    check_images(imgs)
    assert not {i["ImageId"] for i in imgs.values()} & ids_a
    # a restart of the same home neither rebuilds nor registers them twice
    b.stop()
    b.start()
    assert {i["ImageId"] for i in base_images(b).values()} == \
        {i["ImageId"] for i in imgs.values()}
    assert b.log().count("base images: built ") == 0


def test_no_base_images(daemon):
    assert daemon.ok("describe-images", "--owners", "amazon")["Images"] == []
    rep = ctl(daemon, "BuildBaseImages")
    assert rep["Error"]["Code"] == "UnsupportedOperation", rep

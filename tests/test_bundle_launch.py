# SPDX-License-Identifier: MIT
"""Instance-store-backed AMIs on the daemon side: register-image --image-location of a
bundle made and uploaded by ebsim-ami, and run-instances from it (the root is unbundled
onto an instance-store volume), proven with real data: an ext4 image built with
``mkfs.ext4 -d`` from known files is bundled, registered, launched, and the files are read
back through the instance's root mount and compared by sha256.

Design notes
------------
- A bundle is made the way a user makes one: a user key and self-signed certificate
  (openssl), ``ebsim-ami bundle-image`` into a temporary directory, ``ebsim-ami
  upload-bundle`` into the region's bucket (which registers the certificate as the
  account's signing certificate the first time). Helpers ``bundle()`` and ``upload()``
  are the only places that know the tool's options.
- Every refused registration is followed by describe-images: nothing registered.
- Every refused launch is followed by ``world()`` (test_instances.py): no volume, instance,
  loop device backed by a file under the home, mount under the home, or file under
  H/instance-store appeared.
- Tampering is done as an attacker with write access to the object store would: bytes of
  a part or the manifest are changed in H/regions/<region>/buckets/<bucket>/.
- The launch-time figure compares an EBS-backed and an instance-store-backed AMI of the
  same image (64 MiB and 256 MiB ext4 file systems full of random data): the EBS root is restored
  lazily, the instance-store root is a full verified copy, so the order is certain at this
  size; only the order is asserted, the figures are printed.
"""
import hashlib
import json
import os
import shutil
import time

import pytest

from conftest import is_mounted, run, sha256_file
from test_instances import BLK, assert_error, describe, pread_direct, world
from test_snapshots import snapshot

MIB = 1 << 20
GIB = 1 << 30
ITYPE = "m3.medium"  # x86_64, hvm + paravirtual, one instance-store volume (ephemeral0)
BUCKET = "ebsim-bundles"
OTHER = "210987654321"


def ebsim_ami(d):
    return os.path.join(os.path.dirname(d.ebsim), "ebsim-ami")


def user_keys(tmp, name="user"):
    """A user's RSA key and self-signed X.509 certificate, as ec2-bundle-image wants."""
    key, cert = str(tmp / f"{name}-key.pem"), str(tmp / f"{name}-cert.pem")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "2", "-subj", f"/CN=ebsim-test-{name}"])
    return key, cert


def make_image(tmp, size, files, name="image.img"):
    """An ext4 file system of `size` bytes holding files {relative path: bytes}."""
    src = tmp / (name + ".d")
    for rel, data in files.items():
        os.makedirs(src / os.path.dirname(rel), exist_ok=True)
        with open(src / rel, "wb") as f:
            f.write(data)
    img = str(tmp / name)
    # 4 KiB blocks: the loop devices have 4 KiB logical blocks (mke2fs picks 1 KiB for
    # file systems this small, which such a device cannot mount)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), "-L", "bundle-root", img,
         str(size // 1024) + "k"])
    return img


def bundle(d, tmp, img, prefix, key, cert, account=None, arch="x86_64",
           bdm="ami=sda1,root=/dev/sda1,ephemeral0=sdb"):
    """ebsim-ami bundle-image: returns the directory holding PREFIX.manifest.xml + parts."""
    dest = tmp / ("bundle-" + prefix)
    os.makedirs(dest, exist_ok=True)
    run([ebsim_ami(d), "--home", d.home, "--region", d.region, "bundle-image",
         "-i", img, "-k", key, "-c", cert, "-u", account or d.account, "-r", arch,
         "-p", prefix, "-d", str(dest), "-B", bdm])
    assert os.path.exists(dest / f"{prefix}.manifest.xml")
    return dest


def upload(d, dest, prefix, cert, account=None, bucket=BUCKET):
    run([ebsim_ami(d), "--home", d.home, "--region", d.region,
         "--account", account or d.account, "upload-bundle", "-b", bucket,
         "-m", str(dest / f"{prefix}.manifest.xml"), "-c", cert])
    return f"{bucket}/{prefix}.manifest.xml"


def bucket_dir(d, bucket=BUCKET):
    return os.path.join(d.home, "regions", d.region, "buckets", bucket)


def images(d, account=None):
    return d.ok("describe-images", "--owners", "self", account=account)["Images"]


def register(d, loc, name, account=None):
    return d.ok("register-image", "--name", name, "--image-location", loc,
                account=account)["ImageId"]


def first_part(d, prefix, bucket=BUCKET):
    """The path of the bundle's first part in the bucket (part.0, part.00, ...)."""
    parts = sorted(n for n in os.listdir(bucket_dir(d, bucket))
                   if n.startswith(prefix + ".part."))
    assert parts, os.listdir(bucket_dir(d, bucket))
    return os.path.join(bucket_dir(d, bucket), parts[0])


def flip_byte(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))


FILES = {
    "etc/fstab": b"LABEL=bundle-root / ext4 defaults 0 1\n",
    "etc/hostname": b"instance-store\n",
    "opt/data/known.bin": os.urandom(3 * MIB + 4321),
    "opt/data/small.txt": b"hello from a bundle\n",
}


@pytest.fixture
def keys(tmp_path):
    return user_keys(tmp_path)


@pytest.fixture
def uploaded(daemon, tmp_path, keys):
    """A 64 MiB ext4 image of FILES, bundled and uploaded: {"loc", "img", "dest"}."""
    key, cert = keys
    img = make_image(tmp_path, 64 * MIB, FILES)
    dest = bundle(daemon, tmp_path, img, "is-root", key, cert)
    return {"loc": upload(daemon, dest, "is-root", cert), "img": img, "dest": dest}


# ---- register + launch -------------------------------------------------------------------

def test_register_launch_reboot_stop_terminate(daemon, uploaded):
    d = daemon
    before = world(d)
    ami = register(d, uploaded["loc"], "bundle-image-1")
    (img,) = images(d)
    assert img["ImageId"] == ami
    assert img["RootDeviceType"] == "instance-store"
    assert img["ImageLocation"] == uploaded["loc"]
    assert img["RootDeviceName"] == "/dev/sda1"
    assert img["Architecture"] == "x86_64"
    assert img["State"] == "available"
    assert img["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    assert not any(k.startswith("_") for k in img)
    flt = d.ok("describe-images", "--filters", "Name=root-device-type,Values=instance-store")
    assert [i["ImageId"] for i in flt["Images"]] == [ami]
    assert d.ok("describe-images", "--filters", "Name=root-device-type,Values=ebs")["Images"] == []
    # the same name again: as the EBS path
    r = d.cli("register-image", "--name", "bundle-image-1", "--image-location", uploaded["loc"])
    assert_error(r, "InvalidAMIName.Duplicate")
    r = d.cli("register-image", "--name", "x", "--image-location", uploaded["loc"])
    assert_error(r, "InvalidAMIName.Malformed")

    out = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE)
    inst = out["Instances"][0]
    iid = inst["InstanceId"]
    assert inst["RootDeviceType"] == "instance-store"
    inst = describe(d, iid)
    assert inst["State"]["Name"] == "running"
    assert inst["BlockDeviceMappings"] == []  # no EBS volume at all
    assert d.ok("describe-volumes")["Volumes"] == []
    assert "RootMount" in inst, d.log()[-3000:]
    root = inst["RootMount"]
    assert is_mounted(root)
    for rel, data in FILES.items():
        assert sha256_file(os.path.join(root, rel)) == hashlib.sha256(data).hexdigest(), rel
    # the image reached the volume itself before "running", not only the loop device's
    # page cache: read a block of known.bin through the volume's FUSE file with O_DIRECT
    with open(uploaded["img"], "rb") as f:
        image = f.read()
    off = image.find(FILES["opt/data/known.bin"][:BLK])
    assert off > 0 and off % BLK == 0
    fuse_file = os.path.join(d.home, "mnt", f"{iid}.root")
    assert pread_direct(fuse_file, off, 64 * BLK) == image[off:off + 64 * BLK]
    # the root is an instance-store volume, with the image's size rounded up to GiB
    store = os.listdir(os.path.join(d.home, "instance-store"))
    assert f"{iid}.root" in store
    assert os.path.getsize(os.path.join(d.home, "mnt", f"{iid}.root")) == 1 * GIB
    # the root holds no plaintext of the image: it is encrypted with an in-memory key
    with open(uploaded["img"], "rb") as f:
        needle = f.read()[1024:1024 + 4096]  # the ext4 superblock region
    data_file = os.path.join(d.home, "instance-store", f"{iid}.root", "data")
    with open(data_file, "rb") as f:
        assert needle not in f.read(8 * MIB)

    # reboot keeps the root
    d.ok("reboot-instances", "--instance-ids", iid)
    inst = describe(d, iid)
    assert inst["State"]["Name"] == "running" and is_mounted(inst["RootMount"])
    assert sha256_file(os.path.join(inst["RootMount"], "opt/data/known.bin")) == \
        hashlib.sha256(FILES["opt/data/known.bin"]).hexdigest()

    # stop: UnsupportedOperation, nothing changes
    w = world(d)
    assert_error(d.cli("stop-instances", "--instance-ids", iid), "UnsupportedOperation")
    assert world(d) == w
    assert describe(d, iid)["State"]["Name"] == "running"

    # terminate: the root is destroyed (key forgotten, file removed)
    d.ok("terminate-instances", "--instance-ids", iid)
    assert describe(d, iid)["State"]["Name"] == "terminated"
    after = world(d)
    after["instances"] = [i for i in after["instances"] if i[0] != iid]
    assert after == before

    # deregistering leaves the bundle where it was: it registers again
    d.ok("deregister-image", "--image-id", ami)
    assert images(d) == []
    assert os.path.exists(os.path.join(bucket_dir(d), "is-root.manifest.xml"))
    register(d, uploaded["loc"], "bundle-image-1")


def test_daemon_restart_terminates(daemon, uploaded):
    d = daemon
    ami = register(d, uploaded["loc"], "bundle-image-2")
    iid = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE)["Instances"][0]["InstanceId"]
    d.stop()
    d.start()
    inst = describe(d, iid)
    assert inst["State"]["Name"] == "terminated"
    assert os.listdir(os.path.join(d.home, "instance-store")) == []
    # the image survives and launches again
    iid2 = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE)["Instances"][0]["InstanceId"]
    root = describe(d, iid2)["RootMount"]
    with open(os.path.join(root, "opt/data/small.txt"), "rb") as f:
        assert f.read() == FILES["opt/data/small.txt"]
    d.ok("terminate-instances", "--instance-ids", iid2)


# ---- refused registrations ---------------------------------------------------------------

def test_register_refusals(daemon, uploaded, tmp_path, keys):
    d = daemon
    d.expect_errors()
    loc = uploaded["loc"]
    prefix = "is-root"

    def refused(code, location, why="", account=None, name="refused-image"):
        r = d.cli("register-image", "--name", name, "--image-location", location,
                  account=account)
        assert_error(r, code)
        assert why in r.err, r.err
        assert images(d) == [] and images(d, account=OTHER) == []

    # names are checked before the file system is touched
    for bad in ["AB/is-root.manifest.xml", "../is-root.manifest.xml",
                "a..b/is-root.manifest.xml", "ab/../../../etc/passwd", "ebsim-bundles",
                "ebsim-bundles/", "ebsim-bundles/.hidden", "ebsim-bundles/a/b",
                "-bucket/x.manifest.xml", "x" * 64 + "/a.manifest.xml"]:
        refused("InvalidParameterValue", bad, "ImageLocation")
    # a manifest that is not there
    refused("InvalidManifest", f"{BUCKET}/nothing.manifest.xml", "does not exist")
    refused("InvalidManifest", "no-such-bucket/is-root.manifest.xml", "no bucket")
    # a symlink planted in the bucket is not followed
    os.symlink("/etc/passwd", os.path.join(bucket_dir(d), "link.manifest.xml"))
    refused("InvalidManifest", f"{BUCKET}/link.manifest.xml")
    # another account cannot register this account's bundle
    refused("AuthFailure", loc, "bundled by account", account=OTHER)

    # a tampered part: its digest no longer matches
    part = first_part(d, prefix)
    saved = open(part, "rb").read()
    flip_byte(part, 1000)
    refused("InvalidManifest", loc, "parts")
    with open(part, "wb") as f:
        f.write(saved)
    # a missing part
    os.rename(part, part + ".away")
    refused("InvalidManifest", loc, "parts")
    os.rename(part + ".away", part)
    # a tampered manifest: the signature no longer verifies
    man = os.path.join(bucket_dir(d), f"{prefix}.manifest.xml")
    text = open(man, "rb").read()
    with open(man, "wb") as f:
        f.write(text.replace(b"x86_64", b"i386", 1))
    r = d.cli("register-image", "--name", "refused-image", "--image-location", loc)
    assert_error(r, "InvalidManifest")
    assert "signature" in r.err
    assert images(d) == []
    with open(man, "wb") as f:
        f.write(text)

    # signed with a foreign key: a bundle made by someone else, dropped into the bucket
    key2, cert2 = user_keys(tmp_path, "foreign")
    dest2 = bundle(d, tmp_path, uploaded["img"], "foreign", key2, cert2)
    for n in os.listdir(dest2):
        shutil.copy(dest2 / n, os.path.join(bucket_dir(d), n))
    r = d.cli("register-image", "--name", "refused-image",
              "--image-location", f"{BUCKET}/foreign.manifest.xml")
    assert_error(r, "InvalidManifest")
    assert "signature" in r.err
    assert images(d) == []

    # an account without a signing certificate
    acct = "333333333333"
    dest3 = bundle(d, tmp_path, uploaded["img"], "nocert", *user_keys(tmp_path, "nocert"),
                   account=acct)
    for n in os.listdir(dest3):
        shutil.copy(dest3 / n, os.path.join(bucket_dir(d), n))
    refused("AuthFailure", f"{BUCKET}/nocert.manifest.xml", "no signing certificate",
            account=acct)

    # encrypted for another region's EC2 key: the daemon could never unbundle it
    west = os.path.join(d.home, "regions", "us-west-2", "ec2-cert.pem")
    os.makedirs(tmp_path / "bundle-westkey")
    run([ebsim_ami(d), "--home", d.home, "--region", "us-west-2", "bundle-image", "-i",
         uploaded["img"], "-k", keys[0], "-c", keys[1], "-u", d.account, "-r", "x86_64",
         "-p", "westkey", "-d", str(tmp_path / "bundle-westkey")])
    assert os.path.exists(west)
    for n in os.listdir(tmp_path / "bundle-westkey"):
        shutil.copy(tmp_path / "bundle-westkey" / n, os.path.join(bucket_dir(d), n))
    refused("InvalidManifest", f"{BUCKET}/westkey.manifest.xml", "EC2 key")

    # parameters that contradict the manifest
    for extra, code in [
            (["--architecture", "arm64"], "InvalidParameterValue"),
            (["--root-device-name", "/dev/xvda"], "InvalidParameterValue"),
            (["--block-device-mappings",
              '[{"DeviceName": "/dev/sdc", "VirtualName": "ephemeral1"}]'],
             "InvalidParameterCombination")]:
        r = d.cli("register-image", "--name", "refused-image", "--image-location", loc, *extra)
        assert_error(r, code)
        assert images(d) == []

    # the untouched bundle still registers
    register(d, loc, "good-after-refusals")


# ---- refused launch -----------------------------------------------------------------------

def test_launch_after_tamper_leaves_nothing(daemon, uploaded):
    d = daemon
    d.expect_errors()
    ami = register(d, uploaded["loc"], "bundle-image-3")
    before = world(d)
    part = first_part(d, "is-root")
    flip_byte(part, 4096)
    r = d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE, "--count", "2")
    assert_error(r, "InvalidManifest")
    assert world(d) == before
    assert os.listdir(os.path.join(d.home, "instance-store")) == []
    flip_byte(part, 4096)  # restored: it launches
    iid = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE)["Instances"][0]["InstanceId"]
    assert is_mounted(describe(d, iid)["RootMount"])
    d.ok("terminate-instances", "--instance-ids", iid)


# ---- launch time: EBS-backed vs instance-store-backed -------------------------------------

def launch_time(d, ami):
    t0 = time.monotonic()
    inst = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE)["Instances"][0]
    t = time.monotonic() - t0
    inst = describe(d, inst["InstanceId"])
    assert inst["State"]["Name"] == "running" and is_mounted(inst["RootMount"])
    digest = sha256_file(os.path.join(inst["RootMount"], "opt/fill.bin"))
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"])
    return t, digest


def test_launch_time_ebs_vs_instance_store(daemon, tmp_path, keys):
    d = daemon
    key, cert = keys
    figures = []
    for size, data in ((64 * MIB, 48 * MIB), (256 * MIB, 200 * MIB)):
        tag = f"t{size // MIB}"
        fill = os.urandom(data)
        img = make_image(tmp_path, size, {"opt/fill.bin": fill}, name=tag + ".img")
        want = hashlib.sha256(fill).hexdigest()
        # instance-store-backed
        dest = bundle(d, tmp_path, img, tag, key, cert)
        ami_is = register(d, upload(d, dest, tag, cert), tag + "-instance-store")
        # EBS-backed: the same image written into a volume, snapshotted, registered
        v = d.create_volume(1)
        run(["dd", f"if={img}", f"of={v['LocalPath']}", "bs=4M", "conv=notrunc,fsync",
             "status=none"])
        snap = snapshot(d, v["VolumeId"])["SnapshotId"]
        ami_ebs = d.ok("register-image", "--name", tag + "-ebs", "--root-device-name",
                       "/dev/sda1", "--block-device-mappings",
                       json.dumps([{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}])
                       )["ImageId"]
        d.ok("delete-volume", "--volume-id", v["VolumeId"])
        t_ebs, h_ebs = launch_time(d, ami_ebs)
        t_is, h_is = launch_time(d, ami_is)
        assert h_ebs == h_is == want
        figures.append((size, data, t_ebs, t_is))
    print("\nrun-instances request->running (ext4 image, random data in one file):")
    for size, data, t_ebs, t_is in figures:
        print(f"  {size // MIB} MiB image ({data // MIB} MiB of data): EBS-backed "
              f"{t_ebs * 1000:.0f} ms, instance-store-backed {t_is * 1000:.0f} ms")
    # the order only, and only where the gap is large: a lazy restore against a full,
    # verified copy of 200 MiB
    size, data, t_ebs, t_is = figures[-1]
    assert t_is > t_ebs

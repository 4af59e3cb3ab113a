# SPDX-License-Identifier: MIT
"""AMIs made from instances (create-image), the image catalog (describe-images), copy-image,
deregister-image, and the errors of bad input.

Design notes
------------
- The proof of create-image is data: files are written through the running instance's root
  mount and through a data volume that the test formats and mounts from the instance's
  loop device (LocalDevices), the image is created, and an instance launched from it must
  hold the same files (sha256) on its root and on the data volume of the same mapping.
- Point in time: a writer keeps creating numbered files (each written, then fsynced) in the
  root mount while create-image --no-reboot runs. The image must hold a prefix of them:
  every file acknowledged before the call, no gaps, each complete; at most one last file
  that was created but not yet written (empty).
- A create-image that fails after it started some snapshots must leave nothing: the
  failure is a real catalog refusal, made by a trigger the test adds to its own daemon's
  catalog (SQLite, WAL: another connection may change the schema while the daemon runs;
  the daemon's statements are prepared again) and drops right after the call. The proof
  that the undone snapshots gave the volumes back their changed bits: the data written
  between each volume's last snapshot and the failed call is in the next snapshot.
- A pending image is observed race-free: run-instances is called while the snapshot still
  copies a large volume, and its answer counts only if describe-images says 'pending'
  after it (the state only moves pending -> available).
"""
import hashlib
import json
import os
import random
import sqlite3
import threading
import time

import pytest

from conftest import run, sha256_file
from test_instances import (ITYPE, assert_error, check_image_files, describe, make_base,
                            register, run1, write_file)
from test_launch_permissions import call
from test_snapshots import sha_range, wait_completed, write_pattern

GIB = 1 << 30
MIB = 1 << 20


def wait_image(d, ami, want="available", region=None, timeout=60, account=None):
    for _ in range(int(timeout / 0.05)):
        img = d.ok("describe-images", "--image-ids", ami, region=region,
                   account=account)["Images"][0]
        if img["State"] != "pending":
            break
        time.sleep(0.05)
    assert img["State"] == want, img
    return img


def mount_count(dev):
    """ext4's mount count (its superblock): one more after an unmount and a mount."""
    out = run(["dumpe2fs", "-h", dev]).stdout
    return int(next(l for l in out.splitlines() if l.startswith("Mount count:")).split()[-1])


def mappings(img):
    return {m["DeviceName"]: m for m in img["BlockDeviceMappings"]}


@pytest.fixture
def base(daemon, res):
    snap, files = make_base(daemon, res)
    return {"ami": register(daemon, snap, "ebsim-base"), "snap": snap, "files": files}


def launch_with_data_volume(d, res, ami, size=2):
    """An instance with /dev/sdf: an empty data volume, formatted and mounted by the test."""
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": size, "DeleteOnTermination": True,
                                               "VolumeType": "gp3"}}]
    inst = run1(d, ami, ITYPE, "--block-device-mappings", json.dumps(bdm))
    loop = inst["LocalDevices"]["/dev/sdf"]
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop])
    mnt = res.mount(loop, os.path.join(d.home, "data-" + inst["InstanceId"]))
    return inst, mnt


def test_create_image_captures_root_and_data_volume(daemon, res, base):
    d = daemon
    inst, data_mnt = launch_with_data_volume(d, res, base["ami"])
    root = inst["RootMount"]
    res.assert_mounted(root)
    res.assert_mounted(data_mnt)
    rnd = random.Random(7)
    on_root = {"home/user/notes.txt": b"written on the running instance\n",
               "var/lib/app/blob.bin": rnd.randbytes(3 * MIB + 17)}
    on_data = {"db/table.dat": rnd.randbytes(5 * MIB + 3), "README": b"data volume\n"}
    for rel, data in on_root.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        write_file(os.path.join(root, rel), data)
    for rel, data in on_data.items():
        os.makedirs(os.path.join(data_mnt, os.path.dirname(rel)), exist_ok=True)
        write_file(os.path.join(data_mnt, rel), data)

    devs = inst["LocalDevices"]["/dev/xvda"], inst["LocalDevices"]["/dev/sdf"]
    counts = [mount_count(dev) for dev in devs]
    ami = d.ok("create-image", "--instance-id", inst["InstanceId"], "--name", "from-instance",
               "--description", "made by the test")["ImageId"]
    # reboot semantics: both file systems were unmounted and are mounted again where they were
    res.assert_mounted(root)
    res.assert_mounted(data_mnt)
    assert [mount_count(dev) for dev in devs] == [n + 1 for n in counts]
    assert sha256_file(os.path.join(data_mnt, "README")) == hashlib.sha256(b"data volume\n").hexdigest()
    img = wait_image(d, ami)
    assert img["SourceInstanceId"] == inst["InstanceId"]
    assert img["RootDeviceName"] == "/dev/xvda" and img["RootDeviceType"] == "ebs"
    assert img["Architecture"] == "x86_64" and img["VirtualizationType"] == "hvm"
    assert "Platform" not in img and img["PlatformDetails"] == "Linux/UNIX"
    m = mappings(img)
    assert set(m) == {"/dev/xvda", "/dev/sdf", "/dev/sdb"}
    assert m["/dev/sdb"] == {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}
    assert m["/dev/xvda"]["Ebs"]["VolumeSize"] == 1
    assert m["/dev/xvda"]["Ebs"]["DeleteOnTermination"] is True
    assert m["/dev/sdf"]["Ebs"]["VolumeSize"] == 2 and m["/dev/sdf"]["Ebs"]["VolumeType"] == "gp3"
    snaps = {m[k]["Ebs"]["SnapshotId"] for k in ("/dev/xvda", "/dev/sdf")}
    for s in d.ok("describe-snapshots", "--snapshot-ids", *snaps)["Snapshots"]:
        assert s["State"] == "completed"
        assert s["Description"] == f"Created by CreateImage({inst['InstanceId']}) for {ami}"

    # a new instance from the image holds the same files
    new = run1(d, ami)
    res.assert_mounted(new["RootMount"])
    check_image_files(new["RootMount"], base["files"])
    for rel, data in on_root.items():
        assert sha256_file(os.path.join(new["RootMount"], rel)) == hashlib.sha256(data).hexdigest()
    mnt2 = res.mount(new["LocalDevices"]["/dev/sdf"], os.path.join(d.home, "data-new"))
    res.assert_mounted(mnt2)
    for rel, data in on_data.items():
        assert sha256_file(os.path.join(mnt2, rel)) == hashlib.sha256(data).hexdigest()
    vols = {mm["DeviceName"]: mm["Ebs"]["VolumeId"] for mm in new["BlockDeviceMappings"]}
    v = d.ok("describe-volumes", "--volume-ids", vols["/dev/sdf"])["Volumes"][0]
    assert v["SnapshotId"] in snaps and v["Size"] == 2 and v["VolumeType"] == "gp3"


@pytest.mark.parametrize("mode", ["no-reboot", "reboot-busy"])
def test_create_image_is_point_in_time(daemon, res, base, mode):
    """--no-reboot freezes the root; without it, a root that cannot be unmounted (the test
    holds its directory open) is frozen instead. Either way the image is a point in time
    and the writer goes on."""
    d = daemon
    inst = run1(d, base["ami"])
    root = inst["RootMount"]
    res.assert_mounted(root)
    wdir = os.path.join(root, "stream")
    os.makedirs(wdir)
    busy = os.open(wdir, os.O_RDONLY | os.O_DIRECTORY)
    root_count = mount_count(inst["LocalDevices"]["/dev/xvda"])
    done = []
    stop = threading.Event()

    def payload(i):
        return random.Random(i).randbytes(20000 + i % 5000)

    def writer():
        i = 0
        while not stop.is_set():
            write_file(os.path.join(wdir, f"{i:06d}"), payload(i))
            done.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(done) < 50:
            time.sleep(0.01)
        before = len(done)
        ami = d.ok("create-image", "--instance-id", inst["InstanceId"], "--name", "pit",
                   *(["--no-reboot"] if mode == "no-reboot" else []))["ImageId"]
        after = len(done)
        while len(done) < after + 20:  # the writer goes on after the thaw
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
        os.close(busy)
    res.assert_mounted(root)
    assert mount_count(inst["LocalDevices"]["/dev/xvda"]) == root_count  # frozen, not unmounted
    if mode == "reboot-busy":
        assert "is busy" in d.log() and "freezing it instead" in d.log()
    wait_image(d, ami)
    new = run1(d, ami)
    res.assert_mounted(new["RootMount"])
    names = sorted(os.listdir(os.path.join(new["RootMount"], "stream")))
    got = [int(n) for n in names]
    assert got == list(range(len(got))), "the image has a gap: not a point in time"
    complete = [i for i in got
                if sha256_file(os.path.join(new["RootMount"], "stream", f"{i:06d}"))
                == hashlib.sha256(payload(i)).hexdigest()]
    # every file is complete except, at most, the last one, created and not yet written
    assert complete == got[:len(complete)] and len(got) - len(complete) <= 1
    if len(got) > len(complete):
        assert os.path.getsize(os.path.join(new["RootMount"], "stream", names[-1])) == 0
    assert before <= len(complete) <= after + 1, (before, len(complete), after)
    assert len(done) > after  # and the writer was never stopped for good


def test_create_image_remounts_a_path_with_a_space(daemon, base):
    """mountinfo writes a space in a mount point as \\040: create-image must mount the file
    system back at the real path. (conftest's is_mounted does not unescape, so this test
    mounts and unmounts by hand, by exact path.)"""
    d = daemon
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]
    inst = run1(d, base["ami"], ITYPE, "--block-device-mappings", json.dumps(bdm))
    loop = inst["LocalDevices"]["/dev/sdf"]
    run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop])
    mnt = os.path.join(d.home, "data of " + inst["InstanceId"])
    os.makedirs(mnt)
    run(["mount", loop, mnt])
    try:
        assert os.path.ismount(mnt)
        before = mount_count(loop)
        d.ok("create-image", "--instance-id", inst["InstanceId"], "--name", "spaced")
        assert os.path.ismount(mnt) and mount_count(loop) == before + 1
    finally:
        if os.path.ismount(mnt):
            run(["umount", mnt])
    assert "cannot mount" not in d.log()


def test_create_image_stopped_terminated_and_overrides(daemon, res, base):
    d = daemon
    inst, data_mnt = launch_with_data_volume(d, res, base["ami"])
    res.umount(data_mnt)
    iid = inst["InstanceId"]
    d.ok("stop-instances", "--instance-ids", iid)
    bdm = [{"DeviceName": "/dev/sdf", "NoDevice": ""},
           {"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": False, "VolumeSize": 3}},
           {"DeviceName": "/dev/sdg", "Ebs": {"VolumeSize": 4}}]
    tags = [{"ResourceType": "image", "Tags": [{"Key": "role", "Value": "web"}]}]
    ami = d.ok("create-image", "--instance-id", iid, "--name", "from-stopped",
               "--block-device-mappings", json.dumps(bdm),
               "--tag-specifications", json.dumps(tags))["ImageId"]
    img = wait_image(d, ami)
    assert img["Tags"] == [{"Key": "role", "Value": "web"}]
    assert [i["ImageId"] for i in d.ok("describe-images", "--filters",
                                       "Name=tag:role,Values=w*")["Images"]] == [ami]
    m = mappings(img)
    assert set(m) == {"/dev/xvda", "/dev/sdb", "/dev/sdg"}  # /dev/sdf left out
    assert m["/dev/xvda"]["Ebs"]["DeleteOnTermination"] is False
    assert m["/dev/xvda"]["Ebs"]["VolumeSize"] == 3
    assert "SnapshotId" not in m["/dev/sdg"]["Ebs"] and m["/dev/sdg"]["Ebs"]["VolumeSize"] == 4
    new = run1(d, ami)
    check_image_files(new["RootMount"], base["files"])
    assert describe(d, iid)["State"]["Name"] == "stopped"
    # the root cannot be left out; a volume cannot shrink
    assert_error(d.cli("create-image", "--instance-id", iid, "--name", "no-root",
                       "--block-device-mappings",
                       json.dumps([{"DeviceName": "/dev/xvda", "NoDevice": ""}])),
                 "InvalidBlockDeviceMapping")
    assert_error(d.cli("create-image", "--instance-id", iid, "--name", "shrunk",
                       "--block-device-mappings",
                       json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 0}}])),
                 "InvalidBlockDeviceMapping")
    assert_error(d.cli("create-image", "--instance-id", iid, "--name", "dry", "--dry-run"),
                 "DryRunOperation")
    d.ok("terminate-instances", "--instance-ids", iid)
    assert_error(d.cli("create-image", "--instance-id", iid, "--name", "from-terminated"),
                 "IncorrectInstanceState")
    assert_error(d.cli("create-image", "--instance-id", "i-0123456789abcdef0", "--name", "nope"),
                 "InvalidInstanceID.NotFound")
    assert_error(d.cli("create-image", "--instance-id", "i-xyz", "--name", "nope"),
                 "InvalidInstanceID.Malformed")
    # another account cannot image the instance
    assert_error(d.cli("create-image", "--instance-id", new["InstanceId"], "--name", "theirs",
                       account="111122223333"), "InvalidInstanceID.NotFound")
    names = {i["Name"] for i in d.ok("describe-images", "--owners", "self")["Images"]}
    assert names == {"ebsim-base", "from-stopped"}  # nothing half-made
    # deregistering drops the image's tags with it (checked in the catalog, read-only)
    import sqlite3
    d.ok("deregister-image", "--image-id", ami)
    con = sqlite3.connect(f"file:{os.path.join(d.home, 'catalog.db')}?mode=ro", uri=True)
    try:
        assert con.execute("SELECT COUNT(*) FROM tags WHERE resource_id = ?",
                           (ami,)).fetchone() == (0,)
    finally:
        con.close()


# The catalog refuses, once armed, the second snapshot row of a create-image request (its
# first snapshot was started) or the image's row (all of its snapshots were started).
FAULTS = {
    "second-snapshot":
        "CREATE TRIGGER test_fault BEFORE INSERT ON snapshots"
        " WHEN NEW.description LIKE 'Created by CreateImage(%'"
        " AND EXISTS (SELECT 1 FROM snapshots WHERE description = NEW.description)"
        " BEGIN SELECT RAISE(ABORT, 'injected by the test'); END",
    "image-row":
        "CREATE TRIGGER test_fault BEFORE INSERT ON docs WHEN NEW.kind = 'image'"
        " BEGIN SELECT RAISE(ABORT, 'injected by the test'); END",
}


def catalog_exec(d, sql):
    con = sqlite3.connect(os.path.join(d.home, "catalog.db"), timeout=10)
    try:
        con.execute(sql)
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_create_image_failing_midway_leaves_nothing(daemon, res, base, fault):
    d = daemon
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]
    inst = run1(d, base["ami"], ITYPE, "--block-device-mappings", json.dumps(bdm))
    iid, root, data = inst["InstanceId"], inst["RootMount"], inst["LocalDevices"]["/dev/sdf"]
    res.assert_mounted(root)
    vols = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}
    # each volume's last snapshot, then data only an incremental snapshot from it would miss
    # if the failed call's snapshots had cleared the changed bits for good (enough of it
    # that the undone snapshots are usually still copying when they are stopped)
    h_old = write_pattern(data, "before the last snapshot", 4 * MIB)
    for vid in vols.values():
        wait_completed(d, d.ok("create-snapshot", "--volume-id", vid)["SnapshotId"])
    h_new = write_pattern(data, "after the last snapshot", 96 * MIB, off=4 * MIB)
    on_root = random.Random(11).randbytes(64 * MIB + 5)
    write_file(os.path.join(root, "after-the-last-snapshot.bin"), on_root)
    snaps_before = d.ok("describe-snapshots")["Snapshots"]

    catalog_exec(d, FAULTS[fault])
    try:
        r = d.cli("create-image", "--instance-id", iid, "--name", "half-made")
    finally:
        catalog_exec(d, "DROP TRIGGER test_fault")
    assert_error(r, "InternalError")
    # nothing is left of the request: no snapshot (pending or not), no image, no chunk
    assert d.ok("describe-snapshots")["Snapshots"] == snaps_before
    assert d.ok("describe-images", "--filters", "Name=name,Values=half-made")["Images"] == []
    assert {i["Name"] for i in d.ok("describe-images", "--owners", "self")["Images"]} == \
        {"ebsim-base"}
    ck = d.cli("check")
    assert ck.rc == 0 and ck.json["Result"] == "clean" and ck.json["LeakedCount"] == 0, ck.out
    # the instance goes on: its file systems are mounted again, its volumes take snapshots
    res.assert_mounted(root)
    assert describe(d, iid)["State"]["Name"] == "running"
    s = wait_completed(d, d.ok("create-snapshot", "--volume-id", vols["/dev/sdf"])["SnapshotId"])
    v = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(v["LocalPath"], 0, 4 * MIB) == h_old
    assert sha_range(v["LocalPath"], 4 * MIB, 96 * MIB) == h_new
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    # and the same create-image, asked again, makes the image, with the data
    ami = d.ok("create-image", "--instance-id", iid, "--name", "half-made")["ImageId"]
    img = wait_image(d, ami)
    assert len({m["Ebs"]["SnapshotId"] for m in img["BlockDeviceMappings"] if "Ebs" in m}) == 2
    new = run1(d, ami)
    res.assert_mounted(new["RootMount"])
    check_image_files(new["RootMount"], base["files"])
    assert sha256_file(os.path.join(new["RootMount"], "after-the-last-snapshot.bin")) == \
        hashlib.sha256(on_root).hexdigest()
    assert sha_range(new["LocalDevices"]["/dev/sdf"], 0, 4 * MIB) == h_old
    assert sha_range(new["LocalDevices"]["/dev/sdf"], 4 * MIB, 96 * MIB) == h_new
    undone = [l for l in d.log().splitlines() if "undone (its request failed)" in l]
    assert len(undone) == (1 if fault == "second-snapshot" else 2), undone
    print(f"\n{fault}: {len(undone)} snapshot(s) undone, "
          f"{d.log().count('Operation canceled')} of them stopped while copying")


def test_pending_image_is_unavailable_then_failed_after_crash(make_daemon, res):
    d = make_daemon()
    snap, _ = make_base(d, res)
    base = register(d, snap, "base")
    inst = run1(d, base)
    # 600 MiB of fresh data in the raw part of a big data volume: a snapshot that takes a while
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]
    inst = run1(d, base, ITYPE, "--block-device-mappings", json.dumps(bdm))
    dev = inst["LocalDevices"]["/dev/sdf"]
    with open(dev, "r+b") as f:
        for k in range(600):
            f.write(os.urandom(MIB))
        f.flush()
        os.fsync(f.fileno())
    code, r = call(d, "CreateImage", {"InstanceId": inst["InstanceId"], "Name": "slow",
                                      "NoReboot": True})
    assert code is None
    ami = r["ImageId"]
    _, snaps_before = call(d, "DescribeSnapshots", {})
    code, _ = call(d, "RunInstances", {"ImageId": ami, "InstanceType": ITYPE,
                                       "MinCount": 1, "MaxCount": 1})
    code2, _ = call(d, "CreateImage", {"InstanceId": inst["InstanceId"], "Name": "slow-2",
                                       "NoReboot": True})
    _, r = call(d, "DescribeImages", {"ImageIds": [ami]})
    state = r["Images"][0]["State"]
    print("state after the launch:", state, code, code2)
    if state == "pending":  # the launch was certainly tried while pending
        assert code == "InvalidAMIID.Unavailable"
        # a second image of the instance must wait for the first: refused, nothing made
        assert code2 == "SnapshotCreationPerVolumeRateExceeded"
        _, snaps_after = call(d, "DescribeSnapshots", {})
        assert len(snaps_after["Snapshots"]) == len(snaps_before["Snapshots"])
        assert call(d, "DescribeImages", {"Filters": [{"Name": "name", "Values": ["slow-2"]}]}) \
            == (None, {"Images": []})
    # kill the daemon while the snapshot copies: a restart turns the snapshot into 'error'
    # and the image must say 'failed' (or 'available' if the copy had finished)
    d.expect_errors()
    sid = mappings(r["Images"][0])["/dev/sdf"]["Ebs"]["SnapshotId"]
    res.cleanup()
    d.kill9()
    d.start()
    s = d.ok("describe-snapshots", "--snapshot-ids", sid)["Snapshots"][0]
    img = d.ok("describe-images", "--image-ids", ami)["Images"][0]
    print("after the crash:", s["State"], img["State"])
    assert (s["State"], img["State"]) in {("error", "failed"), ("completed", "available")}
    if img["State"] == "failed":
        assert sid in img["StateReason"]["Message"]
        assert d.ok("describe-images", "--filters", "Name=state,Values=failed")["Images"][0][
            "ImageId"] == ami
        assert_error(d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE),
                     "InvalidAMIID.Unavailable")
    assert state == "pending" or img["State"] == "available"


def test_describe_images_filters_owners_and_pages(daemon, res, base):
    d = daemon
    ami = base["ami"]
    extra = [register(d, base["snap"], f"page-{k}", ephemeral=False) for k in range(6)]
    everything = {ami, *extra}

    def ids(*args, **kw):
        return {i["ImageId"] for i in d.ok("describe-images", *args, **kw)["Images"]}

    assert ids() == everything
    assert ids("--owners", "self") == everything
    assert ids("--owners", "amazon") == set()
    assert ids("--filters", "Name=name,Values=page-?") == set(extra)
    assert ids("--filters", "Name=name,Values=*base") == {ami}
    assert ids("--filters", "Name=name,Values=page-[0]") == set()
    assert ids("--filters", "Name=block-device-mapping.device-name,Values=/dev/sdb") == {ami}
    assert ids("--filters", f"Name=block-device-mapping.snapshot-id,Values={base['snap']}") == \
        everything
    assert ids("--filters", "Name=platform,Values=windows") == set()
    for name, val, want in [("architecture", "x86_64", everything), ("architecture", "arm64", set()),
                            ("image-id", ami, {ami}), ("image-type", "machine", everything),
                            ("is-public", "true", set()), ("is-public", "false", everything),
                            ("owner-id", d.account, everything), ("owner-alias", "amazon", set()),
                            ("root-device-type", "ebs", everything),
                            ("root-device-name", "/dev/xvda", everything),
                            ("state", "available", everything),
                            ("virtualization-type", "paravirtual", set())]:
        assert ids("--filters", f"Name={name},Values={val}") == want, (name, val)
    assert ids("--filters", "Name=state,Values=available", "Name=name,Values=page-1") == \
        {extra[1]}
    assert_error(d.cli("describe-images", "--filters", "Name=colour,Values=red"),
                 "InvalidParameterValue")
    assert_error(d.cli("describe-images", "--owners", "someone"), "InvalidParameterValue")
    # regions: nothing in another region
    assert ids(region="eu-west-1") == set()
    # pages of 5
    seen, token, pages = [], None, 0
    while True:
        args = ["--max-results", "5"] + (["--next-token", token] if token else [])
        out = d.ok("describe-images", *args)
        seen += [i["ImageId"] for i in out["Images"]]
        pages += 1
        token = out.get("NextToken")
        if not token:
            break
    assert pages == 2 and len(seen) == len(set(seen)) == 7 and set(seen) == everything
    assert_error(d.cli("describe-images", "--max-results", "4"), "InvalidParameterValue")
    assert_error(d.cli("describe-images", "--max-results", "5", "--image-ids", ami),
                 "InvalidParameterCombination")
    # the attributes of an image: its mappings as describe-images shows them
    img = d.ok("describe-images", "--image-ids", ami)["Images"][0]
    attr = d.ok("describe-image-attribute", "--image-id", ami, "--attribute",
                "blockDeviceMapping")
    assert attr == {"ImageId": ami, "BlockDeviceMappings": img["BlockDeviceMappings"]}
    assert d.ok("describe-image-attribute", "--image-id", ami, "--attribute",
                "kernel") == {"ImageId": ami, "KernelId": {}}


def test_copy_image_and_deregister(daemon, res, base):
    d = daemon
    ami = base["ami"]
    new = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", ami,
               "--name", "copied", region="eu-west-1")["ImageId"]
    img = wait_image(d, new, region="eu-west-1")
    assert img["SourceImageId"] == ami and img["Name"] == "copied" and not img["Public"]
    new_snap = mappings(img)["/dev/xvda"]["Ebs"]["SnapshotId"]
    assert new_snap != base["snap"]
    s = d.ok("describe-snapshots", "--snapshot-ids", new_snap, region="eu-west-1")["Snapshots"][0]
    assert s["SourceSnapshot"] == f"us-east-1/{base['snap']}" and s["State"] == "completed"
    # a second copy to the same region transfers nothing: the chunks are there
    new2 = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", ami,
                "--name", "copied-again", region="eu-west-1")["ImageId"]
    img2 = wait_image(d, new2, region="eu-west-1")
    s2 = d.ok("describe-snapshots", "--snapshot-ids",
              mappings(img2)["/dev/xvda"]["Ebs"]["SnapshotId"], region="eu-west-1")["Snapshots"][0]
    assert s2["DataSize"] == 0 < s["DataSize"]
    # the copy launches with the same files
    inst = d.ok("run-instances", "--image-id", new, "--instance-type", ITYPE,
                region="eu-west-1")["Instances"][0]
    res.assert_mounted(inst["RootMount"])
    check_image_files(inst["RootMount"], base["files"])
    assert_error(d.cli("copy-image", "--source-region", "us-east-1", "--source-image-id", ami,
                       "--name", "copied", region="eu-west-1"), "InvalidAMIName.Duplicate")
    assert_error(d.cli("copy-image", "--source-region", "mars-1", "--source-image-id", ami,
                       "--name", "x-copy"), "InvalidParameterValue")
    assert_error(d.cli("copy-image", "--source-region", "us-west-2", "--source-image-id", ami,
                       "--name", "x-copy"), "InvalidAMIID.NotFound")

    # deregister keeps the snapshots by default ...
    assert d.ok("deregister-image", "--image-id", new2, region="eu-west-1")["Return"] is True
    snap2 = mappings(img2)["/dev/xvda"]["Ebs"]["SnapshotId"]
    assert d.ok("describe-snapshots", "--snapshot-ids", snap2,
                region="eu-west-1")["Snapshots"][0]["State"] == "completed"
    assert_error(d.cli("describe-images", "--image-ids", new2, region="eu-west-1"),
                 "InvalidAMIID.NotFound")
    # ... and deletes them with --delete-associated-snapshots
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], region="eu-west-1")
    d.ok("deregister-image", "--image-id", new, "--delete-associated-snapshots",
         region="eu-west-1")
    assert_error(d.cli("describe-snapshots", "--snapshot-ids", new_snap, region="eu-west-1"),
                 "InvalidSnapshot.NotFound")


def test_bad_input(daemon, base):
    d = daemon
    ami, snap = base["ami"], base["snap"]
    bdm = json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])

    def reg(name):
        return d.cli("register-image", "--name", name, "--root-device-name", "/dev/xvda",
                     "--block-device-mappings", bdm)

    assert_error(reg("ebsim-base"), "InvalidAMIName.Duplicate")
    assert d.cli("register-image", "--name", "ebsim-base", "--root-device-name", "/dev/xvda",
                 "--block-device-mappings", bdm, region="eu-west-1").error_code() == \
        "InvalidSnapshot.NotFound"  # another region: not a duplicate, but no snapshot there
    for bad in ["ab", "x" * 129, "bad*name", "semi;colon", "new\nline"]:
        assert_error(reg(bad), "InvalidAMIName.Malformed")
    assert reg("ok (1.0) [x] a/b-c_d'e@f").rc == 0
    assert reg("x" * 128).rc == 0
    assert_error(d.cli("describe-images", "--image-ids", "ami-0123456789abcdef0"),
                 "InvalidAMIID.NotFound")
    assert_error(d.cli("describe-images", "--image-ids", "ami-zz"), "InvalidAMIID.Malformed")
    assert_error(d.cli("run-instances", "--image-id", "image-1", "--instance-type", ITYPE),
                 "InvalidAMIID.Malformed")
    assert_error(d.cli("deregister-image", "--image-id", ami, account="111122223333"),
                 "InvalidAMIID.NotFound")
    d.ok("modify-image-attribute", "--image-id", ami, "--operation-type", "add",
         "--user-ids", "111122223333")
    assert_error(d.cli("deregister-image", "--image-id", ami, account="111122223333"),
                 "AuthFailure")
    assert_error(d.cli("modify-image-attribute", "--image-id", ami, "--operation-type", "add",
                       "--user-groups", "all", account="111122223333"), "AuthFailure")
    assert_error(d.cli("modify-image-attribute", "--image-id", ami, "--launch-permission",
                       "{bad json"), "InvalidParameterValue")
    assert_error(d.cli("describe-images", "--filters", "Name=bogus,Values=1"),
                 "InvalidParameterValue")
    # still there, still private to the friend only
    img = d.ok("describe-images", "--image-ids", ami)["Images"][0]
    assert img["Public"] is False


@pytest.mark.parametrize("verb", ["create-image", "copy-image", "modify-image-attribute",
                                  "describe-image-attribute", "reset-image-attribute",
                                  "describe-images", "deregister-image"])
def test_help(verb):
    from conftest import EBSIM
    import subprocess
    p = subprocess.run([EBSIM, verb, "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for section in ("NAME", "DESCRIPTION", "OPTIONS", "EXAMPLES"):
        assert section in p.stdout, (verb, section)


def test_hostile_params_never_crash(daemon, base):
    """Random JSON of every type in every parameter of the image actions: each request gets
    an answer (an error, or a result), the daemon survives, and the catalog stays sane."""
    d = daemon
    inst = run1(d, base["ami"])
    rnd = random.Random(int(os.environ.get("EBSIM_MODEL_SEED", "11")))
    actions = {
        "CreateImage": ["InstanceId", "Name", "Description", "NoReboot", "BlockDeviceMappings",
                        "TagSpecifications", "DryRun"],
        "CopyImage": ["SourceRegion", "SourceImageId", "Name", "Description", "DryRun"],
        "ModifyImageAttribute": ["ImageId", "Attribute", "OperationType", "UserIds",
                                 "UserGroups", "LaunchPermission", "Description", "Value",
                                 "DryRun"],
        "DescribeImageAttribute": ["ImageId", "Attribute", "DryRun"],
        "ResetImageAttribute": ["ImageId", "Attribute", "DryRun"],
        "DescribeImages": ["ImageIds", "Owners", "ExecutableUsers", "Filters", "MaxResults",
                           "NextToken"],
        "DeregisterImage": ["ImageId", "DryRun"],
    }
    good = [base["ami"], inst["InstanceId"], "us-east-1", "launchPermission", "description",
            "add", "remove", "all", "self", "amazon", "111122223333", "x" * 300, "", "a\u00e9b"]

    def value(depth=0):
        k = rnd.randrange(9 if depth < 2 else 6)
        if k == 0:
            return None
        if k == 1:
            return rnd.choice([0, -1, 1 << 62, 3.5])
        if k == 2:
            return rnd.choice([True, False])
        if k in (3, 4, 5):
            return rnd.choice(good)
        if k == 6:
            return [value(depth + 1) for _ in range(rnd.randrange(3))]
        keys = ["Add", "Remove", "UserId", "Group", "Value", "DeviceName", "Ebs", "NoDevice",
                "Name", "Values", "SnapshotId", "VolumeSize"]
        return {rnd.choice(keys): value(depth + 1) for _ in range(rnd.randrange(3))}

    for i in range(1500):
        action = rnd.choice(list(actions))
        params = {p: value() for p in rnd.sample(actions[action],
                                                 rnd.randint(0, len(actions[action])))}
        if action == "CreateImage":
            params["NoReboot"] = True  # keep the test's root mount in place
        code, res = call(d, action, params, account=rnd.choice(["123456789012", "111122223333"]))
        assert (code is None) != (res is None), (action, params)
    assert d.alive()
    imgs = d.ok("describe-images")["Images"]
    for img in imgs:
        assert img["State"] in ("pending", "available", "failed")


def test_amazon_owned_and_instance_store_images(daemon, base):
    """Images made by other paths: a base image owned by Amazon's account (ImageOwnerAlias
    amazon, public) and an instance-store-backed one. Their documents are written into the
    catalog while the daemon is stopped, as those paths store them."""
    import sqlite3
    d = daemon
    amazon = "137112412989"  # EBSIM_AMAZON_ACCOUNT (common/ctl_proto.h)
    ours = register(d, base["snap"], "to-be-instance-store")
    d.stop()
    con = sqlite3.connect(os.path.join(d.home, "catalog.db"))
    for ami, change in [(base["ami"], {"OwnerId": amazon, "ImageOwnerAlias": "amazon",
                                       "Public": True, "ImageLocation": "amazon/ebsim-base"}),
                        (ours, {"RootDeviceType": "instance-store",
                                "ImageLocation": "bucket/image.manifest.xml"})]:
        (doc,) = con.execute("SELECT json FROM docs WHERE kind = 'image' AND id = ?",
                             (ami,)).fetchone()
        doc = json.loads(doc)
        doc.update(change)
        con.execute("UPDATE docs SET json = ?, account = ? WHERE kind = 'image' AND id = ?",
                    (json.dumps(doc), doc["OwnerId"], ami))
    con.commit()
    con.close()
    d.start()

    def ids(*args, account=None):
        return {i["ImageId"] for i in d.ok("describe-images", *args, account=account)["Images"]}

    other = "111122223333"
    assert ids("--owners", "amazon", account=other) == {base["ami"]}
    assert ids("--owners", amazon, account=other) == {base["ami"]}
    assert ids("--filters", "Name=owner-alias,Values=amazon") == {base["ami"]}
    assert ids("--filters", "Name=root-device-type,Values=instance-store") == {ours}
    img = d.ok("describe-images", "--image-ids", base["ami"], account=other)["Images"][0]
    assert img["ImageOwnerAlias"] == "amazon" and img["OwnerId"] == amazon
    # anyone may launch it, and copy it; the copy is theirs, without the alias
    new = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", base["ami"],
               "--name", "my-copy", account=other)["ImageId"]
    img = wait_image(d, new, account=other)
    assert img["OwnerId"] == other
    assert "ImageOwnerAlias" not in img
    assert ids("--owners", "amazon", account=other) == {base["ami"]}
    # only Amazon may change its image
    assert_error(d.cli("modify-image-attribute", "--image-id", base["ami"], "--operation-type",
                       "remove", "--user-groups", "all"), "AuthFailure")
    # an instance-store image cannot be copied
    r = d.cli("copy-image", "--source-region", "us-east-1", "--source-image-id", ours,
              "--name", "is-copy")
    assert_error(r, "UnsupportedOperation")
    assert "instance-store" in r.err

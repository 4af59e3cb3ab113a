# SPDX-License-Identifier: MIT
"""AMIs whose making fails part-way, and AMIs deregistered while still being made:
copy-image failing inside the request and later (asynchronously), and
deregister-image --delete-associated-snapshots of an image whose snapshots are pending.

Design notes
------------
- The source image has two EBS mappings, its data volume first (/dev/sdf: distinct random
  chunks, so that copying it takes a while and stores chunks of its own) and its root
  second (/dev/xvda, make_base's file system). So a fault on the second snapshot row of a
  copy hits while the first copy is still running.
- Failures inside a CopyImage request are real catalog refusals (SQLite triggers the test
  adds to its own daemon's catalog and drops right after the call), as
  test_images.py::test_create_image_failing_midway_leaves_nothing does for create-image.
  The request must fail whole: no snapshot row, no image row, no chunk in the destination
  store (counted on disk with store_layout, and by `ebsim check`: clean, 0 leaked).
- A failure after CopyImage returned (a copy job fails) is EC2's failed AMI: the test
  damages one stored chunk of the source near its end (the copy job verifies what it reads
  and fails there), after more than a pack's worth (256 MiB) of chunks were copied and
  committed, so chunks of the failed copy are in the destination store. The image must read
  'failed' naming the snapshot, `ebsim check` (after the damage is undone) must be clean
  with 0 leaked, and deregistering the image with --delete-associated-snapshots must leave
  the destination region empty.
- Either way, a later copy-image of the same source works and launches with the same bytes
  (root files by sha256, the data volume by sha256 of its range).
- Deregistering a pending image with --delete-associated-snapshots: the deregister comes
  right after the call that made the image, while its large snapshot is still copying; the
  daemon's log line for the stopped snapshot proves it was pending then. Its snapshots must
  be gone (stopped and deleted), nothing leaked, and no data lost: the volume's next
  snapshot (create-image) holds everything written before it.
"""
import hashlib
import json
import os
import time

import pytest

import store_layout
from test_images import catalog_exec, mappings, wait_image
from test_instances import ITYPE, assert_error, check_image_files, make_base, run1
from test_snapshots import sha_range, wait_completed, write_pattern

MIB = 1 << 20
CHUNK = 64 << 10
DEST = "eu-west-1"


def make_source(d, res, data_mib):
    """A registered image: /dev/sdf from a snapshot of data_mib MiB of random chunks,
    /dev/xvda from make_base's root, /dev/sdb ephemeral0."""
    root_snap, files = make_base(d, res)
    v = d.create_volume(1)
    h = write_pattern(v["LocalPath"], "image-failures", data_mib * MIB)
    data_snap = wait_completed(d, d.ok("create-snapshot", "--volume-id",
                                       v["VolumeId"])["SnapshotId"])["SnapshotId"]
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": data_snap}},
           {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root_snap}},
           {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    ami = d.ok("register-image", "--name", "failures-src", "--root-device-name", "/dev/xvda",
               "--block-device-mappings", json.dumps(bdm))["ImageId"]
    return {"ami": ami, "files": files, "data_snap": data_snap, "data_sha": h,
            "data_size": data_mib * MIB}


def region_state(d, region):
    """What a region holds: snapshot rows, image rows, stored chunk copies."""
    return (sorted(s["SnapshotId"] for s in
                   d.ok("describe-snapshots", region=region)["Snapshots"]),
            sorted(i["ImageId"] for i in d.ok("describe-images", "--owners", "self",
                                               region=region)["Images"]),
            store_layout.count(d.home, region))


def assert_check_clean(d):
    ck = d.cli("check")
    assert ck.rc == 0 and ck.json["Result"] == "clean" and ck.json["LeakedCount"] == 0, \
        (ck.rc, ck.out, ck.err)


def copy_and_launch(d, res, src, region, name):
    """copy-image works and the copy launches with the source's bytes."""
    ami = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", src["ami"],
               "--name", name, region=region)["ImageId"]
    img = wait_image(d, ami, region=region)
    assert mappings(img)["/dev/sdf"]["Ebs"]["SnapshotId"] != src["data_snap"]
    inst = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE,
                region=region)["Instances"][0]
    res.assert_mounted(inst["RootMount"])
    check_image_files(inst["RootMount"], src["files"])
    assert sha_range(inst["LocalDevices"]["/dev/sdf"], 0, src["data_size"]) == src["data_sha"]
    d.ok("terminate-instances", "--instance-ids", inst["InstanceId"], region=region)
    return ami


# The catalog refuses, once armed, the second snapshot row of one copy-image request (the
# first copy is running) or the copied image's row (every copy is running).
COPY_FAULTS = {
    "second-snapshot":
        "CREATE TRIGGER test_fault BEFORE INSERT ON snapshots"
        " WHEN NEW.description LIKE 'Copied for DestinationAmi %'"
        " AND EXISTS (SELECT 1 FROM snapshots"
        "             WHERE substr(description, 1, 47) = substr(NEW.description, 1, 47))"
        " BEGIN SELECT RAISE(ABORT, 'injected by the test'); END",
    "image-row":
        "CREATE TRIGGER test_fault BEFORE INSERT ON docs WHEN NEW.kind = 'image'"
        " BEGIN SELECT RAISE(ABORT, 'injected by the test'); END",
}


@pytest.mark.parametrize("region", [DEST, "us-east-1"])
@pytest.mark.parametrize("fault", sorted(COPY_FAULTS))
def test_copy_image_failing_midway_leaves_nothing(daemon, res, fault, region):
    d = daemon
    src = make_source(d, res, 64)
    before = region_state(d, region)
    catalog_exec(d, COPY_FAULTS[fault])
    try:
        r = d.cli("copy-image", "--source-region", "us-east-1", "--source-image-id",
                  src["ami"], "--name", "half-copied", region=region)
    finally:
        catalog_exec(d, "DROP TRIGGER test_fault")
    assert_error(r, "InternalError")
    # nothing is left of the request: no snapshot (pending or not), no image, no chunk
    assert region_state(d, region) == before
    assert d.ok("describe-images", "--filters", "Name=name,Values=half-copied",
                region=region)["Images"] == []
    assert_check_clean(d)
    stopped = d.log().count("Operation canceled")
    # and the same copy, asked again, works and launches with the same bytes
    copy_and_launch(d, res, src, region, "half-copied")
    assert_check_clean(d)
    print(f"\n{fault} -> {region}: {stopped} copy job(s) stopped while copying")


def test_copy_image_failing_later_is_a_failed_image_leaving_no_chunks(daemon, res):
    d = daemon
    d.expect_errors()  # the damaged chunk is logged where the copy reads it
    # more than a pack (256 MiB) of the data copy is committed before it reaches the
    # damaged chunk, so the failed copy has chunks in the destination store
    src = make_source(d, res, 288)
    assert region_state(d, DEST) == ([], [], 0)
    # the victim chunk's object id is the sha256 of its bytes (read from a restore)
    victim = 280 * MIB // CHUNK
    v = d.ok("create-volume", "--snapshot-id", src["data_snap"])
    with open(v["LocalPath"], "rb") as f:
        f.seek(victim * CHUNK)
        chunk = f.read(CHUNK)
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    path, off = store_layout.location(d.home, hashlib.sha256(chunk).hexdigest())
    with open(path, "r+b") as f:
        f.seek(off + 100)
        good = f.read(1)
        f.seek(off + 100)
        f.write(bytes([good[0] ^ 0x01]))
    try:
        ami = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id",
                   src["ami"], "--name", "copy-fails-later", region=DEST)["ImageId"]
        img = wait_image(d, ami, want="failed", region=DEST)
    finally:
        with open(path, "r+b") as f:  # the source is whole again
            f.seek(off + 100)
            f.write(good)
    data_copy = mappings(img)["/dev/sdf"]["Ebs"]["SnapshotId"]
    assert data_copy in img["StateReason"]["Message"], img
    # the other copy ends too (completed): the check waits for no job
    root_copy = mappings(img)["/dev/xvda"]["Ebs"]["SnapshotId"]
    for _ in range(400):
        s = d.ok("describe-snapshots", "--snapshot-ids", root_copy, region=DEST)["Snapshots"][0]
        if s["State"] != "pending":
            break
        time.sleep(0.05)
    states = {s["SnapshotId"]: s["State"] for s in
              d.ok("describe-snapshots", region=DEST)["Snapshots"]}
    assert states == {data_copy: "error", root_copy: "completed"}, states
    assert "copy failed" in d.log() and f"copy {data_copy}: Bad message" in d.log()
    # the failed copy's chunks were collected: nothing leaked
    assert_check_clean(d)
    assert_error(d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE,
                       region=DEST), "InvalidAMIID.Unavailable")
    # the failed image's snapshots go with it
    assert d.ok("deregister-image", "--image-id", ami, "--delete-associated-snapshots",
                region=DEST) == {"Return": True}
    assert region_state(d, DEST) == ([], [], 0)
    assert_check_clean(d)
    copy_and_launch(d, res, src, DEST, "copy-fails-later")
    assert_check_clean(d)


def stopped_line(d, sid):
    """The daemon's word that sid was still pending when deregister-image stopped it."""
    return [l for l in d.log().splitlines()
            if f"snapshot {sid} undone (pending when its image was deregistered)" in l]


def test_deregister_deletes_pending_copied_snapshots(daemon, res):
    d = daemon
    src = make_source(d, res, 256)
    assert region_state(d, DEST) == ([], [], 0)
    ami = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", src["ami"],
               "--name", "still-copying", region=DEST)["ImageId"]
    img = d.ok("describe-images", "--image-ids", ami, region=DEST)["Images"][0]
    data_copy = mappings(img)["/dev/sdf"]["Ebs"]["SnapshotId"]
    r = d.cli("deregister-image", "--image-id", ami, "--delete-associated-snapshots",
              region=DEST)
    assert r.rc == 0 and r.json == {"Return": True}, (r.rc, r.out, r.err)
    assert region_state(d, DEST) == ([], [], 0)
    # the data copy was still copying then: it was stopped, then deleted with the other
    assert stopped_line(d, data_copy), d.log()
    assert_error(d.cli("describe-snapshots", "--snapshot-ids", data_copy, region=DEST),
                 "InvalidSnapshot.NotFound")
    assert_error(d.cli("describe-images", "--image-ids", ami, region=DEST),
                 "InvalidAMIID.NotFound")
    assert_check_clean(d)
    # the source is untouched, and copies again
    assert d.ok("describe-snapshots", "--snapshot-ids", src["data_snap"])["Snapshots"][0][
        "State"] == "completed"
    copy_and_launch(d, res, src, DEST, "still-copying")


def test_deregister_deletes_pending_created_snapshots(daemon, res):
    """The pending snapshot is a create-image snapshot of a volume: stopping it gives the
    volume its changed bits back, so nothing written before it is lost."""
    d = daemon
    root_snap, files = make_base(d, res)
    base = d.ok("register-image", "--name", "pending-base", "--root-device-name", "/dev/xvda",
                "--block-device-mappings",
                json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root_snap}}])
                )["ImageId"]
    bdm = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]
    inst = run1(d, base, ITYPE, "--block-device-mappings", json.dumps(bdm))
    iid, dev = inst["InstanceId"], inst["LocalDevices"]["/dev/sdf"]
    vid = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}["/dev/sdf"]
    h = write_pattern(dev, "pending-created", 256 * MIB)
    snaps_before = d.ok("describe-snapshots")["Snapshots"]
    objects_before = store_layout.count(d.home)
    ami = d.ok("create-image", "--instance-id", iid, "--name", "still-snapshotting",
               "--no-reboot")["ImageId"]
    img = d.ok("describe-images", "--image-ids", ami)["Images"][0]
    sid = mappings(img)["/dev/sdf"]["Ebs"]["SnapshotId"]
    r = d.cli("deregister-image", "--image-id", ami, "--delete-associated-snapshots")
    assert r.rc == 0 and r.json == {"Return": True}, (r.rc, r.out, r.err)
    assert d.ok("describe-snapshots")["Snapshots"] == snaps_before
    assert stopped_line(d, sid), d.log()  # it was pending then
    assert_error(d.cli("describe-images", "--image-ids", ami), "InvalidAMIID.NotFound")
    assert store_layout.count(d.home) == objects_before
    assert_check_clean(d)
    # nothing lost: the volume's next snapshot holds the data, and so does a new image
    s = wait_completed(d, d.ok("create-snapshot", "--volume-id", vid)["SnapshotId"])
    v = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
    assert sha_range(v["LocalPath"], 0, 256 * MIB) == h
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    ami = d.ok("create-image", "--instance-id", iid, "--name", "still-snapshotting",
               "--no-reboot")["ImageId"]
    wait_image(d, ami)
    new = run1(d, ami)
    res.assert_mounted(new["RootMount"])
    check_image_files(new["RootMount"], files)
    assert sha_range(new["LocalDevices"]["/dev/sdf"], 0, 256 * MIB) == h
    assert_check_clean(d)

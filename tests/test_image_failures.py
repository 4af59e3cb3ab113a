# SPDX-License-Identifier: MIT
"""AMIs whose making fails part-way: copy-image failing inside the request and later
(asynchronously).

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

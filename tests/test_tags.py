# SPDX-License-Identifier: MIT
"""EC2 tags on volumes and snapshots: TagSpecifications on create, Tags in the output,
the tag:<key> and tag-key filters, create-tags / delete-tags / describe-tags, EC2's rules
and error codes, and the tags' lifetime (they survive a restart and go with their
resource).

Design notes
------------
- Bad input must change nothing: each error test compares describe-tags (and, for the
  create actions, the volume directories and snapshot list) before and after.
- "Gone with the resource" is checked in the catalog itself (sqlite3, read-only), not only
  through describe-tags, which hides the tags of resources it cannot see.
"""
import json
import os
import sqlite3
import time

import pytest

from test_cli import OTHER_ACCOUNT, assert_ec2_error


def spec(rtype, tags):
    return json.dumps([{"ResourceType": rtype,
                        "Tags": [{"Key": k, "Value": v} for k, v in tags]}])


def tag_list(pairs):
    return [{"Key": k, "Value": v} for k, v in sorted(pairs)]


def wait_completed(d, snap, timeout=60, **kw):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = d.ok("describe-snapshots", "--snapshot-ids", snap, **kw)["Snapshots"][0]
        if s["State"] != "pending":
            assert s["State"] == "completed", s
            return s
        time.sleep(0.05)
    raise AssertionError(f"{snap} still pending after {timeout}s")


def described_tags(d, *filters, **kw):
    args = ["describe-tags"] + (["--filters", *filters] if filters else [])
    return d.ok(*args, **kw)["Tags"]


def catalog_tags(d, resource):
    db = sqlite3.connect(f"file:{os.path.join(d.home, 'catalog.db')}?mode=ro", uri=True)
    try:
        return db.execute("SELECT key, value FROM tags WHERE resource_id=?",
                          (resource,)).fetchall()
    finally:
        db.close()


def state(d):
    """What a refused request must leave unchanged."""
    return (sorted(os.listdir(os.path.join(d.home, "volumes"))),
            d.ok("describe-snapshots")["Snapshots"], d.ok("describe-tags")["Tags"])


# ---- tags on create, and in the output ----------------------------------------------------

def test_create_volume_with_tags(daemon):
    v = daemon.create_volume(1, "--tag-specifications",
                             spec("volume", [("Name", "web"), ("env", "prod"), ("Empty", "")]))
    want = tag_list([("Name", "web"), ("env", "prod"), ("Empty", "")])
    assert v["Tags"] == want
    (d,) = daemon.ok("describe-volumes", "--volume-ids", v["VolumeId"])["Volumes"]
    assert d["Tags"] == want
    # an untagged volume has no Tags member, as awscli shows EC2's reply
    plain = daemon.create_volume(1)
    assert "Tags" not in plain
    (d,) = daemon.ok("describe-volumes", "--volume-ids", plain["VolumeId"])["Volumes"]
    assert "Tags" not in d
    # an empty list of tags tags nothing
    e = daemon.create_volume(1, "--tag-specifications", spec("volume", []))
    assert "Tags" not in e


def test_create_volume_tag_value_optional(daemon):
    s = json.dumps([{"ResourceType": "volume", "Tags": [{"Key": "flag"}]}])
    v = daemon.create_volume(1, "--tag-specifications", s)
    assert v["Tags"] == [{"Key": "flag", "Value": ""}]


def test_create_snapshot_with_tags(daemon):
    vol = daemon.create_volume(1, "--tag-specifications", spec("volume", [("Name", "src")]))
    s = daemon.ok("create-snapshot", "--volume-id", vol["VolumeId"], "--tag-specifications",
                  spec("snapshot", [("Name", "nightly"), ("retain", "7d")]))
    want = tag_list([("Name", "nightly"), ("retain", "7d")])
    assert s["Tags"] == want
    done = wait_completed(daemon, s["SnapshotId"])
    assert done["Tags"] == want
    # the volume's tags are not copied to its snapshot, nor the other way round
    plain = daemon.ok("create-snapshot", "--volume-id", vol["VolumeId"])
    assert "Tags" not in plain
    wait_completed(daemon, plain["SnapshotId"])
    (v,) = daemon.ok("describe-volumes")["Volumes"]
    assert v["Tags"] == [{"Key": "Name", "Value": "src"}]


def test_copy_snapshot_with_tags(daemon):
    vol = daemon.create_volume(1)["VolumeId"]
    src = daemon.ok("create-snapshot", "--volume-id", vol, "--tag-specifications",
                    spec("snapshot", [("Name", "src")]))["SnapshotId"]
    wait_completed(daemon, src)
    c = daemon.ok("copy-snapshot", "--source-region", "us-east-1", "--source-snapshot-id", src,
                  "--tag-specifications", spec("snapshot", [("Name", "dr")]),
                  region="eu-west-1")
    assert c == {"SnapshotId": c["SnapshotId"]}  # CopySnapshot answers the ID only
    s = wait_completed(daemon, c["SnapshotId"], region="eu-west-1")
    assert s["Tags"] == [{"Key": "Name", "Value": "dr"}]
    r = daemon.cli("copy-snapshot", "--source-region", "us-east-1", "--source-snapshot-id", src,
                   "--tag-specifications", spec("volume", [("Name", "x")]), region="eu-west-1")
    assert_ec2_error(r, "InvalidParameterValue", "CopySnapshot")


def test_tags_survive_restart(daemon):
    v = daemon.create_volume(1, "--tag-specifications", spec("volume", [("Name", "keep")]))
    daemon.stop()
    daemon.start()
    (d,) = daemon.ok("describe-volumes")["Volumes"]
    assert d["Tags"] == [{"Key": "Name", "Value": "keep"}]
    assert described_tags(daemon) == [{"Key": "Name", "ResourceId": v["VolumeId"],
                                       "ResourceType": "volume", "Value": "keep"}]


# ---- filters ------------------------------------------------------------------------------

def test_tag_filters_on_volumes(daemon):
    def mk(*tags):
        args = ["--tag-specifications", spec("volume", tags)] if tags else []
        return daemon.create_volume(1, *args)["VolumeId"]

    web1 = mk(("Name", "web-1"), ("env", "prod"))
    web2 = mk(("Name", "web-2"), ("env", "test"))
    db = mk(("Name", "db"), ("env", "prod"), ("backup", "daily"))
    bare = mk()

    def ids(*filters):
        out = daemon.ok("describe-volumes", "--filters", *filters)
        return {v["VolumeId"] for v in out["Volumes"]}

    assert ids("Name=tag:Name,Values=web-1") == {web1}
    assert ids("Name=tag:Name,Values=web*") == {web1, web2}
    assert ids("Name=tag:Name,Values=web-?") == {web1, web2}
    assert ids("Name=tag:Name,Values=web-1,db") == {web1, db}
    assert ids("Name=tag:env,Values=pr?d") == {web1, db}
    assert ids("Name=tag:env,Values=prod", "Name=tag:Name,Values=w*") == {web1}
    assert ids("Name=tag:env,Values=prod", "Name=size,Values=1") == {web1, db}
    assert ids("Name=tag:backup,Values=*") == {db}
    assert ids("Name=tag-key,Values=backup") == {db}
    assert ids("Name=tag-key,Values=*") == {web1, web2, db}
    assert ids("Name=tag-key,Values=b*,Name") == {web1, web2, db}
    # keys and values are case-sensitive; a tag filter never matches an untagged volume
    assert ids("Name=tag:name,Values=web-1") == set()
    assert ids("Name=tag:Name,Values=WEB-1") == set()
    assert ids("Name=tag:nosuch,Values=*") == set()
    assert bare not in ids("Name=tag-key,Values=*")
    # JSON filters too
    assert ids(json.dumps([{"Name": "tag:env", "Values": ["test"]}])) == {web2}


def test_tag_filters_on_snapshots(daemon):
    vol = daemon.create_volume(1)["VolumeId"]
    a = daemon.ok("create-snapshot", "--volume-id", vol, "--tag-specifications",
                  spec("snapshot", [("retain", "7d")]))["SnapshotId"]
    wait_completed(daemon, a)
    b = daemon.ok("create-snapshot", "--volume-id", vol, "--tag-specifications",
                  spec("snapshot", [("retain", "30d")]))["SnapshotId"]
    wait_completed(daemon, b)

    def ids(*filters):
        out = daemon.ok("describe-snapshots", "--filters", *filters)
        return {s["SnapshotId"] for s in out["Snapshots"]}

    assert ids("Name=tag:retain,Values=7d") == {a}
    assert ids("Name=tag:retain,Values=*d") == {a, b}
    assert ids("Name=tag:retain,Values=??d") == {b}
    assert ids("Name=tag-key,Values=ret*") == {a, b}
    assert ids("Name=tag-key,Values=Name") == set()


# ---- create-tags / delete-tags / describe-tags ---------------------------------------------

def test_create_tags_shorthand_and_json(daemon):
    vol = daemon.create_volume(1)["VolumeId"]
    snap = daemon.ok("create-snapshot", "--volume-id", vol)["SnapshotId"]
    r = daemon.cli("create-tags", "--resources", vol, snap,
                   "--tags", "Key=Name,Value=web", "Key=env,Value=prod")
    assert (r.rc, r.out, r.err) == (0, "", "")
    want = tag_list([("Name", "web"), ("env", "prod")])
    assert daemon.ok("describe-volumes")["Volumes"][0]["Tags"] == want
    assert wait_completed(daemon, snap)["Tags"] == want
    # JSON; an existing key is overwritten, the others stay
    daemon.ok("create-tags", "--resources", vol,
              "--tags", json.dumps([{"Key": "env", "Value": "test"}, {"Key": "team", "Value": "ops"}]))
    assert daemon.ok("describe-volumes")["Volumes"][0]["Tags"] == \
        tag_list([("Name", "web"), ("env", "test"), ("team", "ops")])
    # no Value: an empty one; quoted values keep their commas; '=' in a value is kept
    daemon.ok("create-tags", "--resources", vol, "--tags", "Key=flag",
              "Key=owners,Value='ops,dev'", "Key=expr,Value=a=b")
    tags = {t["Key"]: t["Value"] for t in daemon.ok("describe-volumes")["Volumes"][0]["Tags"]}
    assert (tags["flag"], tags["owners"], tags["expr"]) == ("", "ops,dev", "a=b")
    # the snapshot was not touched by the volume-only calls
    assert daemon.ok("describe-snapshots")["Snapshots"][0]["Tags"] == want


def test_create_tags_unicode_lengths(daemon):
    vol = daemon.create_volume(1)["VolumeId"]
    # limits count characters, not bytes: 128 two-byte characters are a valid key
    key, value = "é" * 128, "ü" * 256
    daemon.ok("create-tags", "--resources", vol,
              "--tags", json.dumps([{"Key": key, "Value": value}, {"Key": "k" * 128}]))
    tags = daemon.ok("describe-volumes")["Volumes"][0]["Tags"]
    assert {"Key": key, "Value": value} in tags and {"Key": "k" * 128, "Value": ""} in tags


def test_fifty_tags_is_the_limit(daemon):
    fifty = [(f"k{i:02d}", str(i)) for i in range(50)]
    v = daemon.create_volume(1, "--tag-specifications", spec("volume", fifty))
    assert len(v["Tags"]) == 50
    # overwriting keys it has is fine; one more key is not
    daemon.ok("create-tags", "--resources", v["VolumeId"], "--tags", "Key=k00,Value=new")
    before = state(daemon)
    r = daemon.cli("create-tags", "--resources", v["VolumeId"], "--tags", "Key=k00,Value=x",
                   "Key=extra,Value=1")
    assert_ec2_error(r, "TagLimitExceeded", "CreateTags")
    assert state(daemon) == before
    # after a delete there is room again
    daemon.ok("delete-tags", "--resources", v["VolumeId"], "--tags", "Key=k49")
    daemon.ok("create-tags", "--resources", v["VolumeId"], "--tags", "Key=extra,Value=1")
    assert len(daemon.ok("describe-volumes")["Volumes"][0]["Tags"]) == 50


def test_delete_tags(daemon):
    a = daemon.create_volume(1, "--tag-specifications", spec("volume", [
        ("Name", "a"), ("env", "prod"), ("empty", ""), ("team", "ops")]))["VolumeId"]
    b = daemon.create_volume(1, "--tag-specifications", spec("volume", [
        ("Name", "b"), ("env", "test")]))["VolumeId"]

    def tags(vid):
        (v,) = daemon.ok("describe-volumes", "--volume-ids", vid)["Volumes"]
        return {t["Key"]: t["Value"] for t in v.get("Tags", [])}

    # with a Value: only where the value matches
    r = daemon.cli("delete-tags", "--resources", a, b, "--tags", "Key=env,Value=test")
    assert (r.rc, r.out) == (0, "")
    assert tags(a)["env"] == "prod" and "env" not in tags(b)
    # Value= (empty) deletes only an empty value
    daemon.ok("delete-tags", "--resources", a, "--tags", "Key=team,Value=", "Key=empty,Value=")
    assert "empty" not in tags(a) and tags(a)["team"] == "ops"
    # without a Value: whatever the value; a key the resource lacks is no error
    daemon.ok("delete-tags", "--resources", a, b, "--tags", "Key=Name", "Key=nosuch")
    assert tags(a) == {"env": "prod", "team": "ops"} and tags(b) == {}
    # JSON works too
    daemon.ok("delete-tags", "--resources", a, "--tags", json.dumps([{"Key": "team"}]))
    assert tags(a) == {"env": "prod"}
    # without --tags: every tag of the resources
    daemon.ok("create-tags", "--resources", b, "--tags", "Key=x,Value=1", "Key=y,Value=2")
    daemon.ok("delete-tags", "--resources", a, b)
    assert tags(a) == {} and tags(b) == {}
    assert "Tags" not in daemon.ok("describe-volumes", "--volume-ids", a)["Volumes"][0]


def test_describe_tags(daemon):
    vol = daemon.create_volume(1, "--tag-specifications", spec("volume", [
        ("Name", "web"), ("env", "prod")]))["VolumeId"]
    snap = daemon.ok("create-snapshot", "--volume-id", vol, "--tag-specifications",
                     spec("snapshot", [("Name", "web-snap"), ("backup", "daily")]))["SnapshotId"]
    other = daemon.create_volume(1, "--tag-specifications",
                                 spec("volume", [("env", "test")]))["VolumeId"]
    daemon.create_volume(1)  # no tags: not listed

    out = daemon.ok("describe-tags")
    assert list(out) == ["Tags"]
    for t in out["Tags"]:
        assert list(t) == ["Key", "ResourceId", "ResourceType", "Value"]
    got = [(t["ResourceId"], t["Key"], t["Value"], t["ResourceType"]) for t in out["Tags"]]
    want = sorted([(vol, "Name", "web", "volume"), (vol, "env", "prod", "volume"),
                   (snap, "Name", "web-snap", "snapshot"), (snap, "backup", "daily", "snapshot"),
                   (other, "env", "test", "volume")])
    assert got == want  # ordered by resource ID, then key

    def keys(*filters):
        return {(t["ResourceId"], t["Key"]) for t in described_tags(daemon, *filters)}

    assert keys(f"Name=resource-id,Values={vol}") == {(vol, "Name"), (vol, "env")}
    assert keys("Name=resource-type,Values=snapshot") == {(snap, "Name"), (snap, "backup")}
    assert keys("Name=key,Values=env") == {(vol, "env"), (other, "env")}
    assert keys("Name=value,Values=web*") == {(vol, "Name"), (snap, "Name")}
    assert keys("Name=key,Values=Name", "Name=resource-type,Values=volume") == {(vol, "Name")}
    assert keys("Name=value,Values=?eb") == {(vol, "Name")}
    # tag:<key>: every tag of the resources that have that tag
    assert keys("Name=tag:env,Values=prod") == {(vol, "Name"), (vol, "env")}
    assert keys("Name=resource-id,Values=vol-00000000000000000") == set()
    r = daemon.cli("describe-tags", "--filters", "Name=no-such,Values=x")
    assert_ec2_error(r, "InvalidParameterValue", "DescribeTags")
    # other accounts and regions see none of them
    assert described_tags(daemon, account=OTHER_ACCOUNT) == []
    assert described_tags(daemon, region="eu-west-1") == []
    wait_completed(daemon, snap)


def test_describe_tags_pagination(daemon):
    vid = daemon.create_volume(1, "--tag-specifications",
                               spec("volume", [(f"k{i:02d}", "v") for i in range(12)]))["VolumeId"]
    seen, token, pages = [], None, 0
    while True:
        args = ["describe-tags", "--max-results", "5"] + (["--next-token", token] if token else [])
        out = daemon.ok(*args)
        assert len(out["Tags"]) <= 5
        seen += [t["Key"] for t in out["Tags"]]
        pages += 1
        token = out.get("NextToken")
        if not token:
            break
    assert seen == [f"k{i:02d}" for i in range(12)] and pages == 3
    # a page starts where the token says even when that tag was deleted meanwhile
    out = daemon.ok("describe-tags", "--max-results", "5")
    daemon.ok("delete-tags", "--resources", vid, "--tags", "Key=k05")
    out = daemon.ok("describe-tags", "--max-results", "5", "--next-token", out["NextToken"])
    assert [t["Key"] for t in out["Tags"]] == ["k06", "k07", "k08", "k09", "k10"]
    for bad in ("4", "1001"):
        assert_ec2_error(daemon.cli("describe-tags", "--max-results", bad),
                         "InvalidParameterValue", "DescribeTags")
    assert_ec2_error(daemon.cli("describe-tags", "--next-token", "garbage"),
                     "InvalidParameterValue", "DescribeTags")


# ---- bad input ----------------------------------------------------------------------------

LONG_KEY = "k" * 129
LONG_VALUE = "v" * 257


@pytest.mark.parametrize("tags, code", [
    ([("aws:Name", "x")], "InvalidParameterValue"),
    ([("AWS:Name", "x")], "InvalidParameterValue"),
    ([(LONG_KEY, "x")], "InvalidParameterValue"),
    ([("Name", LONG_VALUE)], "InvalidParameterValue"),
    ([("", "x")], "InvalidParameterValue"),
    ([("Name", "a"), ("Name", "b")], "InvalidParameterValue"),
    ([(f"k{i}", "v") for i in range(51)], "TagLimitExceeded"),
])
def test_create_volume_bad_tags(daemon, tags, code):
    before = state(daemon)
    r = daemon.cli("create-volume", "--size", "1", "--tag-specifications", spec("volume", tags))
    assert_ec2_error(r, code, "CreateVolume")
    assert state(daemon) == before


@pytest.mark.parametrize("specs", [
    spec("snapshot", [("Name", "x")]),                       # wrong resource type
    spec("instance", [("Name", "x")]),
    '{"ResourceType": "volume", "Tags": []}',                # not a list
    '[{"ResourceType": "volume"}]',                          # no Tags
    '[{"Tags": [{"Key": "a", "Value": "b"}]}]',              # no ResourceType
    '[{"ResourceType": "volume", "Tags": [{"Key": 1, "Value": "b"}]}]',
    '[{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": ["b"]}]}]',
    '[{"ResourceType": "volume", "Tags": [{"Key": "a", "Colour": "b"}]}]',
    '[{"ResourceType": "volume", "Tags": ["Key=a"]}]',
    '[{"ResourceType": "volume", "Tags": []}, {"ResourceType": "volume", "Tags": []}]',
    "ResourceType=volume",                                   # shorthand: not for this option
])
def test_create_volume_bad_tag_specifications(daemon, specs):
    before = state(daemon)
    r = daemon.cli("create-volume", "--size", "1", "--tag-specifications", specs)
    assert_ec2_error(r, "InvalidParameterValue", "CreateVolume")
    assert state(daemon) == before


def test_create_snapshot_bad_tags(daemon):
    vol = daemon.create_volume(1)["VolumeId"]
    before = state(daemon)
    for tags, rtype, code in [([("Name", "x")], "volume", "InvalidParameterValue"),
                              ([("aws:x", "y")], "snapshot", "InvalidParameterValue"),
                              ([(LONG_KEY, "y")], "snapshot", "InvalidParameterValue"),
                              ([(str(i), "") for i in range(51)], "snapshot",
                               "TagLimitExceeded")]:
        r = daemon.cli("create-snapshot", "--volume-id", vol, "--tag-specifications",
                       spec(rtype, tags))
        assert_ec2_error(r, code, "CreateSnapshot")
    assert state(daemon) == before
    # the refused requests left no snapshot in progress: a new one starts at once
    s = daemon.ok("create-snapshot", "--volume-id", vol)
    wait_completed(daemon, s["SnapshotId"])


@pytest.mark.parametrize("args, code", [
    (["--tags", "Key=aws:x,Value=1"], "InvalidParameterValue"),
    (["--tags", f"Key={LONG_KEY},Value=1"], "InvalidParameterValue"),
    (["--tags", f"Key=k,Value={LONG_VALUE}"], "InvalidParameterValue"),
    (["--tags", "Key=,Value=1"], "InvalidParameterValue"),
    (["--tags", "Key=a,Value=1", "Key=a,Value=2"], "InvalidParameterValue"),
    (["--tags", "Value=1"], "InvalidParameterValue"),
    (["--tags", "Key=a,Value=b,c"], "InvalidParameterValue"),  # Value became a list
    (["--tags", *[f"Key=k{i},Value=v" for i in range(51)]], "TagLimitExceeded"),
    (["--tags", "[]"], "InvalidParameterValue"),
])
def test_create_tags_bad_tags(daemon, args, code):
    vol = daemon.create_volume(1, "--tag-specifications", spec("volume", [("keep", "1")]))
    before = state(daemon)
    r = daemon.cli("create-tags", "--resources", vol["VolumeId"], *args)
    assert_ec2_error(r, code, "CreateTags")
    assert state(daemon) == before


@pytest.mark.parametrize("rid, code", [
    ("vol-0123456789abcdef0", "InvalidVolume.NotFound"),
    ("snap-0123456789abcdef0", "InvalidSnapshot.NotFound"),
    ("vol-123", "InvalidID"),
    ("snap-0123456789ABCDEF0", "InvalidID"),
    ("i-0123456789abcdef0", "InvalidID"),
    ("ami-0123456789abcdef0", "InvalidID"),
    ("", "InvalidID"),
    ("vol-0123456789abcdef0\x1b[31m", "InvalidID"),
])
def test_tags_bad_resource(daemon, rid, code):
    good = daemon.create_volume(1)["VolumeId"]
    before = state(daemon)
    # the good resource first: nothing is tagged when a later one is refused
    r = daemon.cli("create-tags", "--resources", good, rid, "--tags", "Key=a,Value=b")
    msg = assert_ec2_error(r, code, "CreateTags")
    assert "\x1b" not in msg
    r = daemon.cli("delete-tags", "--resources", good, rid)
    assert_ec2_error(r, code, "DeleteTags")
    assert state(daemon) == before


def test_tags_other_account_or_region(daemon):
    vol = daemon.create_volume(1, "--tag-specifications", spec("volume", [("Name", "mine")]))
    vid = vol["VolumeId"]
    snap = daemon.ok("create-snapshot", "--volume-id", vid)["SnapshotId"]
    wait_completed(daemon, snap)
    before = state(daemon)
    for kw in ({"account": OTHER_ACCOUNT}, {"region": "eu-west-1"}):
        for rid, code in [(vid, "InvalidVolume.NotFound"), (snap, "InvalidSnapshot.NotFound")]:
            assert_ec2_error(daemon.cli("create-tags", "--resources", rid, "--tags", "Key=a",
                                        **kw), code, "CreateTags")
            assert_ec2_error(daemon.cli("delete-tags", "--resources", rid, **kw), code,
                             "DeleteTags")
        assert described_tags(daemon, **kw) == []
    assert state(daemon) == before


def test_tags_usage_errors(daemon):
    vid = daemon.create_volume(1)["VolumeId"]
    for args in (["create-tags", "--resources", vid],                # --tags is required
                 ["create-tags", "--tags", "Key=a"],                  # --resources is required
                 ["create-tags", "--resources", vid, "--tags"],       # no value
                 ["create-tags", "--resources", vid, "--tags", "Key=a,Value='b"],
                 ["delete-tags", "--tags", "Key=a"]):
        r = daemon.cli(*args)
        assert r.rc == 252, (args, r.rc, r.err)
    assert daemon.ok("describe-tags")["Tags"] == []


def test_delete_tags_refuses_aws_prefix(daemon):
    vid = daemon.create_volume(1, "--tag-specifications", spec("volume", [("a", "1")]))["VolumeId"]
    r = daemon.cli("delete-tags", "--resources", vid, "--tags", "Key=aws:cloudformation:stack")
    assert_ec2_error(r, "InvalidParameterValue", "DeleteTags")
    assert len(described_tags(daemon)) == 1


# ---- lifetime -----------------------------------------------------------------------------

def test_tags_go_with_their_resource(daemon):
    vol = daemon.create_volume(1, "--tag-specifications", spec("volume", [("Name", "v")]))
    vid = vol["VolumeId"]
    snap = daemon.ok("create-snapshot", "--volume-id", vid, "--tag-specifications",
                     spec("snapshot", [("Name", "s")]))["SnapshotId"]
    wait_completed(daemon, snap)
    daemon.ok("create-tags", "--resources", vid, snap, "--tags", "Key=env,Value=prod")
    assert len(catalog_tags(daemon, vid)) == 2 and len(catalog_tags(daemon, snap)) == 2

    daemon.ok("delete-volume", "--volume-id", vid)
    assert catalog_tags(daemon, vid) == []
    assert {t["ResourceId"] for t in described_tags(daemon)} == {snap}
    daemon.ok("delete-snapshot", "--snapshot-id", snap)
    assert catalog_tags(daemon, snap) == []
    assert described_tags(daemon) == []
    # the IDs are gone: tagging them again is NotFound, not a resurrection
    assert_ec2_error(daemon.cli("create-tags", "--resources", vid, "--tags", "Key=a"),
                     "InvalidVolume.NotFound", "CreateTags")
    assert_ec2_error(daemon.cli("create-tags", "--resources", snap, "--tags", "Key=a"),
                     "InvalidSnapshot.NotFound", "CreateTags")


def test_tag_verbs_help():
    from test_cli import ebsim_raw
    for verb in ("create-tags", "delete-tags", "describe-tags"):
        r = ebsim_raw(verb, "--help")
        assert r.returncode == 0
        assert "--tags" in r.stdout or "--filters" in r.stdout
        assert "EXAMPLES" in r.stdout

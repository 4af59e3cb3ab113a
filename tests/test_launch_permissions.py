# SPDX-License-Identifier: MIT
"""AMI launch permissions (the seed's public / explicit / implicit), enforced on every path.

Design notes
------------
- The matrix: an owner publishes three images, private, shared (an explicit launch
  permission for one account) and public. Four accounts (the owner, the permitted account,
  a stranger, and "anyone": an account nobody ever named) try each of describe, launch,
  copy-image and create-volume from the image's snapshot, and every cell has its expected
  outcome: success, or the exact EC2 error code (InvalidAMIID.NotFound,
  InvalidSnapshot.NotFound). A refused launch or create-volume creates nothing.
- The model test drives >= 10,000 random operations (add, remove, reset, launch with
  DryRun, describe-images, describe-image-attribute, copy-image with DryRun) by 4 accounts
  on 3 images, over the control socket (one JSON line each way, common/ctl_proto.h),
  against a Python model of the permissions; every reply must match the model exactly.
  The seed is printed (EBSIM_MODEL_SEED replays a run); the rate is printed too.
"""
import json
import os
import random
import socket
import time

import pytest

from test_snapshots import snapshot

OWNER = "123456789012"
FRIEND = "111122223333"
STRANGER = "444455556666"
ANYONE = "777788889999"
ACCOUNTS = [OWNER, FRIEND, STRANGER, ANYONE]
ITYPE = "m3.medium"


def call(d, action, params, account=OWNER, region="us-east-1"):
    """One request over the control socket: (code or None, result)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(d.home, "ebsimd.sock"))
        s.sendall(json.dumps({"Action": action, "Account": account, "Region": region,
                              "Params": params}).encode() + b"\n")
        buf = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
    finally:
        s.close()
    reply = json.loads(buf)
    if "Error" in reply:
        return reply["Error"]["Code"], None
    return None, reply["Result"]


def base_image(d, name):
    """A 1 GiB volume with a little data, snapshotted and registered: (ami, snap)."""
    v = d.create_volume(1)
    with open(v["LocalPath"], "r+b") as f:
        f.write(os.urandom(65536))
        f.flush()
        os.fsync(f.fileno())
    snap = snapshot(d, v["VolumeId"])["SnapshotId"]
    ami = d.ok("register-image", "--name", name, "--root-device-name", "/dev/xvda",
               "--block-device-mappings",
               json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}]))["ImageId"]
    d.ok("delete-volume", "--volume-id", v["VolumeId"])
    return ami, snap


def err(r):
    assert r.rc == 254, (r.rc, r.out, r.err)
    return r.error_code()


@pytest.fixture
def three(daemon):
    """private, shared (with FRIEND) and public images of OWNER: {kind: (ami, snap)}."""
    d = daemon
    imgs = {k: base_image(d, f"lp-{k}") for k in ("private", "shared", "public")}
    d.ok("modify-image-attribute", "--image-id", imgs["shared"][0],
         "--launch-permission", json.dumps({"Add": [{"UserId": FRIEND}]}))
    d.ok("modify-image-attribute", "--image-id", imgs["public"][0],
         "--operation-type", "add", "--user-groups", "all")
    return imgs


def allowed(kind, acct):
    return acct == OWNER or kind == "public" or (kind == "shared" and acct == FRIEND)


def counts(d, acct):
    vols = d.ok("describe-volumes", account=acct)["Volumes"]
    res = d.ok("describe-instances", account=acct)["Reservations"]
    return len(vols), sum(len(r["Instances"]) for r in res)


@pytest.mark.parametrize("kind", ["private", "shared", "public"])
@pytest.mark.parametrize("acct", ACCOUNTS, ids=["owner", "permitted", "stranger", "anyone"])
def test_matrix(daemon, three, kind, acct):
    d = daemon
    ami, snap = three[kind]
    ok = allowed(kind, acct)
    # describe: by ID and in the full list
    r = d.cli("describe-images", "--image-ids", ami, account=acct)
    if ok:
        assert r.rc == 0 and [i["ImageId"] for i in r.json["Images"]] == [ami]
        assert r.json["Images"][0]["Public"] == (kind == "public")
    else:
        assert err(r) == "InvalidAMIID.NotFound"
    listed = {i["ImageId"] for i in d.ok("describe-images", account=acct)["Images"]}
    assert (ami in listed) == ok
    # launch: DryRun first, then for real
    before = counts(d, acct)
    r = d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE, "--dry-run",
              account=acct)
    assert err(r) == ("DryRunOperation" if ok else "InvalidAMIID.NotFound")
    assert counts(d, acct) == before
    r = d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE, account=acct)
    if ok:
        assert r.rc == 0, r.err
        iid = r.json["Instances"][0]["InstanceId"]
        inst = d.ok("describe-instances", "--instance-ids", iid, account=acct)
        assert inst["Reservations"][0]["Instances"][0]["ImageId"] == ami
        d.ok("terminate-instances", "--instance-ids", iid, account=acct)
    else:
        assert err(r) == "InvalidAMIID.NotFound"
        assert counts(d, acct) == before
    # copy-image (DryRun: the check, nothing created)
    r = d.cli("copy-image", "--source-region", "us-east-1", "--source-image-id", ami,
              "--name", "copy-of-" + kind, "--dry-run", account=acct)
    assert err(r) == ("DryRunOperation" if ok else "InvalidAMIID.NotFound")
    # create-volume from the image's snapshot
    before = counts(d, acct)
    r = d.cli("create-volume", "--snapshot-id", snap, account=acct)
    if ok:
        assert r.rc == 0, r.err
        assert r.json["SnapshotId"] == snap
        d.ok("delete-volume", "--volume-id", r.json["VolumeId"], account=acct)
    else:
        assert err(r) == "InvalidSnapshot.NotFound"
        assert counts(d, acct) == before
    # the snapshot itself stays the owner's: delete is refused to everyone else
    if acct != OWNER:
        assert err(d.cli("delete-snapshot", "--snapshot-id", snap, account=acct)) == \
            "InvalidSnapshot.NotFound"
    # the attributes are the owner's only
    r = d.cli("describe-image-attribute", "--image-id", ami, "--attribute",
              "launchPermission", account=acct)
    if acct == OWNER:
        lp = r.json["LaunchPermissions"]
        assert lp == {"private": [], "shared": [{"UserId": FRIEND}],
                      "public": [{"Group": "all"}]}[kind]
    else:
        assert err(r) == ("AuthFailure" if ok else "InvalidAMIID.NotFound")
    r = d.cli("modify-image-attribute", "--image-id", ami, "--launch-permission",
              json.dumps({"Add": [{"UserId": acct}]}), account=acct)
    if acct != OWNER:
        assert err(r) == ("AuthFailure" if ok else "InvalidAMIID.NotFound")
        r = d.cli("deregister-image", "--image-id", ami, account=acct)
        assert err(r) == ("AuthFailure" if ok else "InvalidAMIID.NotFound")


def test_copy_by_permitted_account_is_private_and_its_own(daemon, three):
    d = daemon
    ami, snap = three["shared"]
    new = d.ok("copy-image", "--source-region", "us-east-1", "--source-image-id", ami,
               "--name", "friends-copy", account=FRIEND, region="eu-west-1")["ImageId"]
    for _ in range(200):
        img = d.ok("describe-images", "--image-ids", new, account=FRIEND,
                   region="eu-west-1")["Images"][0]
        if img["State"] != "pending":
            break
        time.sleep(0.05)
    assert img["State"] == "available" and img["OwnerId"] == FRIEND and not img["Public"]
    assert img["SourceImageId"] == ami
    lp = d.ok("describe-image-attribute", "--image-id", new, "--attribute",
              "launchPermission", account=FRIEND, region="eu-west-1")
    assert lp["LaunchPermissions"] == []  # launch permissions are not copied
    # the owner of the source cannot see the friend's copy
    r = d.cli("describe-images", "--image-ids", new, region="eu-west-1")
    assert err(r) == "InvalidAMIID.NotFound"
    new_snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    s = d.ok("describe-snapshots", "--snapshot-ids", new_snap, account=FRIEND,
             region="eu-west-1")["Snapshots"][0]
    assert s["OwnerId"] == FRIEND and s["State"] == "completed"


def test_delete_associated_snapshots_spares_other_accounts(daemon, three):
    """FRIEND images an instance of OWNER's shared image, adding a mapping of OWNER's
    snapshot; deregistering FRIEND's image with --delete-associated-snapshots deletes
    FRIEND's snapshots only."""
    d = daemon
    ami, snap = three["shared"]
    inst = d.ok("run-instances", "--image-id", ami, "--instance-type", ITYPE,
                account=FRIEND)["Instances"][0]
    bdm = [{"DeviceName": "/dev/sdg", "Ebs": {"SnapshotId": snap}}]
    mine = d.ok("create-image", "--instance-id", inst["InstanceId"], "--name", "friends",
                "--block-device-mappings", json.dumps(bdm), account=FRIEND)["ImageId"]
    for _ in range(400):
        img = d.ok("describe-images", "--image-ids", mine, account=FRIEND)["Images"][0]
        if img["State"] != "pending":
            break
        time.sleep(0.05)
    assert img["State"] == "available"
    m = {x["DeviceName"]: x for x in img["BlockDeviceMappings"]}
    assert m["/dev/sdg"]["Ebs"]["SnapshotId"] == snap
    friends_snap = m["/dev/xvda"]["Ebs"]["SnapshotId"]
    d.ok("deregister-image", "--image-id", ami)  # OWNER keeps the snapshot
    d.ok("deregister-image", "--image-id", mine, "--delete-associated-snapshots", account=FRIEND)
    assert d.ok("describe-snapshots", "--snapshot-ids", snap)["Snapshots"][0]["State"] == \
        "completed"
    assert err(d.cli("describe-snapshots", "--snapshot-ids", friends_snap, account=FRIEND)) == \
        "InvalidSnapshot.NotFound"
    # and OWNER's snapshot, no longer behind an image FRIEND may launch, is OWNER's alone
    assert err(d.cli("create-volume", "--snapshot-id", snap, account=FRIEND)) == \
        "InvalidSnapshot.NotFound"


def test_revoked_permission_stops_launch_and_restore(daemon, three):
    d = daemon
    ami, snap = three["shared"]
    d.ok("modify-image-attribute", "--image-id", ami, "--operation-type", "remove",
         "--user-ids", FRIEND)
    assert err(d.cli("run-instances", "--image-id", ami, "--instance-type", ITYPE,
                     account=FRIEND)) == "InvalidAMIID.NotFound"
    assert err(d.cli("create-volume", "--snapshot-id", snap, account=FRIEND)) == \
        "InvalidSnapshot.NotFound"
    pub = three["public"][0]
    assert d.ok("reset-image-attribute", "--image-id", pub, "--attribute",
                "launchPermission")["Return"] is True
    assert err(d.cli("describe-images", "--image-ids", pub, account=STRANGER)) == \
        "InvalidAMIID.NotFound"


def test_bad_launch_permission_input(daemon, three):
    d = daemon
    ami = three["private"][0]
    for bad, code in [
        ("not json", "InvalidParameterValue"),
        ('{"Add": {"UserId": "111122223333"}}', "InvalidParameterValue"),
        ('{"Add": [{"UserId": "1234"}]}', "InvalidUserID.Malformed"),
        ('{"Add": [{"Group": "everyone"}]}', "InvalidParameterValue"),
        ('{"Add": [{"UserId": "111122223333", "Group": "all"}]}', "InvalidParameterValue"),
        ('{"Grant": [{"Group": "all"}]}', "InvalidParameterValue"),
        ('[{"UserId": "111122223333"}]', "InvalidParameterValue"),
    ]:
        r = d.cli("modify-image-attribute", "--image-id", ami, "--launch-permission", bad)
        assert err(r) == code, bad
    assert err(d.cli("modify-image-attribute", "--image-id", ami, "--operation-type", "grant",
                     "--user-ids", FRIEND)) == "InvalidParameterValue"
    assert err(d.cli("describe-image-attribute", "--image-id", ami, "--attribute",
                     "colour")) == "InvalidParameterValue"
    assert err(d.cli("reset-image-attribute", "--image-id", ami, "--attribute",
                     "description")) == "InvalidParameterValue"
    # nothing of it stuck
    lp = d.ok("describe-image-attribute", "--image-id", ami, "--attribute", "launchPermission")
    assert lp == {"ImageId": ami, "LaunchPermissions": []}
    # description: awscli's Value= shorthand
    d.ok("modify-image-attribute", "--image-id", ami, "--description", "Value=new words")
    assert d.ok("describe-image-attribute", "--image-id", ami, "--attribute",
                "description")["Description"] == {"Value": "new words"}
    assert err(d.cli("modify-image-attribute", "--image-id", ami, "--description", "x",
                     "--dry-run")) == "DryRunOperation"


def test_executable_users_filter(daemon, three):
    d = daemon

    def ids(*args, account=OWNER):
        return {i["ImageId"] for i in d.ok("describe-images", *args, account=account)["Images"]}

    assert ids("--executable-users", "all") == {three["public"][0]}
    assert ids("--executable-users", FRIEND) == {three["shared"][0]}
    assert ids("--executable-users", "self", account=FRIEND) == {three["shared"][0]}
    assert ids("--owners", OWNER, account=FRIEND) == {three["shared"][0], three["public"][0]}
    assert ids("--owners", "self", account=FRIEND) == set()
    assert ids("--filters", "Name=is-public,Values=false", account=FRIEND) == \
        {three["shared"][0]}


# ---- the model test ----------------------------------------------------------------------

class Model:
    def __init__(self, images):
        self.images = images  # ami -> {"users": [ordered], "public": bool}

    def sees(self, ami, acct):
        p = self.images[ami]
        return acct == OWNER or p["public"] or acct in p["users"]

    def owned(self, ami, acct):
        if not self.sees(ami, acct):
            return "InvalidAMIID.NotFound"
        return None if acct == OWNER else "AuthFailure"

    def lp(self, ami):
        p = self.images[ami]
        return ([{"Group": "all"}] if p["public"] else []) + [{"UserId": u} for u in p["users"]]

    def modify(self, ami, acct, add, rem, add_all, rem_all):
        e = self.owned(ami, acct)
        if e:
            return e
        p = self.images[ami]
        for u in add:
            if u not in p["users"]:
                p["users"].append(u)
        if add_all:
            p["public"] = True
        p["users"] = [u for u in p["users"] if u not in rem]
        if rem_all:
            p["public"] = False
        return None


def test_model_random_operations(daemon, three):
    d = daemon
    seed = int(os.environ.get("EBSIM_MODEL_SEED", random.randrange(1 << 32)))
    n_ops = int(os.environ.get("EBSIM_MODEL_OPS", "10000"))
    print(f"launch-permission model seed {seed} (EBSIM_MODEL_SEED={seed} replays it)")
    rnd = random.Random(seed)
    amis = [three[k][0] for k in ("private", "shared", "public")]
    m = Model({a: {"users": [], "public": False} for a in amis})
    # start from a known state
    for a in amis:
        assert call(d, "ResetImageAttribute", {"ImageId": a, "Attribute": "launchPermission"}) \
            == (None, {"Return": True})
    matched = 0
    kinds = {}
    t0 = time.monotonic()
    for i in range(n_ops):
        op = rnd.choice(["add", "remove", "reset", "launch", "describe", "describe1", "attr",
                         "copy"])
        kinds[op] = kinds.get(op, 0) + 1
        acct = rnd.choice(ACCOUNTS + [OWNER])  # the owner acts a little more often
        ami = rnd.choice(amis)
        if op in ("add", "remove"):
            users = rnd.sample([FRIEND, STRANGER, ANYONE, OWNER], rnd.randint(0, 2))
            group = rnd.random() < 0.3
            if rnd.random() < 0.5:
                entries = [{"UserId": u} for u in users] + ([{"Group": "all"}] if group else [])
                params = {"ImageId": ami, "LaunchPermission": {op.capitalize(): entries}}
            else:
                if not users and not group:
                    users = [FRIEND]
                params = {"ImageId": ami, "OperationType": op}
                if users:
                    params["UserIds"] = users
                if group:
                    params["UserGroups"] = ["all"]
            want = m.modify(ami, acct, users if op == "add" else [],
                            users if op == "remove" else [], group and op == "add",
                            group and op == "remove")
            got = call(d, "ModifyImageAttribute", params, account=acct)
            expect = (want, None) if want else (None, {})
        elif op == "reset":
            want = m.owned(ami, acct)
            if not want:
                m.images[ami] = {"users": [], "public": False}
            got = call(d, "ResetImageAttribute", {"ImageId": ami, "Attribute": "launchPermission"},
                       account=acct)
            expect = (want, None) if want else (None, {"Return": True})
        elif op == "launch":
            got = call(d, "RunInstances", {"ImageId": ami, "InstanceType": ITYPE,
                                           "MinCount": 1, "MaxCount": 1, "DryRun": True},
                       account=acct)
            expect = ("DryRunOperation" if m.sees(ami, acct) else "InvalidAMIID.NotFound", None)
        elif op == "copy":
            got = call(d, "CopyImage", {"SourceRegion": "us-east-1", "SourceImageId": ami,
                                        "Name": "model-copy", "DryRun": True},
                       account=acct, region=rnd.choice(["us-east-1", "eu-west-1"]))
            expect = ("DryRunOperation" if m.sees(ami, acct) else "InvalidAMIID.NotFound", None)
        elif op == "describe":
            code, res = call(d, "DescribeImages", {}, account=acct)
            got = (code, sorted(i["ImageId"] for i in res["Images"]) if res else None)
            expect = (None, sorted(a for a in amis if m.sees(a, acct)))
        elif op == "describe1":
            code, res = call(d, "DescribeImages", {"ImageIds": [ami]}, account=acct)
            got = (code, [(i["ImageId"], i["Public"]) for i in res["Images"]] if res else None)
            expect = ((None, [(ami, m.images[ami]["public"])]) if m.sees(ami, acct)
                      else ("InvalidAMIID.NotFound", None))
        else:  # attr
            got = call(d, "DescribeImageAttribute", {"ImageId": ami,
                                                     "Attribute": "launchPermission"},
                       account=acct)
            want = m.owned(ami, acct)
            expect = (want, None) if want else (None, {"ImageId": ami,
                                                       "LaunchPermissions": m.lp(ami)})
        assert got == expect, f"op {i} ({op} by {acct} on {ami}, seed {seed}): {got} != {expect}"
        matched += 1
    dt = time.monotonic() - t0
    print(f"model: {matched}/{n_ops} operations matched (100%) in {dt:.1f} s, "
          f"{n_ops / dt:.0f} ops/s; mix {sorted(kinds.items())}")
    assert matched == n_ops >= 10000 or "EBSIM_MODEL_OPS" in os.environ
    # nothing was created by the dry runs
    for acct in ACCOUNTS:
        assert counts(d, acct)[1] == 0
    assert len(d.ok("describe-images", "--owners", "self", region="eu-west-1")["Images"]) == 0

# SPDX-License-Identifier: MIT
"""The ebsim CLI as awscli users expect it: EC2 error codes and awscli's exit codes, the
exact error format on stderr, help for every command, global options in any position and
from the environment, region and account isolation, and the JSON shapes of the volume
actions.

Design notes
------------
- Bad input must change nothing: each error test snapshots HOME/volumes and
  describe-volumes before and after.
- Tests that need the CLI without conftest's --home/--account/--region prefix call the
  binary directly (``ebsim_raw``) with an explicit environment.
"""
import json
import os
import re
import subprocess

import pytest

from conftest import EBSIM

ERR_RE = re.compile(r"\A\nAn error occurred \(([A-Za-z.]+)\) when calling the ([A-Za-z]+) "
                    r"operation: ([^\n]+)\n\Z")
VOL_ID_RE = re.compile(r"\Avol-[0-9a-f]{17}\Z")
ISO_Z_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")
VERBS = ["create-volume", "describe-volumes", "delete-volume", "modify-volume"]
OTHER_ACCOUNT = "210987654321"


def clean_env(**kw):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EBSIM_HOME", "EBSIM_REGION", "EBSIM_ACCOUNT")}
    env.update(kw)
    return env


def ebsim_raw(*args, env=None):
    return subprocess.run([EBSIM, *map(str, args)], capture_output=True, text=True,
                          env=env if env is not None else clean_env(), stdin=subprocess.DEVNULL)


def snapshot(d):
    """What bad input must leave unchanged: the volume directories and the API's view."""
    return (sorted(os.listdir(os.path.join(d.home, "volumes"))),
            sorted(os.listdir(os.path.join(d.home, "mnt"))),
            d.ok("describe-volumes"))


def assert_ec2_error(r, code, action, rc=254):
    assert r.rc == rc, f"exit {r.rc}, stderr {r.err!r}"
    m = ERR_RE.match(r.err)
    assert m, f"stderr not in awscli's error format: {r.err!r}"
    assert (m.group(1), m.group(2)) == (code, action), r.err
    assert r.out == ""
    return m.group(3)


# ---- EC2 error codes ----------------------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-1", "abc", "70000"])
def test_create_bad_size(daemon, size):
    before = snapshot(daemon)
    r = daemon.cli("create-volume", "--size", size)
    assert_ec2_error(r, "InvalidParameterValue", "CreateVolume")
    assert snapshot(daemon) == before


def test_unknown_volume(daemon):
    daemon.create_volume(1)
    before = snapshot(daemon)
    missing = "vol-0123456789abcdef0"
    for args, action in [(["describe-volumes", "--volume-ids", missing], "DescribeVolumes"),
                         (["delete-volume", "--volume-id", missing], "DeleteVolume"),
                         (["modify-volume", "--volume-id", missing, "--size", "5"],
                          "ModifyVolume")]:
        msg = assert_ec2_error(daemon.cli(*args), "InvalidVolume.NotFound", action)
        assert missing in msg
    assert snapshot(daemon) == before


MALFORMED = {
    "traversal": "vol-../../etc",
    "not-hex": "vol-XYZ",
    "upper-prefix": "VOL-0123456789abcdef0",
    "16-digits": "vol-0123456789abcdef",
    "upper-hex": "vol-0123456789ABCDEF0",
    "empty": "",
    "300-chars": "vol-" + "0" * 296,
    "control-char": "vol-0123456789abcde\x01f",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_volume_id(daemon, name):
    vid = MALFORMED[name]
    daemon.create_volume(1)
    before = snapshot(daemon)
    for args, action in [(["describe-volumes", "--volume-ids", vid], "DescribeVolumes"),
                         (["delete-volume", "--volume-id", vid], "DeleteVolume"),
                         (["modify-volume", "--volume-id", vid, "--size", "5"], "ModifyVolume")]:
        r = daemon.cli(*args)
        assert r.rc == 254, (args, r.rc, r.err)
        assert r.error_code() == "InvalidVolumeID.Malformed", (args, r.err)
        assert f"calling the {action} operation" in r.err
    assert snapshot(daemon) == before


@pytest.mark.parametrize("ctl", ["\n", "\x1b[2J"])
def test_error_message_escapes_control_chars(daemon, ctl):
    r = daemon.cli("describe-volumes", "--volume-ids", f"vol-0123{ctl}456789abcdef0")
    assert r.error_code() == "InvalidVolumeID.Malformed"
    assert_ec2_error(r, "InvalidVolumeID.Malformed", "DescribeVolumes")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", r.err)


def test_modify_shrink_refused(daemon):
    v = daemon.create_volume(2)
    before = snapshot(daemon)
    r = daemon.cli("modify-volume", "--volume-id", v["VolumeId"], "--size", "1")
    assert_ec2_error(r, "InvalidParameterValue", "ModifyVolume")
    assert snapshot(daemon) == before
    assert os.path.getsize(v["LocalPath"]) == 2 << 30


@pytest.mark.parametrize("args,code", [
    (["--size", "10", "--volume-type", "io1"], "MissingParameter"),
    (["--size", "10", "--volume-type", "io2"], "MissingParameter"),
    (["--size", "10", "--volume-type", "gp2", "--iops", "300"], "InvalidParameterCombination"),
    (["--size", "10", "--volume-type", "gp2", "--throughput", "200"],
     "InvalidParameterCombination"),
    (["--size", "10", "--volume-type", "gp9"], "InvalidParameterValue"),
    (["--size", "1", "--availability-zone", "us-east-1z"], "InvalidZone.NotFound"),
    (["--size", "1", "--availability-zone", "eu-west-1a"], "InvalidZone.NotFound"),
    (["--size", "1", "--availability-zone", "bogus"], "InvalidZone.NotFound"),
], ids=["io1-no-iops", "io2-no-iops", "gp2-iops", "gp2-throughput", "bad-type",
        "zone-z", "zone-other-region", "zone-bogus"])
def test_create_bad_combinations(daemon, args, code):
    before = snapshot(daemon)
    assert_ec2_error(daemon.cli("create-volume", *args), code, "CreateVolume")
    assert snapshot(daemon) == before


def test_error_format_exact(daemon):
    r = daemon.cli("describe-volumes", "--volume-ids", "vol-0123456789abcdef0")
    assert r.rc == 254
    assert r.err == ("\nAn error occurred (InvalidVolume.NotFound) when calling the "
                     "DescribeVolumes operation: The volume 'vol-0123456789abcdef0' does not "
                     "exist.\n")
    assert r.out == ""


# ---- usage errors and an absent daemon ---------------------------------------------------

@pytest.mark.parametrize("args", [
    ["frobnicate-volume"],
    ["create-volume", "--size", "1", "--no-such-option", "x"],
    ["delete-volume"],
    ["modify-volume", "--size", "5"],
    ["create-volume", "--size"],
], ids=["unknown-verb", "unknown-option", "delete-no-id", "modify-no-id", "option-no-value"])
def test_usage_errors_exit_252(daemon, args):
    before = snapshot(daemon)
    r = daemon.cli(*args)
    assert r.rc == 252, (r.rc, r.err)
    assert r.out == ""
    assert "usage:" in r.err or "error" in r.err
    assert r.error_code() is None
    assert snapshot(daemon) == before


def test_daemon_not_running(home):
    r = ebsim_raw("--home", home, "describe-volumes")
    assert r.returncode == 255, r.stderr
    assert r.stdout == ""
    assert f"ebsimd --home {home}" in r.stderr
    assert not os.path.exists(os.path.join(home, "volumes"))


# ---- help --------------------------------------------------------------------------------

def listed_commands():
    out = ebsim_raw("help").stdout
    return re.findall(r"^\s+o ([a-z0-9-]+)", out, re.M)


def test_help_lists_every_verb():
    r = ebsim_raw("help")
    assert r.returncode == 0
    for section in ("NAME", "SYNOPSIS", "GLOBAL OPTIONS", "EXIT STATUS", "AVAILABLE COMMANDS"):
        assert section in r.stdout
    assert set(VERBS) <= set(listed_commands())
    assert ebsim_raw("--help").stdout == r.stdout


@pytest.mark.parametrize("verb", sorted(set(VERBS) | set(listed_commands())))
def test_verb_help(verb):
    for args in ([verb, "--help"], ["help", verb]):
        r = ebsim_raw(*args)
        assert r.returncode == 0, (args, r.stderr)
        for section in ("NAME", "SYNOPSIS", "OPTIONS"):
            assert section in r.stdout, (args, section)
        assert verb in r.stdout


# ---- global options, environment, isolation -----------------------------------------------

def test_global_options_anywhere(daemon):
    h = daemon.home
    v = ebsim_raw("--home", h, "--region", "eu-west-1", "create-volume", "--size", "1")
    assert v.returncode == 0, v.stderr
    vid = json.loads(v.stdout)["VolumeId"]
    for args in (["--home", h, "--region", "eu-west-1", "describe-volumes"],
                 ["describe-volumes", "--home", h, "--region", "eu-west-1"],
                 ["--home", h, "describe-volumes", "--region=eu-west-1"],
                 ["describe-volumes", "--volume-ids", vid, "--region", "eu-west-1",
                  "--home", h, "--account", "123456789012"]):
        r = ebsim_raw(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert [x["VolumeId"] for x in json.loads(r.stdout)["Volumes"]] == [vid]


def test_environment_defaults(daemon):
    env = clean_env(EBSIM_HOME=daemon.home, EBSIM_REGION="ap-southeast-2",
                    EBSIM_ACCOUNT=OTHER_ACCOUNT)
    r = ebsim_raw("create-volume", "--size", "1", env=env)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["AvailabilityZone"] == "ap-southeast-2a"
    assert v["LocalPath"].startswith(os.path.join(daemon.home, "mnt") + "/")
    # the same three values as options find it; the defaults do not
    mine = daemon.ok("describe-volumes", region="ap-southeast-2", account=OTHER_ACCOUNT)
    assert [x["VolumeId"] for x in mine["Volumes"]] == [v["VolumeId"]]
    assert daemon.ok("describe-volumes")["Volumes"] == []
    # an option beats the environment
    r = ebsim_raw("--region", "us-east-1", "describe-volumes", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["Volumes"] == []


def test_region_and_account_isolation(daemon):
    v = daemon.create_volume(1)
    vid = v["VolumeId"]
    for kw in ({"region": "eu-west-1"}, {"account": OTHER_ACCOUNT},
               {"region": "eu-west-1", "account": OTHER_ACCOUNT}):
        assert daemon.ok("describe-volumes", **kw)["Volumes"] == []
        for args, action in [(["describe-volumes", "--volume-ids", vid], "DescribeVolumes"),
                             (["delete-volume", "--volume-id", vid], "DeleteVolume"),
                             (["modify-volume", "--volume-id", vid, "--size", "3"],
                              "ModifyVolume")]:
            assert_ec2_error(daemon.cli(*args, **kw), "InvalidVolume.NotFound", action)
    # untouched for its owner
    mine = daemon.ok("describe-volumes", "--volume-ids", vid)["Volumes"][0]
    assert (mine["Size"], mine["State"]) == (1, "available")
    assert os.path.exists(v["LocalPath"])


# ---- output shapes -------------------------------------------------------------------------

def check_volume_shape(v):
    assert VOL_ID_RE.match(v["VolumeId"]), v["VolumeId"]
    assert ISO_Z_RE.match(v["CreateTime"]), v["CreateTime"]
    assert isinstance(v["Size"], int) and isinstance(v["Iops"], int)
    assert isinstance(v["Encrypted"], bool)
    assert v["SnapshotId"] == ""
    assert v["AvailabilityZone"] == "us-east-1a"
    assert v["VolumeType"] in ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")


def test_create_volume_output(daemon):
    v = daemon.create_volume(3)
    check_volume_shape(v)
    assert (v["Size"], v["State"], v["VolumeType"], v["Iops"], v["Encrypted"]) == \
        (3, "available", "gp2", 100, False)
    assert v["LocalPath"] == os.path.join(daemon.home, "mnt", v["VolumeId"])
    assert os.path.getsize(v["LocalPath"]) == 3 << 30

    g = daemon.create_volume(8, "--volume-type", "gp3", "--iops", "4000", "--throughput",
                             "300", "--encrypted")
    check_volume_shape(g)
    assert (g["VolumeType"], g["Iops"], g["Throughput"], g["Encrypted"]) == \
        ("gp3", 4000, 300, True)
    assert g["VolumeId"] != v["VolumeId"]


def test_describe_volumes_output(daemon):
    v = daemon.create_volume(2)
    out = daemon.ok("describe-volumes")
    assert list(out) == ["Volumes"]
    (d,) = out["Volumes"]
    check_volume_shape(d)
    assert d["Attachments"] == []
    created = {k: val for k, val in v.items() if k != "State"}
    assert {k: d[k] for k in created} == created
    assert d["State"] == "available"


def test_create_volume_tags(daemon):
    spec = '[{"ResourceType":"volume","Tags":[{"Key":"Name","Value":"data"}]}]'
    v = daemon.create_volume(1, "--tag-specifications", spec)
    assert v.get("Tags") == [{"Key": "Name", "Value": "data"}]
    other = daemon.create_volume(1)
    out = daemon.ok("describe-volumes", "--filters", "Name=tag:Name,Values=data")
    assert [x["VolumeId"] for x in out["Volumes"]] == [v["VolumeId"]]
    out = daemon.ok("describe-volumes", "--filters", "Name=tag-key,Values=Name")
    assert other["VolumeId"] not in [x["VolumeId"] for x in out["Volumes"]]


def test_describe_filters(daemon):
    gp3 = {daemon.create_volume(1, "--volume-type", "gp3")["VolumeId"] for _ in range(2)}
    gp2 = {daemon.create_volume(1)["VolumeId"] for _ in range(3)}
    big = daemon.create_volume(5)["VolumeId"]

    def ids(*filters):
        out = daemon.ok("describe-volumes", "--filters", *filters)
        return {v["VolumeId"] for v in out["Volumes"]}

    assert ids("Name=volume-type,Values=gp3") == gp3
    assert ids("Name=volume-type,Values=gp2") == gp2 | {big}
    assert ids("Name=volume-type,Values=gp2,gp3") == gp3 | gp2 | {big}
    assert ids("Name=volume-type,Values=gp2", "Name=size,Values=5") == {big}
    assert ids('[{"Name":"volume-type","Values":["gp3"]}]') == gp3
    assert ids("Name=volume-type,Values=io1") == set()
    r = daemon.cli("describe-volumes", "--filters", "Name=no-such-filter,Values=x")
    assert_ec2_error(r, "InvalidParameterValue", "DescribeVolumes")


def test_describe_pagination(daemon):
    made = {daemon.create_volume(1)["VolumeId"] for _ in range(7)}
    seen, pages, token = [], [], None
    while True:
        args = ["describe-volumes", "--max-results", "5"]
        if token:
            args += ["--next-token", token]
        out = daemon.ok(*args)
        pages.append(len(out["Volumes"]))
        seen += [v["VolumeId"] for v in out["Volumes"]]
        token = out.get("NextToken")
        if not token:
            break
        assert len(pages) < 5, "pagination does not end"
    assert pages == [5, 2]
    assert sorted(seen) == sorted(made)  # every volume exactly once
    r = daemon.cli("describe-volumes", "--max-results", "4")
    assert_ec2_error(r, "InvalidParameterValue", "DescribeVolumes")

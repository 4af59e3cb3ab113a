# SPDX-License-Identifier: MIT
"""ebsim-ami and snapshot/bundle.c: the ec2-ami-tools bundle format, end to end.

Design notes
------------
- One module-scoped bundle of a 25 MiB random image (3 parts of 10 MiB) plus a small one
  signed by the same key; each tampering test copies the bundle into its own directory,
  mutates it, and checks that verify-bundle AND unbundle refuse it with a clear message,
  leaving the destination empty.
- The round trip is checked with plain tools (openssl pkeyutl/enc, gunzip, tar), not with
  our own code, and the signature with `openssl dgst -sha1 -verify` over the signed text
  cut out the way ec2-ami-tools' XMLUtil.get_xml does.
- Key pairs come from `openssl req -x509 -newkey rsa:2048`.
"""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import BUILD, sha256_file

AMI = os.path.join(BUILD, "ebsim-ami")
ACCOUNT = "123456789012"
BIG = 25 << 20


def ami(*args, home=None, account=ACCOUNT, region="us-east-1", env=None):
    cmd = [AMI]
    if home:
        cmd += ["--home", home, "--account", account, "--region", region]
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                       env=dict(os.environ, **env) if env else None)
    return p


def keypair(d, name):
    k, c = os.path.join(d, name + "-key.pem"), os.path.join(d, name + "-cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=" + name, "-days", "2", "-keyout", k, "-out", c],
                   check=True, capture_output=True)
    return k, c


def field(manifest, name):
    with open(manifest) as f:
        return re.search(r"<%s[^>]*>([^<]*)</%s>" % (name, name), f.read()).group(1)


@pytest.fixture(scope="module")
def world():
    d = tempfile.mkdtemp(prefix="ebsim-bundle-", dir="/tmp")
    w = {"dir": d, "home": os.path.join(d, "home")}
    os.mkdir(w["home"])
    w["key"], w["cert"] = keypair(d, "user")
    w["key2"], w["cert2"] = keypair(d, "other")
    img = os.path.join(d, "disk.img")
    with open(img, "wb") as f:
        f.write(os.urandom(BIG))
    w["img"] = img
    w["bundle"] = os.path.join(d, "bundle")
    os.mkdir(w["bundle"])
    p = ami("bundle-image", "-i", img, "-k", w["key"], "-c", w["cert"], "-u", ACCOUNT,
            "-r", "x86_64", "-p", "myimg", "-d", w["bundle"], home=w["home"])
    assert p.returncode == 0, p.stderr
    w["manifest"] = os.path.join(w["bundle"], "myimg.manifest.xml")
    small = os.path.join(d, "small.img")
    with open(small, "wb") as f:
        f.write(os.urandom(3 << 20))
    w["small_dir"] = os.path.join(d, "small")
    os.mkdir(w["small_dir"])
    p = ami("bundle-image", "-i", small, "-k", w["key"], "-c", w["cert"], "-u", ACCOUNT,
            "-r", "arm64", "-p", "small", "-d", w["small_dir"], "--kernel", "aki-1234abcd",
            "--block-device-mapping", "root=/dev/sda1,ami=sda1,ephemeral0=sdb",
            home=w["home"])
    assert p.returncode == 0, p.stderr
    w["small_manifest"] = os.path.join(w["small_dir"], "small.manifest.xml")
    w["ec2key"] = os.path.join(w["home"], "regions/us-east-1/ec2-key.pem")
    yield w
    shutil.rmtree(d, ignore_errors=True)


def test_layout_and_openssl_round_trip(world):
    """Parts are named as ec2-ami-tools names them, and the bundle opens with plain tools."""
    b, m = world["bundle"], world["manifest"]
    assert sorted(os.listdir(b)) == ["myimg.manifest.xml", "myimg.part.0", "myimg.part.1",
                                     "myimg.part.2"]
    assert os.path.getsize(os.path.join(b, "myimg.part.0")) == 10 << 20
    assert stat_mode(world["ec2key"]) == 0o600
    key = subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", world["key"]],
                         input=bytes.fromhex(field(m, "user_encrypted_key")),
                         capture_output=True, check=True).stdout.decode()
    iv = subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", world["key"]],
                        input=bytes.fromhex(field(m, "user_encrypted_iv")),
                        capture_output=True, check=True).stdout.decode()
    assert re.fullmatch(r"[0-9a-f]{32}", key) and re.fullmatch(r"[0-9a-f]{32}", iv)
    enc = b"".join(open(os.path.join(b, "myimg.part.%d" % i), "rb").read() for i in range(3))
    assert len(enc) == int(field(m, "bundled_size"))
    gz = subprocess.run(["openssl", "enc", "-d", "-aes-128-cbc", "-K", key, "-iv", iv],
                        input=enc, capture_output=True, check=True).stdout
    tar = subprocess.run(["gunzip"], input=gz, capture_output=True, check=True).stdout
    assert hashlib.sha1(tar).hexdigest() == field(m, "digest")
    out = os.path.join(world["dir"], "plain")
    os.mkdir(out)
    names = subprocess.run(["tar", "-t"], input=tar, capture_output=True,
                           check=True).stdout.split()
    assert names == [b"myimg"]
    subprocess.run(["tar", "-x", "-C", out], input=tar, check=True)
    assert sha256_file(os.path.join(out, "myimg")) == sha256_file(world["img"])
    assert int(field(m, "size")) == BIG
    # part digests
    for i in range(3):
        with open(os.path.join(b, "myimg.part.%d" % i), "rb") as f:
            assert hashlib.sha1(f.read()).hexdigest() in open(m).read()


def stat_mode(p):
    return os.stat(p).st_mode & 0o777


def test_signature_is_ec2_ami_tools_style(world):
    """RSA-SHA1 over <machine_configuration>...</machine_configuration><image>...</image>, cut
    out of the file text as XMLUtil.get_xml does; element order as ManifestV20071010."""
    text = open(world["small_manifest"]).read()
    mc = text[text.index("<machine_configuration>"):
              text.index("</machine_configuration>") + len("</machine_configuration>")]
    im = text[text.index("<image>"):text.index("</image>") + len("</image>")]
    sig = bytes.fromhex(field(world["small_manifest"], "signature"))
    d = world["dir"]
    with open(os.path.join(d, "signed"), "w") as f:
        f.write(mc + im)
    with open(os.path.join(d, "sig"), "wb") as f:
        f.write(sig)
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", world["cert"]],
                         capture_output=True, check=True).stdout
    with open(os.path.join(d, "pub.pem"), "wb") as f:
        f.write(pub)
    v = subprocess.run(["openssl", "dgst", "-sha1", "-verify", os.path.join(d, "pub.pem"),
                        "-signature", os.path.join(d, "sig"), os.path.join(d, "signed")],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "Verified OK" in v.stdout
    order = re.findall(r"<([a-z0-9_]+)[ >]", text)
    assert order[:16] == ["manifest", "version", "bundler", "name", "version", "release",
                          "machine_configuration", "architecture", "block_device_mapping",
                          "mapping", "virtual", "device", "mapping", "virtual", "device",
                          "mapping"]
    # mappings sorted by virtual name, then kernel_id; attributes in single quotes
    assert re.findall(r"<virtual>([a-z0-9]+)</virtual>", text) == ["ami", "ephemeral0", "root"]
    assert "<kernel_id>aki-1234abcd</kernel_id></machine_configuration>" in text
    assert "<digest algorithm='SHA1'>" in text and "<parts count='1'>" in text
    assert "<part index='0'><filename>small.part.0</filename>" in text
    img_order = re.findall(r"<([a-z0-9_]+)[ >]", im)
    assert img_order[:12] == ["image", "name", "user", "type", "digest", "size",
                              "bundled_size", "ec2_encrypted_key", "user_encrypted_key",
                              "ec2_encrypted_iv", "user_encrypted_iv", "parts"]


def test_unbundle_with_user_and_ec2_key(world):
    v = ami("verify-bundle", "-m", world["manifest"], "-c", world["cert"], home=world["home"])
    assert v.returncode == 0, v.stderr
    assert "Bundle verified" in v.stdout
    want = sha256_file(world["img"])
    for name, key in (("u", world["key"]), ("e", world["ec2key"])):
        out = os.path.join(world["dir"], "out-" + name)
        os.mkdir(out)
        p = ami("unbundle", "-m", world["manifest"], "-c", world["cert"], "-k", key, "-d",
                out, home=world["home"])
        assert p.returncode == 0, p.stderr
        assert os.listdir(out) == ["myimg"]
        assert sha256_file(os.path.join(out, "myimg")) == want
    # a key that is neither
    out = os.path.join(world["dir"], "out-x")
    os.mkdir(out)
    p = ami("unbundle", "-m", world["manifest"], "-c", world["cert"], "-k", world["key2"],
            "-d", out, home=world["home"])
    assert p.returncode == 1 and "opens neither" in p.stderr
    assert os.listdir(out) == []


def edit_manifest(m, fn):
    with open(m) as f:
        s = f.read()
    t = fn(s)
    assert t != s
    with open(m, "w") as f:
        f.write(t)


def flip_hex_in(tag):
    def fn(s):
        i = s.index("<%s" % tag)
        i = s.index(">", i) + 5
        c = s[i]
        return s[:i] + ("0" if c != "0" else "1") + s[i + 1:]
    return fn


def flip_byte(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))


def mut_part_byte(w, d, m):
    flip_byte(os.path.join(d, "myimg.part.1"), 12345)


def mut_image_elem(w, d, m):
    edit_manifest(m, lambda s: s.replace("<size>%d</size>" % BIG, "<size>%d</size>" % (BIG - 1)))


def mut_machine_conf(w, d, m):
    edit_manifest(m, lambda s: s.replace("<architecture>x86_64<", "<architecture>i386<"))


def mut_signature(w, d, m):
    edit_manifest(m, flip_hex_in("signature"))


def mut_wrapped_key(w, d, m):
    edit_manifest(m, flip_hex_in("user_encrypted_key"))


def mut_wrapped_iv(w, d, m):
    edit_manifest(m, flip_hex_in("ec2_encrypted_iv"))


def mut_missing_part(w, d, m):
    os.unlink(os.path.join(d, "myimg.part.2"))


def mut_extra_part(w, d, m):
    shutil.copy(os.path.join(d, "myimg.part.2"), os.path.join(d, "myimg.part.3"))


def mut_reordered(w, d, m):
    a, b = os.path.join(d, "myimg.part.0"), os.path.join(d, "myimg.part.1")
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)


def mut_truncated(w, d, m):
    p = os.path.join(d, "myimg.part.2")
    os.truncate(p, os.path.getsize(p) - 16)


def mut_dotdot(w, d, m):
    edit_manifest(m, lambda s: s.replace("<filename>myimg.part.0<",
                                         "<filename>../myimg.part.0<"))


def mut_slash(w, d, m):
    edit_manifest(m, lambda s: s.replace("<filename>myimg.part.0<",
                                         "<filename>x/myimg.part.0<"))


def mut_copied_signature(w, d, m):
    other = field(w["small_manifest"], "signature")
    edit_manifest(m, lambda s: re.sub(r"<signature>[0-9a-f]+</signature>",
                                      "<signature>%s</signature>" % other, s))


def mut_replaced_part_and_digest(w, d, m):
    p = os.path.join(d, "myimg.part.2")
    old = hashlib.sha1(open(p, "rb").read()).hexdigest()
    data = os.urandom(os.path.getsize(p))
    with open(p, "wb") as f:
        f.write(data)
    new = hashlib.sha1(data).hexdigest()
    edit_manifest(m, lambda s: s.replace(old, new))


def mut_dtd(w, d, m):
    edit_manifest(m, lambda s: s.replace(
        "<manifest>", '<!DOCTYPE manifest [<!ENTITY x SYSTEM "file:///etc/passwd">]><manifest>'))


def mut_wrong_cert(w, d, m):
    pass  # verified against another certificate below


MUTATIONS = [
    ("part-byte", mut_part_byte, "does not match its digest"),
    ("manifest-image", mut_image_elem, "signature does not verify"),
    ("manifest-machine-configuration", mut_machine_conf, "signature does not verify"),
    ("signature", mut_signature, "signature does not verify"),
    ("wrapped-key", mut_wrapped_key, "signature does not verify"),
    ("wrapped-iv", mut_wrapped_iv, "signature does not verify"),
    ("missing-part", mut_missing_part, "missing"),
    ("extra-part", mut_extra_part, "extra part myimg.part.3"),
    ("reordered-parts", mut_reordered, "does not match its digest"),
    ("truncated-part", mut_truncated, "bytes, the manifest says"),
    ("dotdot-part-name", mut_dotdot, "not one plain path component"),
    ("slash-part-name", mut_slash, "not one plain path component"),
    ("copied-signature", mut_copied_signature, "signature does not verify"),
    ("wrong-cert", mut_wrong_cert, "signature does not verify"),
    ("part-digest-edited", mut_replaced_part_and_digest, "signature does not verify"),
    ("dtd-entity", mut_dtd, "DTDs"),
]


@pytest.mark.parametrize("name,mutate,msg", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_tampered_bundle_rejected(world, name, mutate, msg):
    d = os.path.join(world["dir"], "t-" + name)
    shutil.copytree(world["bundle"], d)
    m = os.path.join(d, "myimg.manifest.xml")
    mutate(world, d, m)
    cert = world["cert2"] if name == "wrong-cert" else world["cert"]
    v = ami("verify-bundle", "-m", m, "-c", cert, home=world["home"])
    assert v.returncode == 1, v.stdout
    assert msg in v.stderr, v.stderr
    assert "Bundle verified" not in v.stdout
    for key in (world["key"], world["ec2key"]):
        out = os.path.join(d, "out")
        os.mkdir(out)
        p = ami("unbundle", "-m", m, "-c", cert, "-k", key, "-d", out, home=world["home"])
        assert p.returncode == 1
        assert msg in p.stderr, p.stderr
        assert os.listdir(out) == []
        os.rmdir(out)
    shutil.rmtree(d)


def test_upload_bundle(world, home):
    up = lambda *a: ami("upload-bundle", *a, home=home)
    for bad in ("ab", "-bucket", "Bucket", "a..b", "192.168.1.1", "b_c", "x" * 64, "../x",
                "a/b", "bucket."):
        p = up("-b", bad, "-m", world["manifest"], "-c", world["cert"])
        assert p.returncode == 1 and "InvalidBucketName" in p.stderr, (bad, p.stderr)
    # first upload needs -c
    p = up("-b", "my-bucket", "-m", world["manifest"])
    assert p.returncode == 1 and "give -c" in p.stderr
    p = up("-b", "my-bucket", "-m", world["manifest"], "-c", world["cert"])
    assert p.returncode == 0, p.stderr
    bdir = os.path.join(home, "regions/us-east-1/buckets/my-bucket")
    assert sorted(os.listdir(bdir)) == sorted(os.listdir(world["bundle"]))
    for n in os.listdir(bdir):
        assert sha256_file(os.path.join(bdir, n)) == sha256_file(os.path.join(world["bundle"], n))
    assert stat_mode(bdir) == 0o700
    reg = os.path.join(home, "accounts", ACCOUNT, "signing-cert.pem")
    assert open(reg).read() == open(world["cert"]).read()
    # later uploads: the registered cert is used; a second cert is refused
    p = up("-b", "other.bucket", "-m", world["small_manifest"])
    assert p.returncode == 0, p.stderr
    p = up("-b", "other.bucket", "-m", world["small_manifest"], "-c", world["cert2"])
    assert p.returncode == 1 and "different signing certificate" in p.stderr
    # a bundle signed by another key, for the same account
    d = os.path.join(home, "b2")
    os.mkdir(d)
    p = ami("bundle-image", "-i", world["img"], "-k", world["key2"], "-c", world["cert2"], "-u",
            ACCOUNT, "-r", "x86_64", "-p", "evil", "-d", d, home=home)
    assert p.returncode == 0, p.stderr
    p = up("-b", "my-bucket", "-m", os.path.join(d, "evil.manifest.xml"))
    assert p.returncode == 1 and "signature does not verify" in p.stderr
    assert not os.path.exists(os.path.join(bdir, "evil.manifest.xml"))
    # another account cannot upload a bundle of ACCOUNT
    p = ami("upload-bundle", "-b", "my-bucket", "-m", world["small_manifest"], "-c",
            world["cert"], home=home, account="210987654321")
    assert p.returncode == 1 and "belongs to account" in p.stderr


def test_bundle_image_rejects_bad_input(world, home):
    d = os.path.join(home, "out")
    os.mkdir(d)
    base = ["-i", world["img"], "-k", world["key"], "-c", world["cert"], "-u", ACCOUNT, "-d", d]
    for extra, code, msg in ((["-r", "sparc"], 252, "not i386"),
                             (["-r", "x86_64", "-p", "../x"], 1, "prefix"),
                             (["-r", "x86_64", "-p", ".hidden"], 1, "prefix"),
                             (["-r", "x86_64", "--block-device-mapping", "root"], 252,
                              "VIRTUAL=DEVICE"),
                             (["-r", "x86_64", "--block-device-mapping", "foo=sda"], 252,
                              "virtual name"),
                             (["-r", "x86_64", "--kernel", "ami-1"], 1, "kernel id")):
        p = ami("bundle-image", *base, *extra, home=home)
        assert p.returncode == code and msg in p.stderr, (extra, p.stderr)
    p = ami("bundle-image", *base[:-4], "-u", "12345", "-r", "x86_64", "-d", d, home=home)
    assert p.returncode == 252
    assert os.listdir(d) == []
    # an existing bundle is not overwritten
    p = ami("bundle-image", *base, "-r", "x86_64", "-p", "s", home=home)
    assert p.returncode == 0, p.stderr
    before = sorted(os.listdir(d))
    p = ami("bundle-image", *base, "-r", "x86_64", "-p", "s", home=home)
    assert p.returncode == 1 and "already exists" in p.stderr
    assert sorted(os.listdir(d)) == before


def test_help_pages():
    for verb in ("bundle-image", "bundle-vol", "verify-bundle", "unbundle", "upload-bundle",
                 "build-base"):
        p = ami(verb, "--help")
        assert p.returncode == 0 and "SYNOPSIS" in p.stdout and verb in p.stdout
    p = ami("--help")
    assert p.returncode == 0 and "COMMANDS" in p.stdout
    p = ami("no-such-verb")
    assert p.returncode == 252


def test_bundle_vol_and_build_base(world, daemon):
    home = daemon.home
    vol = daemon.create_volume(1)["VolumeId"]
    path = os.path.join(home, "mnt", vol)
    head = os.urandom(1 << 20)
    with open(path, "r+b") as f:
        f.write(head)
    d = os.path.join(home, "vb")
    os.mkdir(d)
    common = ["-k", world["key"], "-c", world["cert"], "-u", ACCOUNT, "-r", "x86_64", "-d", d]
    # not this account's volume
    p = ami("bundle-vol", "--volume-id", vol, *common[:-6], "-u", "210987654321", "-r",
            "x86_64", "-d", d, home=home, account="210987654321")
    assert p.returncode == 254 and "InvalidVolume.NotFound" in p.stderr, p.stderr
    p = ami("bundle-vol", "--volume-id", "vol-00000000000000000", *common, home=home)
    assert p.returncode == 254 and "InvalidVolume.NotFound" in p.stderr, p.stderr
    assert os.listdir(d) == []
    p = ami("bundle-vol", "--volume", "/x/y", *common, home=home)
    assert p.returncode == 252 and "not a volume id" in p.stderr
    # the FUSE path form, keys from $EC2_PRIVATE_KEY/$EC2_CERT, -u and -r defaulted
    p = ami("bundle-vol", "--volume", path, "-d", d, home=home,
            env={"EC2_PRIVATE_KEY": world["key"], "EC2_CERT": world["cert"]})
    assert p.returncode == 0, p.stderr
    m = os.path.join(d, "image.manifest.xml")
    assert int(field(m, "size")) == 1 << 30
    assert field(m, "user") == ACCOUNT and "<image><name>image</name>" in open(m).read()
    out = os.path.join(home, "vout")
    os.mkdir(out)
    p = ami("unbundle", "-m", m, "-c", world["cert"], "-k", world["key"], "-d", out, home=home)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(out, "image"), "rb") as f:
        assert f.read(1 << 20) == head
    assert sha256_file(os.path.join(out, "image")) == sha256_file(path)
    # build-base: whatever ebsimd answers, an error is printed EC2-style with exit 254
    p = ami("build-base", home=home)
    if p.returncode != 0:
        daemon.expect_errors()
        assert p.returncode == 254
        assert "when calling the BuildBaseImages operation" in p.stderr
    # no daemon: 255
    p = ami("build-base", home=os.path.join(home, "nowhere"))
    assert p.returncode == 255


def test_manifest_framing_is_rexml_like(world):
    """REXML's to_s: the declaration in single quotes, nothing between it and <manifest>,
    nothing after </manifest>."""
    with open(world["manifest"], "rb") as f:
        raw = f.read()
    assert raw.startswith(b"<?xml version='1.0'?><manifest><version>2007-10-10</version>")
    assert raw.endswith(b"</signature></manifest>")
    assert b"\n" not in raw and b'"' not in raw


def resign(world, text):
    """Sign text the way ec2-ami-tools does, with the openssl CLI as an independent signer."""
    mc = text[text.index("<machine_configuration>"):
              text.index("</machine_configuration>") + len("</machine_configuration>")]
    im = text[text.index("<image>"):text.index("</image>") + len("</image>")]
    sig = subprocess.run(["openssl", "dgst", "-sha1", "-sign", world["key"]],
                         input=(mc + im).encode(), capture_output=True, check=True).stdout
    return re.sub(r"<signature>[0-9a-f]+</signature>", "<signature>%s</signature>" % sig.hex(),
                  text)


def test_independently_signed_manifest_with_optional_elements(world):
    """ec2-ami-tools' optional <product_codes> and <ancestry> are accepted and covered by the
    signature; a manifest signed by openssl over the cut-out text verifies and unbundles."""
    d = os.path.join(world["dir"], "indep")
    shutil.copytree(world["small_dir"], d)
    m = os.path.join(d, "small.manifest.xml")
    text = open(m).read()
    text = text.replace("</machine_configuration>", "<product_codes><product_code>ABCD1234"
                        "</product_code></product_codes></machine_configuration>")
    text = text.replace("<type>machine</type>", "<type>machine</type><ancestry><ancestor_ami_id>"
                        "ami-12345678</ancestor_ami_id></ancestry>")
    with open(m, "w") as f:
        f.write(text)
    p = ami("verify-bundle", "-m", m, "-c", world["cert"], home=world["home"])
    assert p.returncode == 1 and "signature does not verify" in p.stderr
    with open(m, "w") as f:
        f.write(resign(world, text))
    p = ami("verify-bundle", "-m", m, "-c", world["cert"], home=world["home"])
    assert p.returncode == 0, p.stderr
    out = os.path.join(d, "out")
    os.mkdir(out)
    p = ami("unbundle", "-m", m, "-c", world["cert"], "-k", world["key"], "-d", out,
            home=world["home"])
    assert p.returncode == 0, p.stderr
    assert sha256_file(os.path.join(out, "small")) == sha256_file(
        os.path.join(world["dir"], "small.img"))
    # an unknown element is refused even when signed
    with open(m, "w") as f:
        f.write(resign(world, text.replace("<type>machine</type>",
                                           "<type>machine</type><evil>x</evil>")))
    p = ami("verify-bundle", "-m", m, "-c", world["cert"], home=world["home"])
    assert p.returncode == 1 and "unexpected element <evil>" in p.stderr


def test_region_keys_created_once_under_race(world, home):
    """Parallel first bundles agree on one EC2 key pair, and every bundle opens with it."""
    img = os.path.join(world["dir"], "small.img")
    procs = []
    for i in range(4):
        d = os.path.join(home, "r%d" % i)
        os.mkdir(d)
        procs.append((d, subprocess.Popen(
            [AMI, "--home", home, "bundle-image", "-i", img, "-k", world["key"], "-c",
             world["cert"], "-u", ACCOUNT, "-r", "x86_64", "-p", "p", "-d", d],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for d, p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    rdir = os.path.join(home, "regions/us-east-1")
    assert sorted(f for f in os.listdir(rdir)) == ["ec2-cert.pem", "ec2-key.pem"]
    key, cert = os.path.join(rdir, "ec2-key.pem"), os.path.join(rdir, "ec2-cert.pem")
    assert stat_mode(key) == 0o600 and stat_mode(cert) == 0o644
    pub_k = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], capture_output=True,
                           check=True).stdout
    pub_c = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"],
                           capture_output=True, check=True).stdout
    assert pub_k == pub_c
    subj = subprocess.run(["openssl", "x509", "-in", cert, "-subject", "-noout"],
                          capture_output=True, text=True, check=True).stdout
    assert "ec2-us-east-1" in subj
    for d, _ in procs:
        out = os.path.join(d, "out")
        os.mkdir(out)
        p = ami("unbundle", "-m", os.path.join(d, "p.manifest.xml"), "-c", world["cert"], "-k",
                key, "-d", out, home=home)
        assert p.returncode == 0, p.stderr


def test_reupload_replaces_a_bundle(world, home):
    """A re-upload under the same prefix with fewer parts leaves no stale part behind."""
    big = os.path.join(home, "big")
    os.mkdir(big)
    p = ami("bundle-image", "-i", world["img"], "-k", world["key"], "-c", world["cert"], "-u",
            ACCOUNT, "-r", "x86_64", "-p", "x", "-d", big, home=home)
    assert p.returncode == 0, p.stderr
    small = os.path.join(home, "small")
    os.mkdir(small)
    p = ami("bundle-image", "-i", os.path.join(world["dir"], "small.img"), "-k", world["key"],
            "-c", world["cert"], "-u", ACCOUNT, "-r", "x86_64", "-p", "x", "-d", small, home=home)
    assert p.returncode == 0, p.stderr
    for d in (big, small):
        p = ami("upload-bundle", "-b", "bkt", "-m", os.path.join(d, "x.manifest.xml"), "-c",
                world["cert"], home=home)
        assert p.returncode == 0, p.stderr
    bdir = os.path.join(home, "regions/us-east-1/buckets/bkt")
    assert sorted(os.listdir(bdir)) == ["x.manifest.xml", "x.part.0"]
    p = ami("verify-bundle", "-m", os.path.join(bdir, "x.manifest.xml"), home=home)
    assert p.returncode == 0, p.stderr

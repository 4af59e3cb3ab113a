# SPDX-License-Identifier: MIT
"""Corruption: damaged snapshot chunks are never served as data, and `ebsim check` names
every one; damaged metadata (catalog, volume header, chunk map, manifest) is refused
clearly, at start or when used, and nothing is deleted because of it.

Scale: 20 damaged chunks in `make test`, 1,000 under EBSIM_STRESS=1 (`make stress`)."""
import hashlib
import os
import random
import shutil
import sqlite3
import stat
import tempfile

import pytest

import store_layout
from conftest import STRESS, Daemon, _teardown_daemon, run
from test_snapshots import sha_range, wait_completed, write_pattern

MIB = 1 << 20
CHUNK = 64 << 10
N_CORRUPT = 1000 if STRESS else 20
EIO = 5


def obj_loc(home, obj, region="us-east-1"):
    """(file, offset) of a stored object's bytes (loose or in a pack)."""
    return store_layout.location(home, obj, region)


def flip_byte(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x01]))


def test_flipped_chunks_give_eio_and_check_names_them(daemon, home, capsys):
    d = daemon
    d.expect_errors()  # every damaged read and the check log the damage
    rnd = random.Random(20261128)
    nchunks = max(128, 2 * N_CORRUPT)  # distinct random data: one object per chunk
    v = d.create_volume(1)
    write_pattern(v["LocalPath"], "corrupt", nchunks * CHUNK, bs=4 * MIB)
    with open(v["LocalPath"], "rb") as f:
        data = f.read(nchunks * CHUNK)
    objs = [hashlib.sha256(data[i * CHUNK:(i + 1) * CHUNK]).hexdigest() for i in range(nchunks)]
    assert len(set(objs)) == nchunks
    s = wait_completed(d, d.ok("create-snapshot", "--volume-id", v["VolumeId"])["SnapshotId"])
    r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])  # lazy: nothing hydrated
    victims = sorted(rnd.sample(range(nchunks), N_CORRUPT))
    for c in victims:
        path, base = obj_loc(home, objs[c])
        flip_byte(path, base + rnd.randrange(CHUNK))

    # (a) reads through the restored volume: EIO on every damaged chunk (whole chunk, a
    # random piece of it, a read straddling it and a neighbour, and again), correct bytes
    # everywhere else
    eio = set()
    wrong = []
    fd = os.open(r["LocalPath"], os.O_RDONLY)
    try:
        order = list(range(nchunks))
        rnd.shuffle(order)
        vset = set(victims)
        for c in order:
            base = c * CHUNK
            if c not in vset:
                got = os.pread(fd, CHUNK, base)
                if got != data[base:base + CHUNK]:
                    wrong.append(c)
                continue
            o = rnd.randrange(CHUNK)
            reads = [(base, CHUNK), (base + o, rnd.randint(1, CHUNK - o)),
                     (max(0, base - 4096), 8192), (base, CHUNK)]
            failed = 0
            for off, ln in reads:
                try:
                    got = os.pread(fd, ln, off)
                    wrong.append((c, off, ln))  # bytes were returned for damaged data
                except OSError as e:
                    assert e.errno == EIO, e
                    failed += 1
            if failed == len(reads):
                eio.add(c)
    finally:
        os.close(fd)
    assert not wrong, f"wrong bytes or no error at {wrong[:10]}"

    # (b) the check: exit 2, each damaged object named with its snapshot and chunk index
    ck = d.cli("check")
    assert ck.rc == 2, (ck.rc, ck.err)
    named = {(x["ObjectId"], x["SnapshotId"], x["ChunkIndex"]) for x in ck.json["Corrupt"]}
    want = {(objs[c], s["SnapshotId"], c) for c in victims}
    assert named == want, (sorted(want - named)[:5], sorted(named - want)[:5])
    detected = sum(1 for c in victims if c in eio and (objs[c], s["SnapshotId"], c) in named)
    with capsys.disabled():
        print(f"\ncorruption: {N_CORRUPT} chunks with one flipped byte out of {nchunks}: "
              f"detected {detected}/{N_CORRUPT} ({100 * detected // N_CORRUPT}%) "
              f"[EIO on every read: {len(eio)}, named by check: {len(named & want)}]; "
              f"{nchunks - N_CORRUPT} intact chunks read back correctly")
    assert detected == N_CORRUPT


# ---- damaged metadata --------------------------------------------------------------------

VOLATILE = ("ebsimd.log", "ebsimd.pid", "ebsimd.lock", "ebsimd.sock", "catalog.db-wal",
            "catalog.db-shm")


def home_state(home):
    """Path -> sha256 (or 'dir'/'link') for everything a daemon keeps, minus its run files
    and the FUSE mount point."""
    out = {}
    for dirpath, dirs, files in os.walk(home):
        if dirpath == home:
            dirs[:] = [x for x in dirs if x != "mnt"]
        for n in dirs:
            out[os.path.relpath(os.path.join(dirpath, n), home)] = "dir"
        for n in files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, home)
            if rel in VOLATILE:
                continue
            if stat.S_ISLNK(os.lstat(p).st_mode):
                out[rel] = "link"
                continue
            out[rel] = sparse_sha256(p)
    return out


def sparse_sha256(path):
    """sha256 over (offset, bytes) of a file's data segments and its size: the same digest
    for the same content, without reading the holes of a sparse 1 GiB volume file."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                off = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, off, os.SEEK_HOLE)
            h.update(off.to_bytes(8, "little"))
            while off < end:
                b = os.pread(fd, min(4 * MIB, end - off), off)
                h.update(b)
                off += len(b)
        h.update(size.to_bytes(8, "little"))
    finally:
        os.close(fd)
    return h.hexdigest()


def start_refused(d):
    """Start d, expecting a refusal. Returns the reason (stderr and the new log lines)."""
    before = len(d.log())
    p = run([d.ebsimd, "--home", d.home, "--io-engine", d.engine], check=False)
    if p.returncode == 0:  # track it, so that teardown stops it
        with open(os.path.join(d.home, "ebsimd.pid")) as f:
            d.pid = int(f.read())
    assert p.returncode != 0, "ebsimd started on a damaged home"
    return p.stderr + d.log()[before:]


@pytest.fixture(scope="module")
def populated_template():
    """Built once per module, copied for each test: a stopped home with a plain volume P
    with data, its snapshot S, a volume R restored from S (not hydrated, so it reads S's
    manifest at start) and an encrypted volume E."""
    h = tempfile.mkdtemp(prefix="ebsim-corrupt-template-", dir="/tmp")
    d = Daemon(h)
    try:
        d.start()
        p = d.create_volume(1)
        sha_p = write_pattern(p["LocalPath"], "P", 4 * MIB)
        e = d.create_volume(1, "--encrypted")
        sha_e = write_pattern(e["LocalPath"], "E", 2 * MIB)
        s = wait_completed(d, d.ok("create-snapshot", "--volume-id", p["VolumeId"])["SnapshotId"])
        r = d.ok("create-volume", "--snapshot-id", s["SnapshotId"])
        d.stop()
        yield h, {"P": p["VolumeId"], "E": e["VolumeId"], "R": r["VolumeId"],
                  "S": s["SnapshotId"], "sha_p": sha_p, "sha_e": sha_e}
    finally:
        _teardown_daemon(d)
        shutil.rmtree(h, ignore_errors=True)


@pytest.fixture
def populated(populated_template, make_daemon, home):
    """A private copy of the template home (sparse files stay sparse) and a daemon for it,
    not started."""
    src, info = populated_template
    sub = os.path.join(home, "h")
    run(["cp", "-a", "--sparse=always", src, sub])
    for n in ("ebsimd.log", "ebsimd.pid", "ebsimd.lock"):
        if os.path.exists(os.path.join(sub, n)):
            os.unlink(os.path.join(sub, n))
    d = make_daemon(start=False, subhome="h")
    d.expect_errors()
    return d, dict(info)


def check_data(d, info):
    """After a successful start: every volume reads back what was written."""
    mnt = os.path.join(d.home, "mnt")
    assert sha_range(os.path.join(mnt, info["P"]), 0, 4 * MIB) == info["sha_p"]
    assert sha_range(os.path.join(mnt, info["R"]), 0, 4 * MIB) == info["sha_p"]
    assert sha_range(os.path.join(mnt, info["E"]), 0, 2 * MIB) == info["sha_e"]


def _catalog_garbage_header(home, info):
    with open(os.path.join(home, "catalog.db"), "r+b") as f:
        f.write(b"this is not an SQLite database at all!" * 2)


def _catalog_truncated(home, info):
    p = os.path.join(home, "catalog.db")
    os.truncate(p, os.path.getsize(p) // 2)


def _catalog_page_garbage(home, info):
    p = os.path.join(home, "catalog.db")
    with open(p, "rb") as f:
        page = int.from_bytes(f.read(18)[16:18], "big") or 65536
    size = os.path.getsize(p)
    assert size >= 3 * page
    with open(p, "r+b") as f:  # the volumes table's root page and what follows
        f.seek(page + 8)
        f.write(random.Random(1).randbytes(page - 16))


def _header_flip(home, info):
    flip_byte(os.path.join(home, "volumes", info["P"], "header"), 16)


def _header_truncated(home, info):
    os.truncate(os.path.join(home, "volumes", info["P"], "header"), 100)


def _map_bad_byte(home, info):
    with open(os.path.join(home, "volumes", info["P"], "map"), "r+b") as f:
        f.seek(3)
        f.write(b"\x40")  # a bit no state uses


def _map_valid_state_flip(home, info):
    """PRESENT -> ZERO: a valid state, caught only by the map page's checksum."""
    with open(os.path.join(home, "volumes", info["P"], "map"), "r+b") as f:
        f.seek(2)
        b = f.read(1)
        assert b[0] & 3 == 1, b
        f.seek(2)
        f.write(bytes([(b[0] & 0x80) | 2]))


def _map_checksum_flip(home, info):
    flip_byte(os.path.join(home, "volumes", info["P"], "map"), 4094)  # the page's CRC


def _map_page_swapped(home, info):
    """Two sealed pages, each valid, in each other's place (needs a volume of 2+ pages)."""
    p = os.path.join(home, "volumes", info["P"], "map")
    with open(p, "r+b") as f:
        a = f.read(4096)
        b = f.read(4096)
        assert len(b) == 4096, "P's map has one page"
        f.seek(0)
        f.write(b + a)


def _header_version_1(home, info):
    """A correctly sealed header of the old format (flat map without checksums)."""
    p = os.path.join(home, "volumes", info["P"], "header")
    with open(p, "rb") as f:
        h = bytearray(f.read())
    h[8:12] = (1).to_bytes(4, "little")
    h[4064:] = hashlib.sha256(bytes(h[:4064])).digest()
    with open(p, "wb") as f:
        f.write(h)


def _map_truncated(home, info):
    p = os.path.join(home, "volumes", info["P"], "map")
    os.truncate(p, os.path.getsize(p) - 1)


def _manifest_flip(home, info):
    flip_byte(os.path.join(home, "regions", "us-east-1", "manifests", info["S"]), 300)


DAMAGE = {
    "catalog-garbage-header": (_catalog_garbage_header, "catalog"),
    "catalog-truncated": (_catalog_truncated, "catalog"),
    "catalog-page-garbage": (_catalog_page_garbage, "catalog"),
    "header-flipped-byte": (_header_flip, "volumes cannot be served"),
    "header-truncated": (_header_truncated, "volumes cannot be served"),
    "map-invalid-state": (_map_bad_byte, "volumes cannot be served"),
    "map-truncated": (_map_truncated, "volumes cannot be served"),
    "map-valid-state-flip": (_map_valid_state_flip, "chunk map page 0 (chunks 0-"),
    "map-checksum-flip": (_map_checksum_flip, "page 0 (chunks 0-4063) is damaged: checksum"),
    "map-pages-swapped": (_map_page_swapped, "page number mismatch"),
    "header-format-version-1": (_header_version_1, "on-disk format version 1"),
    "manifest-of-a-restored-volume": (_manifest_flip, "volumes cannot be served"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_metadata_refused_at_start(populated, case):
    d, info = populated
    damage, reason = DAMAGE[case]
    damage(d.home, info)
    before = home_state(d.home)
    why = start_refused(d)
    assert "refusing to start" in why and reason in why, why
    assert "nothing was" in why, why  # the message says what was (not) done
    after = home_state(d.home)
    assert sorted(set(before) - set(after)) == [], "files deleted by a refused start"
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert changed == [], f"files changed by a refused start: {changed}"
    # a second refusal is the same refusal (nothing was "repaired" away)
    why2 = start_refused(d)
    assert reason in why2


def test_damaged_manifest_without_users_refused_when_used(populated):
    """A damaged manifest that no served volume reads: the daemon starts; restoring from it
    is a clear error; check names it; GC must not delete the chunks it may still need."""
    d, info = populated
    # R reads S's manifest; make S's data someone else's: delete R first
    d.start()
    d.ok("delete-volume", "--volume-id", info["R"])
    p2 = d.ok("create-snapshot", "--volume-id", info["E"])
    wait_completed(d, p2["SnapshotId"])
    d.stop()
    _manifest_flip(d.home, info)
    d.start()
    objects_before = {k: v for k, v in home_state(d.home).items()
                      if "/objects/" in k or "/packs/" in k}
    assert any("/packs/" in k for k in objects_before)
    r = d.cli("create-volume", "--snapshot-id", info["S"])
    assert r.rc == 254 and r.error_code() == "InternalError", (r.rc, r.err)
    assert "cannot read snapshot" in r.err, r.err
    ck = d.cli("check")
    assert ck.rc == 2 and ck.json["BadManifests"], (ck.rc, ck.out)
    assert any(info["S"] in str(b) for b in ck.json["BadManifests"]), ck.json["BadManifests"]
    # a delete runs GC, which must stop short of deleting anything while a manifest is
    # unreadable (its chunks might be referenced only by it)
    d.ok("delete-snapshot", "--snapshot-id", p2["SnapshotId"])
    objects_after = {k: v for k, v in home_state(d.home).items()
                     if "/objects/" in k or "/packs/" in k}
    assert objects_after == objects_before
    assert os.path.exists(os.path.join(d.home, "regions", "us-east-1", "manifests", info["S"]))
    check_data(d, {**info, "R": info["P"]})


def test_damage_repaired_by_restoring_the_file(populated):
    """A refused start changes nothing: putting the damaged file back from a copy is a
    complete repair."""
    d, info = populated
    hdr = os.path.join(d.home, "volumes", info["P"], "header")
    with open(hdr, "rb") as f:
        good = f.read()
    _header_flip(d.home, info)
    start_refused(d)
    with open(hdr, "wb") as f:
        f.write(good)
    d.start()
    check_data(d, info)
    assert d.cli("check").rc == 0


@pytest.mark.parametrize("how", ["row-lost", "moved-aside"])
def test_catalog_without_rows_deletes_nothing(populated, how):
    """The catalog lost a row (restored from an old backup, a lost transaction) or was moved
    aside ("move it aside to start afresh", says the refusal): the volume directories it
    no longer names are user data, and must not be deleted."""
    d, info = populated
    before = home_state(d.home)
    db = os.path.join(d.home, "catalog.db")
    if how == "row-lost":
        con = sqlite3.connect(db)
        con.execute("DELETE FROM volumes WHERE id = ?", (info["P"],))
        con.commit()
        con.close()
    else:
        os.rename(db, db + ".aside")
    p = run([d.ebsimd, "--home", d.home, "--io-engine", d.engine], check=False)
    if p.returncode == 0:
        with open(os.path.join(d.home, "ebsimd.pid")) as f:
            d.pid = int(f.read())
    after = home_state(d.home)
    gone = sorted(k for k in set(before) - set(after) if k.startswith("volumes/"))
    assert not gone, f"starting with a catalog that lost rows deleted volume data: {gone}"


def test_map_flip_to_a_valid_state_is_detected(populated):
    """An encrypted volume's map byte PRESENT -> ZERO (another valid state) would make it
    read zeros where its data is; the map page's checksum refuses it at start, naming the
    volume and page, and changes nothing; restoring the byte is a complete repair."""
    d, info = populated
    p = os.path.join(d.home, "volumes", info["E"], "map")
    with open(p, "r+b") as f:
        f.seek(2)
        b = f.read(1)
        assert b[0] & 3 == 1, b  # PRESENT: E's first 2 MiB were written
        f.seek(2)
        f.write(bytes([(b[0] & 0x80) | 2]))  # ZERO
    why = start_refused(d)
    assert f"volume {info['E']}: chunk map page 0" in why and "checksum mismatch" in why, why
    assert "refusing to start" in why, why
    with open(p, "r+b") as f:
        f.seek(2)
        f.write(b)
    d.start()
    check_data(d, info)

# SPDX-License-Identifier: MIT
"""store_layout.py - where the chunk store keeps each object, for tests that damage or count
stored chunks on disk (see snapshot/store.c's design notes for the format).

An object is either loose, regions/<r>/objects/ab/<62 hex> (the whole file), or packed:
regions/<r>/packs/pk-<16 hex>.pack holds the bytes at the offset that pk-<16 hex>.idx
records. The index is a 32-byte header ("EBSPACK1", entry count, pack size, reserved; u64
little-endian), 48-byte entries (32-byte SHA-256, u64 offset, u32 length, u32 zero), and
the SHA-256 of everything before it."""
import hashlib
import os
import struct

HDR = struct.Struct("<8sQQQ")
ENT = struct.Struct("<32sQI4x")


def pack_entries(idx_path):
    """[(hex id, offset, length)] of one pack index; raises ValueError when it is damaged."""
    with open(idx_path, "rb") as f:
        b = f.read()
    magic, n, _size, _ = HDR.unpack_from(b, 0)
    if magic != b"EBSPACK1" or len(b) != HDR.size + n * ENT.size + 32:
        raise ValueError(f"{idx_path}: not a pack index")
    if hashlib.sha256(b[:-32]).digest() != b[-32:]:
        raise ValueError(f"{idx_path}: checksum mismatch")
    out = []
    for i in range(n):
        oid, off, ln = ENT.unpack_from(b, HDR.size + i * ENT.size)
        out.append((oid.hex(), off, ln))
    return out


def objects(home, region="us-east-1"):
    """{hex id: [(path, offset, length), ...]} for every stored object copy (loose or packed;
    length None for a loose object: the whole file)."""
    root = os.path.join(home, "regions", region)
    res = {}
    for d, _, files in os.walk(os.path.join(root, "objects")):
        for fn in files:
            if not fn.startswith("."):
                res.setdefault(os.path.basename(d) + fn, []).append(
                    (os.path.join(d, fn), 0, None))
    pdir = os.path.join(root, "packs")
    for fn in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
        if fn.startswith("pk-") and fn.endswith(".idx"):
            pack = os.path.join(pdir, fn[:-4] + ".pack")
            for oid, off, ln in pack_entries(os.path.join(pdir, fn)):
                res.setdefault(oid, []).append((pack, off, ln))
    return res


def count(home, region="us-east-1"):
    """The number of stored object copies (a duplicate counts twice: dedup and GC must leave
    none)."""
    return sum(len(v) for v in objects(home, region).values())


def location(home, oid, region="us-east-1"):
    """(path, offset) of object oid's bytes (its only copy: asserts there is one)."""
    locs = objects(home, region).get(oid, [])
    assert len(locs) == 1, (oid, locs)
    return locs[0][0], locs[0][1]


def temp_files(home, region="us-east-1"):
    """Leftovers of interrupted writes: temp files, and packs without an index."""
    root = os.path.join(home, "regions", region)
    out = [f for _, _, fs in os.walk(os.path.join(root, "objects")) for f in fs
           if f.startswith(".")]
    pdir = os.path.join(root, "packs")
    if os.path.isdir(pdir):
        names = set(os.listdir(pdir))
        out += [f for f in names if f.startswith(".")]
        out += [f for f in names if f.endswith(".pack") and f[:-5] + ".idx" not in names]
    return out

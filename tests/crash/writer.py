# SPDX-License-Identifier: MIT
"""Crash-test writer: appends checksummed records to files on a mounted file system and
logs, outside that file system, which records a completed fdatasync/fsync made durable.

Design notes
------------
Record (REC = 4096 bytes, little-endian):
    magic "EBSR" | epoch u32 | file id u32 | seq u64 | seed u64 | payload len u32 |
    crc32(payload) u32 | crc32(header bytes 0..35) u32 | payload (PLEN bytes)
The payload is a pure function of (seed, epoch, file id, seq), so the verifier checks the
exact bytes as well as the CRCs, and a record of an older epoch (a previous file system on
the same blocks) can never pass for a current one.

Protocol: the writer appends a batch of records to one file with write(2), calls
fdatasync(2) (sometimes fsync(2)) on it, and only when that returned 0 appends
"ACK <file id> <last seq>\\n" to the ack log and fsyncs the ack log. "ACK f s" means
records 0..s of file f are durable. The first error of any kind ends the writer (exit 3):
after a failed fsync a later one may return 0 without the lost data, so it must never
retry. Records after the last ACK may be missing or torn; the verifier allows that.

This file is both the writer program (run as a separate process, so the harness can
SIGKILL it) and the record-format module the harness imports.
"""
import argparse
import os
import random
import struct
import sys
import time
import zlib

REC = 4096
MAGIC = b"EBSR"
HDR = struct.Struct("<4sIIQQII")  # magic, epoch, fid, seq, seed, plen, pcrc
HDR_LEN = HDR.size + 4  # + header crc
PLEN = REC - HDR_LEN


def payload(seed, epoch, fid, seq):
    """The deterministic payload of one record."""
    return random.Random(f"{seed}:{epoch}:{fid}:{seq}").randbytes(PLEN)


def make_record(seed, epoch, fid, seq):
    p = payload(seed, epoch, fid, seq)
    h = HDR.pack(MAGIC, epoch, fid, seq, seed, PLEN, zlib.crc32(p))
    return h + struct.pack("<I", zlib.crc32(h)) + p


def check_record(buf, seed, epoch, fid, seq):
    """None when buf is exactly record (epoch, fid, seq) of this seed, else why not."""
    if len(buf) < REC:
        return f"short: {len(buf)} bytes"
    h = buf[:HDR.size]
    (hcrc,) = struct.unpack_from("<I", buf, HDR.size)
    if zlib.crc32(h) != hcrc:
        if buf[:REC] == bytes(REC):
            return "all zeros"
        return "header crc mismatch"
    magic, e, f, s, sd, plen, pcrc = HDR.unpack(h)
    if (magic, e, f, s, sd, plen) != (MAGIC, epoch, fid, seq, seed, PLEN):
        return f"header names another record (epoch {e} file {f} seq {s} seed {sd})"
    p = buf[HDR_LEN:REC]
    if zlib.crc32(p) != pcrc:
        return "payload crc mismatch"
    if p != payload(seed, epoch, fid, seq):
        return "payload differs from the expected bytes"
    return None


def file_name(fid):
    return f"f{fid:02d}"


def read_acks(path):
    """{file id: highest acknowledged seq} from an ack log; an unterminated last line
    (the writer was killed while appending it) is ignored."""
    acks = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return acks
    for line in data.split(b"\n")[:-1]:
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"ACK":
            fid, seq = int(parts[1]), int(parts[2])
            acks[fid] = max(acks.get(fid, -1), seq)
    return acks


def write_all(fd, buf):
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mnt", required=True, help="mount point the files live under")
    ap.add_argument("--dir", required=True, help="directory of the files (under --mnt)")
    ap.add_argument("--ack", required=True, help="ack log, outside the volume")
    ap.add_argument("--seed", type=int, required=True, help="payload seed")
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--next", required=True, help="next seq per file: '0,12,7,...'")
    ap.add_argument("--wseed", type=int, required=True, help="seed of the batch choices")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    a = ap.parse_args()

    if not os.path.ismount(a.mnt) or not os.path.realpath(a.dir).startswith(
            os.path.realpath(a.mnt) + os.sep):
        print(f"writer: {a.dir} is not under the mount point {a.mnt}", file=sys.stderr)
        return 2
    nxt = [int(x) for x in a.next.split(",")]
    rng = random.Random(a.wseed)
    fds = []
    try:
        for fid, n in enumerate(nxt):
            fd = os.open(os.path.join(a.dir, file_name(fid)), os.O_WRONLY | os.O_APPEND)
            size = os.fstat(fd).st_size
            if size != n * REC:
                print(f"writer: {file_name(fid)} holds {size} bytes, expected {n * REC}",
                      file=sys.stderr)
                return 2
            fds.append(fd)
        ack = os.open(a.ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        deadline = time.monotonic() + a.max_seconds
        ppid = os.getppid()
        batches = 0
        while time.monotonic() < deadline and os.getppid() == ppid:
            fid = rng.randrange(len(fds))
            k = rng.randint(1, a.max_batch)
            first = nxt[fid]
            write_all(fds[fid], b"".join(make_record(a.seed, a.epoch, fid, s)
                                         for s in range(first, first + k)))
            if rng.random() < 0.25:
                os.fsync(fds[fid])
            else:
                os.fdatasync(fds[fid])
            nxt[fid] = first + k
            write_all(ack, f"ACK {fid} {first + k - 1}\n".encode())
            os.fsync(ack)
            batches += 1
    except OSError as e:
        print(f"writer: stopped by {e!r}", file=sys.stderr)
        return 3
    print(f"writer: {batches} batches, time limit reached", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

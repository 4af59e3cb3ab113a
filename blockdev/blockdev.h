/* SPDX-License-Identifier: MIT */
/*
 * blockdev.h - the volume object: an identity-mapped sparse data file plus a chunk state
 * map, with copy-on-write fills, discard, flush ordering and AES-256-XTS encryption.
 *
 * Public API of blockdev/. Every other module uses volumes only through this header (and the
 * engines through blk_engine.h).
 *
 * A volume lives in a directory <parent>/<name>/ holding:
 *   header  4 KiB, written atomically (temp + rename + fsync dir): magic, version, size,
 *           chunk size, flags, generation, wrapped data key, SHA-256 of the rest;
 *   data    sparse file of the volume's size; byte N of the volume is byte N of the file
 *           (ciphertext when encrypted);
 *   map     one byte per chunk: state (absent / present / zero) and the changed bit, in
 *           sealed 4 KiB pages of 4064 states each with the page number and a CRC-32
 *           (format version 2; vol_open refuses a damaged page, see vol.c).
 *
 * Requests are asynchronous: the callback runs exactly once, on an engine thread (or on the
 * caller's thread, before vol_* returns, for requests that need no I/O, e.g. zero-length or
 * rejected ones, and for reads the page cache served at once: blk_try_now).
 * Results: >= 0 success (0 for flush/discard, len for read/write), else -errno.
 */
#ifndef EBSIM_BLOCKDEV_H
#define EBSIM_BLOCKDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockdev/blk_engine.h"
#include "snapshot/snapshot.h"

#define VOL_DEFAULT_CHUNK (64u << 10)
#define VOL_SECTOR 4096u
#define VOL_MASTER_KEY_LEN 32
#define VOL_DATA_KEY_LEN 64 /* AES-256-XTS: two 256-bit keys */

enum vol_crypt {
	VOL_CRYPT_NONE,
	VOL_CRYPT_WRAPPED,   /* random data key, wrapped by the master key, stored in the header */
	VOL_CRYPT_EPHEMERAL, /* data key supplied by the caller, never written anywhere */
};

struct vol_keys {
	const uint8_t *master;    /* VOL_MASTER_KEY_LEN bytes, for VOL_CRYPT_WRAPPED */
	const uint8_t *ephemeral; /* VOL_DATA_KEY_LEN bytes, for VOL_CRYPT_EPHEMERAL */
};

struct vol_params {
	uint64_t size;       /* bytes; a multiple of the chunk size */
	uint32_t chunk_size; /* 0 = VOL_DEFAULT_CHUNK; a power of two, >= VOL_SECTOR */
	enum vol_crypt crypt;
	/* Restore: the base snapshot's id, and for an encrypted snapshot its wrapped data key
	 * (the new volume keeps the snapshot's key). NULL for an empty volume. */
	const char *base_snap;
	const uint8_t *wrapped_key; /* 72 bytes */
};

/* A volume restored from a snapshot reads its ABSENT chunks from the base. The caller keeps
 * both alive until vol_close. */
struct vol_base {
	struct snap_store *store;
	const struct manifest *m;
};

struct vol;
typedef void (*vol_cb)(void *arg, int res);

/* Create the volume directory parent/name (fails with -EEXIST if present). Built under a
 * temporary name and renamed into place, so a crash never leaves a half-made volume under
 * the final name. */
int vol_create(int parent_dirfd, const char *name, const struct vol_params *p,
	       const struct vol_keys *keys);

/* Open an existing volume; I/O goes through eng (shared between volumes). A volume whose
 * header names a base snapshot needs base (else -ENODATA: never read zeros in place of
 * the snapshot's data). */
int vol_open(int parent_dirfd, const char *name, struct blk_engine *eng,
	     const struct vol_keys *keys, const struct vol_base *base, struct vol **out);
/* The base snapshot named in a volume's header ("" if none), read without opening it. */
int vol_read_base_id(int parent_dirfd, const char *name, char out[ID_MAX]);

/* Wait for requests in flight, flush, mark the volume clean, free. Returns the flush
 * result. No new request may be started once this is called. */
int vol_close(struct vol *v);

/* Remove a (closed) volume's directory. */
int vol_destroy(int parent_dirfd, const char *name);

uint64_t vol_size(const struct vol *v);
bool vol_encrypted(const struct vol *v);

/* buf must stay valid until cb runs. vol_write may overwrite buf (it encrypts in place). */
void vol_read(struct vol *v, void *buf, size_t len, uint64_t off, vol_cb cb, void *arg);
void vol_write(struct vol *v, void *buf, size_t len, uint64_t off, vol_cb cb, void *arg);
/* Make every write that completed before this call durable (data, then map). Once a flush
 * has failed, every later flush of this volume fails too (-EIO): data acknowledged as
 * written may be gone, and a later success would be a lie. */
void vol_flush(struct vol *v, vol_cb cb, void *arg);
/* Zero a range (discard / write-zeroes): afterwards it reads as zeros. */
void vol_discard(struct vol *v, uint64_t off, uint64_t len, vol_cb cb, void *arg);

/* Grow the volume to new_size bytes (a multiple of the chunk size); shrinking is -EINVAL.
 * Safe while I/O is in flight. */
int vol_resize(struct vol *v, uint64_t new_size);

/* ---- snapshots (the caller is snapshot-taking code in the daemon) ---------------------- */

enum vol_snap_kind {
	VOL_SNAP_ZERO, /* the chunk reads as zeros */
	VOL_SNAP_DATA, /* buf holds the chunk's bytes as stored (ciphertext if encrypted) */
	VOL_SNAP_BASE, /* unchanged from the base snapshot: base_id names its object */
};

struct vol_snap;

/*
 * Begin a point-in-time snapshot. Writes are held back only while the writes already in
 * flight complete and the changed set is switched: afterwards every chunk to copy is
 * "pending", and a write to a pending chunk first waits for that chunk to be copied
 * (copy-before-write). full: copy every chunk that is not zero (no usable parent);
 * otherwise only the chunks changed since the previous vol_snap_begin (or since creation).
 * One snapshot at a time per volume: -EBUSY otherwise. *total receives the number of
 * chunks to copy.
 */
int vol_snap_begin(struct vol *v, bool full, struct vol_snap **out, uint64_t *total);
/* Called by vol_snap_next for a run of n VOL_SNAP_DATA chunks (idx .. idx + n - 1) once buf
 * holds them, before their locks are released: the same point-in-time bytes are at
 * (fd, off), n chunks long, of the volume's data file until fn returns (so fn may clone
 * that range, in one piece). 0, or -errno to fail vol_snap_next. */
typedef int (*vol_snap_fn)(void *arg, uint64_t idx, uint64_t n, void *buf, int fd,
			   uint64_t off);
/* The next chunks in their point-in-time state: 1 with *idx, *n, *kind and buf or base_id
 * filled; 0 when every chunk was returned; -errno on failure. VOL_SNAP_DATA: a run of
 * 1 <= *n <= max consecutive chunks, read into buf (*n chunks long, so max chunks of room);
 * otherwise *n = 1 and base_id is filled (VOL_SNAP_BASE). fn (may be NULL) is called as
 * described above. Blocking: call it from a worker thread. */
int vol_snap_next(struct vol_snap *s, uint64_t max, uint64_t *idx, uint64_t *n,
		  enum vol_snap_kind *kind, void *buf, uint8_t base_id[OBJ_ID_LEN], vol_snap_fn fn,
		  void *arg);
/* Finish. ok = false puts the changed bits of the chunks back, so that a later incremental
 * snapshot still includes them. */
void vol_snap_end(struct vol_snap *s, bool ok);

uint32_t vol_chunk_size(const struct vol *v);
/* The volume's wrapped data key (encrypted volumes with a stored key), for snapshots. */
int vol_wrapped_key(const struct vol *v, uint8_t out[72]);
/* Decrypt (if the volume is encrypted) a chunk read by vol_snap_next, in place. */
int vol_chunk_plaintext(struct vol *v, uint64_t idx, void *buf);

/* ---- lazy restore ------------------------------------------------------------------------ */

/* Hydrate chunks still read from the base, starting at *next: copies at most max chunks,
 * advancing *next. Returns 1 while more remain, 0 when no chunk is read from the base any
 * more (the base can then be dropped: the header no longer names it), -errno on failure.
 * *left receives how many chunks still come from the base. Blocking: a worker thread. */
int vol_hydrate(struct vol *v, uint64_t *next, uint64_t max, uint64_t *left);
/* How many chunks are still read from the base (0 when none or no base). */
uint64_t vol_base_left(struct vol *v);
/* Count of reads served from the base since open (tests use it to show that a hydrated
 * volume never touches the store). */
uint64_t vol_base_reads(const struct vol *v);

/* Synchronous conveniences for tools and tests: run one request and wait. */
int vol_pread(struct vol *v, void *buf, size_t len, uint64_t off);
int vol_pwrite(struct vol *v, const void *buf, size_t len, uint64_t off);
int vol_fsync(struct vol *v);
int vol_pdiscard(struct vol *v, uint64_t off, uint64_t len);

#endif

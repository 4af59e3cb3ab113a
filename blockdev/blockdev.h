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
 *   map     one byte per chunk: state (absent / present / zero) and the changed bit.
 *
 * Requests are asynchronous: the callback runs exactly once, on an engine thread (or on the
 * caller's thread for requests that need no I/O, e.g. zero-length or rejected ones).
 * Results: >= 0 success (0 for flush/discard, len for read/write), else -errno.
 */
#ifndef EBSIM_BLOCKDEV_H
#define EBSIM_BLOCKDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockdev/blk_engine.h"

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
};

struct vol;
typedef void (*vol_cb)(void *arg, int res);

/* Create the volume directory parent/name (fails with -EEXIST if present). Built under a
 * temporary name and renamed into place, so a crash never leaves a half-made volume under
 * the final name. */
int vol_create(int parent_dirfd, const char *name, const struct vol_params *p,
	       const struct vol_keys *keys);

/* Open an existing volume; I/O goes through eng (shared between volumes). */
int vol_open(int parent_dirfd, const char *name, struct blk_engine *eng,
	     const struct vol_keys *keys, struct vol **out);

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

/* Synchronous conveniences for tools and tests: run one request and wait. */
int vol_pread(struct vol *v, void *buf, size_t len, uint64_t off);
int vol_pwrite(struct vol *v, const void *buf, size_t len, uint64_t off);
int vol_fsync(struct vol *v);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * snapshot.h - the content-addressed chunk store and snapshot manifests (public API of
 * snapshot/).
 *
 * One store per region: <home>/regions/<region>/ holding
 *   packs/pk-<16 hex>.pack  many objects appended one after another (snapshot creation
 *                        writes these through a store_pack writer), and
 *   packs/pk-<16 hex>.idx   its index: each object's SHA-256, offset and length;
 *   objects/ab/cdef...   one loose file per object (store_put: copies, older stores), named
 *                        by the lower-case hex SHA-256 of its bytes (fan-out on two digits);
 *   manifests/snap-...   one file per snapshot: which object holds each chunk.
 * An object id is its SHA-256 wherever it lives; lookups see packs and loose files alike.
 * An object's bytes are exactly what the volume's data file holds for that chunk
 * (ciphertext for encrypted volumes, whose snapshots keep the volume's wrapped key), so a
 * restore copies objects back byte for byte. All-zero chunks are never stored: a manifest
 * lists only non-zero chunks; an index it does not list reads as zeros.
 *
 * Durability: store_put writes an object (temp file in the destination directory, then
 * link into place; an existing object is success) WITHOUT syncing; store_sync is the
 * barrier that makes every object put so far durable. store_pack_commit makes what one
 * pack writer put durable (its own files only). manifest_write is atomic and durable by
 * itself. A snapshot is "completed" only after its objects are durable, then manifest_write.
 *
 * Integrity: every read re-hashes the object and fails with -EBADMSG on a mismatch.
 * Thread safety: a store may be used from several threads at once; GC (store_gc) must not
 * run concurrently with store_put for a snapshot that is still being written (the caller
 * serialises those).
 */
#ifndef EBSIM_SNAPSHOT_H
#define EBSIM_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define OBJ_ID_LEN 32 /* SHA-256 */
#define OBJ_HEX_LEN 64

struct snap_store;

/* Open the store in parent_dirfd/name (created with its subdirectories if missing). */
int store_open(int parent_dirfd, const char *name, struct snap_store **out);
void store_close(struct snap_store *s);

/* Hash buf and store it unless an object with that id exists. id receives the SHA-256.
 * *existed (may be NULL) tells whether it was already there. Not durable until
 * store_sync. */
int store_put(struct snap_store *s, const void *buf, size_t len, uint8_t id[OBJ_ID_LEN],
	      bool *existed);
/* Read an object of exactly len bytes into buf and verify its hash: 0, -ENOENT,
 * -EBADMSG (content does not match its name, or wrong length), or -errno. */
int store_get(struct snap_store *s, const uint8_t id[OBJ_ID_LEN], void *buf, size_t len);
/* Open an object read-only (O_NOFOLLOW) for callers that read it asynchronously; they must
 * read its bytes at *off (a pack holds many objects; a loose object starts at 0) and then
 * check them with store_verify. Returns an fd (the caller closes it) or -errno. */
int store_open_object(struct snap_store *s, const uint8_t id[OBJ_ID_LEN], uint64_t *off);
/* True when SHA-256(buf) == id. */
bool store_verify(const void *buf, size_t len, const uint8_t id[OBJ_ID_LEN]);
bool store_has(struct snap_store *s, const uint8_t id[OBJ_ID_LEN]);
/* Copy one object from src to dst if dst lacks it (verifying it on the way). *copied tells
 * whether bytes were transferred. Not durable until store_sync(dst). */
int store_copy_object(struct snap_store *src, struct snap_store *dst,
		      const uint8_t id[OBJ_ID_LEN], size_t len, bool *copied);
/* Make every object put so far durable (file data and directory entries). */
int store_sync(struct snap_store *s);

/* ---- pack writer (bulk puts: snapshot creation) -------------------------------------- */

struct store_pack;

/* A writer that appends new objects to pack files of this store (one file per <= 256 MiB,
 * one fdatasync each) instead of one file per object. */
int store_pack_begin(struct snap_store *s, struct store_pack **out);
/* Store buf, whose SHA-256 the caller computed (store_sha256) as id, unless the store (or
 * this writer) already has it (*existed). Thread safety: one thread per writer; lookups
 * by other threads in the same store are safe. */
int store_pack_put(struct store_pack *w, const void *buf, size_t len,
		   const uint8_t id[OBJ_ID_LEN], bool *existed);
/* Like store_pack_put, but the object's bytes (len at off of fd; off and len multiples of
 * the file system block size) enter the pack as a clone of that range (FICLONERANGE: shared
 * extents, no data copied), in two steps so that the hash can be computed elsewhere in the
 * meantime. The range must not change until clone_raw returns. clone_raw clones it to the
 * pack's end (*at) with no id yet: 0, 1 when the pack is full (finish every outstanding
 * clone before the next clone_raw), -EOPNOTSUPP (nothing stored) when the file systems
 * cannot share extents (put the bytes instead), or -errno. The range may hold several
 * objects back to back (a run of chunks: one ioctl). clone_finish, called in order for each
 * object of each clone_raw (at, len: that object's place in the pack), names it id (NULL:
 * the chunk is not to be stored, e.g. all zero): kept unless the store has id already
 * (*existed); otherwise its range is punched out of the pack. Commit only once all are
 * finished. */
int store_pack_clone_raw(struct store_pack *w, int fd, uint64_t off, size_t len, uint64_t *at);
int store_pack_clone_finish(struct store_pack *w, uint64_t at, size_t len,
			    const uint8_t id[OBJ_ID_LEN], bool *existed);
/* Make every object put through w durable (pack data, then its index, then packs/) and
 * visible to store_get. Only then may a manifest reference them. */
int store_pack_commit(struct store_pack *w);
/* Free the writer; a pack not yet committed is removed. NULL is a no-op. */
void store_pack_free(struct store_pack *w);
/* SHA-256 of buf; 0 or -ENOMEM. */
int store_sha256(const void *buf, size_t len, uint8_t out[OBJ_ID_LEN]);
/* Remove one loose object (tests); packed objects are freed only by store_gc. */
int store_remove_object(struct snap_store *s, const uint8_t id[OBJ_ID_LEN]);

void obj_id_hex(const uint8_t id[OBJ_ID_LEN], char hex[OBJ_HEX_LEN + 1]);
int obj_id_parse(const char *hex, uint8_t id[OBJ_ID_LEN]);

/* ---- manifests ----------------------------------------------------------------------- */

#define MANIFEST_F_ENCRYPTED 1u

struct manifest_entry {
	uint64_t idx;		 /* chunk index */
	uint8_t id[OBJ_ID_LEN]; /* object holding that chunk's bytes */
};

struct manifest {
	uint64_t volume_size; /* bytes */
	uint32_t chunk_size;
	uint32_t flags;
	char volume_id[ID_MAX]; /* the volume it was taken from */
	char parent[ID_MAX];	/* previous snapshot in the lineage, "" if none */
	char lineage[ID_MAX];	/* the lineage: the first snapshot's id */
	uint8_t wrapped_key[72]; /* the volume's wrapped data key when encrypted */
	size_t nentries;
	struct manifest_entry *e; /* sorted by idx, no duplicates, non-zero chunks only */
};

/* Write snapshot id's manifest atomically and durably; entries must be sorted. */
int manifest_write(struct snap_store *s, const char *id, const struct manifest *m);
/* Read and validate (checksum, sorted entries, indexes within the volume): 0, -ENOENT,
 * -EUCLEAN (damaged). */
int manifest_read(struct snap_store *s, const char *id, struct manifest **out);
/* Parse a manifest from memory (the same validation; the fuzzing entry point). */
int manifest_parse(const void *buf, size_t len, struct manifest **out);
int manifest_remove(struct snap_store *s, const char *id);
void manifest_free(struct manifest *m);
/* The object for chunk idx, or NULL when the chunk is zero (binary search). */
const uint8_t *manifest_lookup(const struct manifest *m, uint64_t idx);
/* Call fn for each manifest id in the store; fn returns non-zero to stop. */
int manifest_each(struct snap_store *s, int (*fn)(void *arg, const char *id), void *arg);

/* ---- maintenance --------------------------------------------------------------------- */

/* Delete every object that no manifest in the store references (mark and sweep).
 * *freed (may be NULL) receives the number of objects removed. */
int store_gc(struct snap_store *s, uint64_t *freed);

struct check_report {
	/* called for an object whose bytes do not match its name (or cannot be read), with
	 * one manifest that references it (NULL if none) and the chunk index there */
	void (*corrupt)(void *arg, const char *obj_hex, const char *snap_id, uint64_t idx);
	/* a manifest entry whose object is missing */
	void (*missing)(void *arg, const char *snap_id, uint64_t idx, const char *obj_hex);
	/* an object no manifest references */
	void (*leaked)(void *arg, const char *obj_hex);
	/* a manifest that cannot be read (-EUCLEAN) */
	void (*bad_manifest)(void *arg, const char *snap_id);
	void *arg;
	uint64_t objects_checked, corrupt_n, missing_n, leaked_n, bad_manifests_n;
};

/* Verify every object against its hash and every manifest against the store. 0 when the
 * walk completed (whatever it found: see the counters), -errno if it could not run. */
int store_check(struct snap_store *s, struct check_report *r);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * manifest.c - snapshot manifests: the on-disk format, strict parsing, atomic writes,
 * lookup and enumeration (see snapshot.h).
 *
 * Design notes
 * ------------
 * A manifest is the file <store>/manifests/<snap-id>, written with file_write_atomic (temp
 * file, fsync, rename, fsync of manifests/), so it is either absent or complete and
 * durable. Removal unlinks and fsyncs manifests/ before returning, so a GC that follows can
 * never see its objects become unreferenced while a crash could bring the manifest back.
 *
 * Format, version 1. All integers little-endian; ID fields are ASCII, NUL-terminated and
 * NUL-padded to 32 bytes (every byte after the first NUL is zero).
 *
 *   offset size  field
 *        0    8  magic "EBSMANIF"
 *        8    4  version = 1
 *       12    4  flags: bit 0 = MANIFEST_F_ENCRYPTED; other bits must be 0
 *       16    8  volume_size in bytes: 0 < volume_size <= 2^50, a multiple of chunk_size
 *       24    4  chunk_size: a power of two in [4096, 64 MiB]
 *       28    4  reserved, must be 0
 *       32   32  volume_id: a valid "vol-" id
 *       64   32  parent: a valid "snap-" id, or empty (all zero) for the first snapshot
 *       96   32  lineage: a valid "snap-" id
 *      128   72  wrapped_key: the volume's wrapped data key; all zero unless encrypted
 *      200    8  nentries
 *      208  40*n entries: idx (8, u64) then the object id (32, raw SHA-256); idx strictly
 *                ascending (so no duplicates), idx < volume_size / chunk_size
 *    end-32  32  SHA-256 of every byte before it
 *
 * The file length must be exactly 208 + 40 * nentries + 32. manifest_parse checks every
 * rule above and answers -EUCLEAN for any violation; it reads only inside [buf, buf + len)
 * and allocates only in proportion to len (it is a fuzzing entry point). The structure is
 * checked before the trailer so that a fuzzer can reach every rule. manifest_write applies
 * the same rules to its input (-EINVAL), so whatever it writes parses.
 *
 * Size: 40 bytes per non-zero chunk (a full 1 TiB volume of 64 KiB chunks: 640 MiB), held
 * in memory whole. manifest_read therefore reads the file itself instead of file_read_all,
 * which stops at 64 MiB (~1.6M entries, 100 GiB of 64 KiB chunks); its only cap is the
 * largest well-formed size.
 */
#include "snapshot/snapshot_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MF_MAGIC "EBSMANIF"
#define MF_VERSION 1u
#define MF_HDR_LEN 208u
#define MF_ENTRY_LEN 40u
#define MF_TRAILER_LEN 32u
#define MF_MIN_CHUNK 4096u
#define MF_MAX_CHUNK (64u << 20)
#define MF_MAX_VOLUME (1ull << 50) /* the volume engine's limit */
/* the largest well-formed file: every chunk of the largest volume at the smallest size */
#define MF_MAX_FILE                                                                                \
	(MF_HDR_LEN + MF_TRAILER_LEN + (uint64_t)MF_ENTRY_LEN * (MF_MAX_VOLUME / MF_MIN_CHUNK))

#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_FLAGS 12
#define OFF_VOLSIZE 16
#define OFF_CHUNK 24
#define OFF_RESERVED 28
#define OFF_VOLID 32
#define OFF_PARENT 64
#define OFF_LINEAGE 96
#define OFF_KEY 128
#define OFF_NENTRIES 200

_Static_assert(OFF_NENTRIES + 8 == MF_HDR_LEN, "header layout");
_Static_assert(sizeof(((struct manifest *)0)->wrapped_key) == 72 && OFF_KEY + 72 == OFF_NENTRIES,
	       "wrapped key is 72 bytes");
_Static_assert(ID_MAX == 32, "ID fields are 32 bytes on disk");
_Static_assert(sizeof(struct manifest_entry) == MF_ENTRY_LEN, "entry layout");


static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static bool geometry_ok(uint64_t volume_size, uint32_t chunk_size)
{
	return chunk_size >= MF_MIN_CHUNK && chunk_size <= MF_MAX_CHUNK &&
	       (chunk_size & (chunk_size - 1)) == 0 && volume_size > 0 &&
	       volume_size <= MF_MAX_VOLUME && volume_size % chunk_size == 0;
}

/* An in-memory ID: NUL-terminated within ID_MAX, then empty (when allowed) or valid. */
static bool id_ok(const char s[ID_MAX], const char *prefix, bool may_be_empty)
{
	if (!memchr(s, '\0', ID_MAX))
		return false;
	if (!s[0])
		return may_be_empty;
	return id_valid(prefix, s);
}

/* Decode a 32-byte on-disk ID field into out: canonical padding and a valid ID. */
static bool id_field(const uint8_t f[ID_MAX], const char *prefix, bool may_be_empty,
		     char out[ID_MAX])
{
	const uint8_t *nul = memchr(f, '\0', ID_MAX);

	if (!nul)
		return false;
	for (const uint8_t *p = nul; p < f + ID_MAX; p++)
		if (*p)
			return false;
	memcpy(out, f, ID_MAX);
	return id_ok(out, prefix, may_be_empty);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int manifest_parse(const void *buf, size_t len, struct manifest **out)
{
	const uint8_t *p = buf, *ent;
	uint8_t h[OBJ_ID_LEN];
	struct manifest *m;
	uint64_t nchunks, n, body;
	uint32_t flags;
	int ret;

	*out = NULL;
	if (!p || len < MF_HDR_LEN + MF_TRAILER_LEN || len > MF_MAX_FILE)
		return -EUCLEAN;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	ret = -EUCLEAN;
	if (memcmp(p + OFF_MAGIC, MF_MAGIC, 8) || get32(p + OFF_VERSION) != MF_VERSION)
		goto out_free;
	flags = get32(p + OFF_FLAGS);
	if ((flags & ~MANIFEST_F_ENCRYPTED) || get32(p + OFF_RESERVED))
		goto out_free;
	m->flags = flags;
	m->volume_size = get64(p + OFF_VOLSIZE);
	m->chunk_size = get32(p + OFF_CHUNK);
	if (!geometry_ok(m->volume_size, m->chunk_size))
		goto out_free;
	nchunks = m->volume_size / m->chunk_size;
	if (!id_field(p + OFF_VOLID, "vol", false, m->volume_id) ||
	    !id_field(p + OFF_PARENT, "snap", true, m->parent) ||
	    !id_field(p + OFF_LINEAGE, "snap", false, m->lineage))
		goto out_free;
	if (!(flags & MANIFEST_F_ENCRYPTED) && !all_zero(p + OFF_KEY, sizeof(m->wrapped_key)))
		goto out_free;
	memcpy(m->wrapped_key, p + OFF_KEY, sizeof(m->wrapped_key));

	n = get64(p + OFF_NENTRIES);
	body = len - MF_HDR_LEN - MF_TRAILER_LEN;
	if (body % MF_ENTRY_LEN || n != body / MF_ENTRY_LEN || n > nchunks)
		goto out_free;
	ent = p + MF_HDR_LEN;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t idx = get64(ent + i * MF_ENTRY_LEN);

		if (idx >= nchunks || (i && idx <= get64(ent + (i - 1) * MF_ENTRY_LEN)))
			goto out_free;
	}
	ret = store_sha256(p, len - MF_TRAILER_LEN, h);
	if (ret)
		goto out_free;
	ret = -EUCLEAN;
	if (memcmp(h, p + len - MF_TRAILER_LEN, MF_TRAILER_LEN))
		goto out_free;

	if (n) {
		m->e = malloc((size_t)n * sizeof(*m->e));
		if (!m->e) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	for (uint64_t i = 0; i < n; i++) {
		m->e[i].idx = get64(ent + i * MF_ENTRY_LEN);
		memcpy(m->e[i].id, ent + i * MF_ENTRY_LEN + 8, OBJ_ID_LEN);
	}
	m->nentries = (size_t)n;
	*out = m;
	return 0;

out_free:
	manifest_free(m);
	return ret;
}

/* Read manifests/<id> whole (no size cap but the format's own). */
static int manifest_load(int dfd, const char *id, uint8_t **bufp, size_t *lenp)
{
	struct stat st;
	uint8_t *buf;
	size_t got = 0, len;
	int fd, ret = 0;

	fd = openat(dfd, id, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ELOOP ? -EUCLEAN : -errno; /* a symlink is no manifest */
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MF_MAX_FILE ||
	    st.st_size < MF_HDR_LEN + MF_TRAILER_LEN) {
		ret = -EUCLEAN;
		goto out_close;
	}
	len = (size_t)st.st_size;
	buf = malloc(len);
	if (!buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* shorter than fstat said: manifests are replaced, never truncated */
			ret = n < 0 ? -errno : -EUCLEAN;
			free(buf);
			goto out_close;
		}
		got += (size_t)n;
	}
	*bufp = buf;
	*lenp = len;
out_close:
	close(fd);
	return ret;
}

int manifest_read(struct snap_store *s, const char *id, struct manifest **out)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int ret;

	*out = NULL;
	if (!id_valid("snap", id))
		return -EINVAL;
	ret = manifest_load(store_manifest_dirfd(s), id, &buf, &len);
	if (ret == 0) {
		ret = manifest_parse(buf, len, out);
		free(buf);
	}
	if (ret == -EUCLEAN)
		log_err("manifest %s is damaged", id);
	return ret;
}

int manifest_write(struct snap_store *s, const char *id, const struct manifest *m)
{
	uint8_t *buf, *ent;
	uint64_t nchunks;
	size_t len;
	int ret;

	if (!id_valid("snap", id) || !m || !geometry_ok(m->volume_size, m->chunk_size) ||
	    (m->flags & ~MANIFEST_F_ENCRYPTED) || !id_ok(m->volume_id, "vol", false) ||
	    !id_ok(m->parent, "snap", true) || !id_ok(m->lineage, "snap", false) ||
	    (m->nentries && !m->e))
		return -EINVAL;
	nchunks = m->volume_size / m->chunk_size;
	if (m->nentries > nchunks)
		return -EINVAL;
	for (size_t i = 0; i < m->nentries; i++)
		if (m->e[i].idx >= nchunks || (i && m->e[i].idx <= m->e[i - 1].idx))
			return -EINVAL;

	len = MF_HDR_LEN + m->nentries * MF_ENTRY_LEN + MF_TRAILER_LEN;
	buf = calloc(1, len);
	if (!buf)
		return -ENOMEM;
	memcpy(buf + OFF_MAGIC, MF_MAGIC, 8);
	put32(buf + OFF_VERSION, MF_VERSION);
	put32(buf + OFF_FLAGS, m->flags);
	put64(buf + OFF_VOLSIZE, m->volume_size);
	put32(buf + OFF_CHUNK, m->chunk_size);
	/* copy up to the NUL only: the padding on disk is always zero */
	memcpy(buf + OFF_VOLID, m->volume_id, strlen(m->volume_id));
	memcpy(buf + OFF_PARENT, m->parent, strlen(m->parent));
	memcpy(buf + OFF_LINEAGE, m->lineage, strlen(m->lineage));
	if (m->flags & MANIFEST_F_ENCRYPTED)
		memcpy(buf + OFF_KEY, m->wrapped_key, sizeof(m->wrapped_key));
	put64(buf + OFF_NENTRIES, m->nentries);
	ent = buf + MF_HDR_LEN;
	for (size_t i = 0; i < m->nentries; i++, ent += MF_ENTRY_LEN) {
		put64(ent, m->e[i].idx);
		memcpy(ent + 8, m->e[i].id, OBJ_ID_LEN);
	}
	ret = store_sha256(buf, len - MF_TRAILER_LEN, buf + len - MF_TRAILER_LEN);
	if (!ret)
		ret = file_write_atomic(store_manifest_dirfd(s), id, buf, len, 0600);
	if (ret)
		log_err("manifest %s: write failed: %s", id, strerror(-ret));
	free(buf);
	return ret;
}

int manifest_remove(struct snap_store *s, const char *id)
{
	int dfd = store_manifest_dirfd(s);

	if (!id_valid("snap", id))
		return -EINVAL;
	if (unlinkat(dfd, id, 0) < 0)
		return -errno;
	/* durable before any GC may free the objects it referenced */
	return fsync(dfd) < 0 ? -errno : 0;
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	free(m->e);
	free(m);
}

const uint8_t *manifest_lookup(const struct manifest *m, uint64_t idx)
{
	size_t lo = 0, hi;

	if (!m)
		return NULL;
	hi = m->nentries;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->e[mid].idx == idx)
			return m->e[mid].id;
		if (m->e[mid].idx < idx)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Returns 0 after a full walk, fn's non-zero value when it stopped the walk, or -errno. */
int manifest_each(struct snap_store *s, int (*fn)(void *arg, const char *id), void *arg)
{
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	/* a fresh open file description, so concurrent walks do not share a position */
	fd = openat(store_manifest_dirfd(s), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		ret = -errno;
		close(fd);
		return ret;
	}
	for (;;) {
		char id[ID_MAX];

		errno = 0;
		de = readdir(d);
		if (!de) {
			ret = errno ? -errno : 0;
			break;
		}
		/* skips ".", "..", file_write_atomic's ".snap-....tmp" and anything foreign */
		if (!id_valid("snap", de->d_name))
			continue;
		memcpy(id, de->d_name, strlen(de->d_name) + 1); /* id_valid: 22 bytes */
		ret = fn(arg, id);
		if (ret)
			break;
	}
	closedir(d);
	return ret;
}

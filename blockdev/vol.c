/* SPDX-License-Identifier: MIT */
/*
 * vol.c - the volume: identity-mapped sparse data file + chunk state map (see blockdev.h).
 *
 * Design notes
 * ------------
 * Chunk states (one map byte per chunk, low two bits) and what a read returns:
 *   ABSENT   never written: the base snapshot's bytes, or zeros when there is none;
 *   PRESENT  the data file holds the chunk's current bytes (ciphertext when encrypted);
 *   ZERO     discarded: zeros; the data file range is a hole.
 * Bit 7 (CHANGED) is set by every write or discard and cleared by snapshots (snapshot/).
 *
 * A "simple" volume (plaintext, no base) keeps every byte in the data file: an ABSENT chunk
 * is a hole there, so writes go straight to the engine and only set PRESENT|CHANGED.
 * Reads of every volume consult the map, so that chunks that were never written or were
 * discarded read as zeros without I/O. Other volumes go chunk by chunk:
 *   - a write to a PRESENT chunk (sector aligned when encrypted) goes straight to the data
 *     file, encrypted in place;
 *   - anything else is a "slow" write under a per-chunk lock: a write into an ABSENT or
 *     ZERO chunk fills the whole chunk (base or zeros, merged with the new bytes) before the
 *     chunk becomes PRESENT, so a PRESENT chunk always holds complete data; an unaligned
 *     write to an encrypted PRESENT chunk reads, decrypts, merges and rewrites only the 4 KiB
 *     sectors it touches, so it never rewrites bytes a concurrent writer owns.
 *   Fast writes to a locked chunk queue behind the lock as slow writes.
 *
 * Locking: v->lock guards the map, the dirty-page bitmap, the chunk locks, the flush queue
 * and the size. It is never held across I/O submission, except during vol_resize.
 *
 * Where callbacks run: a data-file segment (seg_go) first tries blk_try_now, which does a
 * cached read or a small page-aligned write at once on the caller's thread; the caller's
 * vol_cb may then run before vol_read/vol_write returns. Otherwise it runs on an engine
 * thread. A chunk fill writes its pieces the same way (blk_try_now, FILL_PIECE, see
 * slow_write_out), so a slow write may also complete on the thread that started it; other
 * chunk-locked (slow) writes and flush steps always go through the engine.
 *
 * Crash protocol: flush = fdatasync(data) -> write the dirty map pages -> fdatasync(map)
 * -> reply. A map byte only moves to PRESENT after its chunk's data write completed, and
 * the map is persisted only after the data it describes is durable, so a crash loses at
 * most unflushed writes. Map bytes are single bytes, so a torn page write cannot produce a
 * state that was never written. The header's clean flag is cleared at open and set by a
 * clean close; an unclean open punches holes in the data file under every chunk that is
 * not PRESENT, ABSENT or ZERO (writes that reached the file but never reached a flushed
 * map), so "not PRESENT => hole" holds again, and marks every PRESENT chunk CHANGED, so the
 * next incremental snapshot cannot miss data. On a volume that is not simple, a PRESENT
 * chunk that is all hole (an unflushed whole-chunk discard) becomes ZERO: an encrypted one
 * would otherwise read the decryption of a hole, bytes nobody wrote.
 *
 * A failed flush is sticky (v->flush_err): every later flush fails too.
 *
 * Snapshot iterator (vol_snap_*): vol_snap_next returns each pending chunk in its
 * point-in-time state while holding that chunk's lock (a writer to it waits: copy before
 * write). For a PRESENT chunk it reads the bytes into the caller's buffer and, still under
 * the lock, calls the caller's optional callback with the data fd and the chunk's offset,
 * so the snapshot may clone (FICLONERANGE) exactly the bytes it hashed. It returns a run of
 * up to max chunks at once when the chunks after the first are pending, PRESENT and
 * unlocked: it takes all their locks before reading (one pread of the run) and releases
 * them, in order, only after the callback returned, so one clone of the whole run still
 * shares exactly the bytes read. A writer to a chunk of the run waits for that, as for a
 * single chunk (at most one run's read and clone: 32 chunks, 2 MiB, in the daemon). A
 * chunk a parked writer waits for is returned alone (that writer holds its lock).
 *
 * Map file format (header version 2): a sequence of 4 KiB pages; page p holds the map
 * bytes of chunks [p * MAP_PER_PAGE, (p + 1) * MAP_PER_PAGE) at offsets [0, 4064), then a
 * trailer: le64 page number at 4064, 20 zero bytes, le32 CRC-32 (zlib) of bytes [0, 4092)
 * at 4092. The last page's unused state bytes are zero (ABSENT). In memory the map stays
 * one flat byte array; a flush round copies each dirty page, seals it (page number, CRC)
 * outside v->lock and writes it whole, so a CRC is recomputed only for the pages written
 * in that round: data fdatasync -> sealed map pages -> map fdatasync. vol_open verifies
 * every page (CRC, page number, zero padding, valid states) and refuses the volume on the
 * first damaged page, naming it; nothing is repaired or punched on a refusal. A page is
 * one aligned 4 KiB write: a SIGKILL cannot tear it (page cache); a power loss on a device
 * without atomic 4 KiB writes could, and is then refused at start, never used silently.
 * The map file may be longer than the volume needs (a crash during vol_resize, before the
 * header commit): the extra pages are ignored and rewritten by the next resize.
 * Version 1 (flat map without checksums) is refused at open with a message saying so: no
 * released ebsim wrote it (the repository has no releases), so there is no converter.
 */
#include "blockdev/blockdev.h"
#include "blockdev/crypt_i.h"
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>
#include <zlib.h>

#define MAP_STATE 0x03
#define MAP_ABSENT 0x00
#define MAP_PRESENT 0x01
#define MAP_ZERO 0x02
#define MAP_CHANGED 0x80
#define MAP_DPAGE 4096u	    /* on-disk map page */
#define MAP_PER_PAGE 4064u  /* chunk states per map page */
#define MAP_CRC_OFF 4092u   /* le32 CRC-32 of [0, MAP_CRC_OFF) */
#define MAP_BATCH 64u	    /* pages per pwrite/pread outside the flush path */

#define HDR_SIZE 4096u
#define HDR_MAGIC "EBSIMVOL"
#define HDR_VERSION 2u /* 2: map pages with checksums */
#define HDR_F_WRAPPED 1u
#define HDR_F_EPHEMERAL 2u
#define HDR_F_CLEAN 4u
#define HDR_F_BASE 8u

/* On-disk header, little-endian (x86_64/arm64 hosts), padded to HDR_SIZE; the SHA-256 of
 * bytes [0, HDR_SUM_OFF) sits at HDR_SUM_OFF. */
struct vol_hdr {
	char magic[8];
	uint32_t version;
	uint32_t flags;
	uint64_t size;
	uint32_t chunk_size;
	uint32_t reserved;
	uint64_t generation;
	uint8_t wrapped_key[CRYPT_WRAPPED_LEN];
	char base[ID_MAX]; /* base snapshot id, NUL-padded; valid when HDR_F_BASE */
};
#define HDR_SUM_OFF (HDR_SIZE - 32)

struct slow;

struct chunk_lock {
	uint64_t idx;
	struct slow *waiters, **wtail;
	struct chunk_lock *next;
};

struct flush_waiter {
	vol_cb cb;
	void *arg;
	struct flush_waiter *next;
};

struct vol {
	int dirfd, data_fd, map_fd;
	struct blk_engine *eng;
	pthread_mutex_t lock;
	_Atomic uint64_t size;
	uint32_t chunk_size;
	unsigned chunk_shift;
	uint64_t nchunks;
	uint8_t *map;
	uint64_t *dirty; /* one bit per map page (MAP_PER_PAGE states) */
	bool simple, encrypted, has_base;
	uint8_t key[VOL_DATA_KEY_LEN];
	struct vol_hdr hdr;
	struct chunk_lock *locks;
	bool flushing;
	struct flush_waiter *queued, **qtail;
	int flush_err;
	atomic_int inflight; /* vol_io objects not yet completed: vol_close drains them */

	/* lazy restore */
	struct snap_store *store;
	const struct manifest *bm; /* base manifest, NULL when none */
	uint64_t base_nchunks;	   /* chunks the base covers */
	atomic_uint_fast64_t base_reads;

	/* snapshots */
	struct vol_snap *snap;	     /* the snapshot being copied, or NULL */
	bool barrier;		     /* writes are held back while a snapshot begins */
	struct held *held, **htail;  /* the writes held back */
	atomic_int writes_inflight;  /* write/discard requests not yet completed */
	pthread_cond_t cond;	     /* chunk lock released / chunk parked */
};

/* A write or discard that arrived while a snapshot was switching the changed set. */
struct held {
	uint8_t *buf; /* NULL: discard */
	uint64_t len, off;
	vol_cb cb;
	void *arg;
	struct held *next;
};

/* The snapshot being copied (see vol_snap_begin). */
struct vol_snap {
	struct vol *v;
	uint64_t *pending; /* bitmap over the chunks at begin */
	uint64_t nchunks;  /* chunks at begin */
	uint64_t scan;	   /* next index the sequential scan looks at */
	uint64_t left;	   /* pending chunks not returned yet */
	struct slow *parked, **ptail; /* writes waiting for their chunk to be copied */
	uint64_t *captured;	      /* the chunks begin captured (to restore CHANGED on failure) */
};

/* One caller request; completes when its last segment does. */
struct vol_io {
	struct vol *v;
	vol_cb cb;
	void *arg;
	atomic_int pending;
	atomic_int err;
	int result;
	bool write; /* counts in v->writes_inflight */
};

/* One engine request on behalf of a vol_io. */
struct seg {
	struct blk_req req;
	struct vol_io *io;
	bool decrypt;	 /* read: decrypt req.buf after completion */
	uint8_t *bounce; /* read: widened sector-aligned buffer, copy out to dst */
	uint8_t *dst;
	size_t skip, dlen;
};

/* One slow write: a chunk-locked read-modify-write or fill. */
/* An asynchronous read of one base object into a chunk buffer, verified on completion. */
struct base_rd {
	struct blk_req req;
	struct vol *v;
	uint64_t idx;
	uint8_t id[OBJ_ID_LEN];
	void (*done)(struct base_rd *b, int res);
};

struct slow {
	struct blk_req req;
	struct base_rd brd; /* a fill from the base snapshot */
	struct vol_io *io;
	struct vol *v;
	uint64_t idx;
	const uint8_t *src; /* NULL: zeros */
	uint32_t o, l;	    /* modified range within the chunk */
	uint8_t *cbuf;
	uint32_t a, b; /* range of the chunk that is written back */
	bool fill;     /* [a, b) is the whole chunk, filled (was ABSENT or ZERO) */
	struct slow *next;
};

static void slow_run(struct slow *s);
static int seg_go(struct seg *s);

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- requests ------------------------------------------------------------------------ */

static struct vol_io *io_new(struct vol *v, vol_cb cb, void *arg, int result)
{
	struct vol_io *io = malloc(sizeof(*io));

	if (!io)
		return NULL;
	io->v = v;
	io->cb = cb;
	io->arg = arg;
	atomic_init(&io->pending, 1);
	atomic_init(&io->err, 0);
	io->result = result;
	io->write = false;
	atomic_fetch_add(&v->inflight, 1);
	return io;
}

static void io_put(struct vol_io *io, int res)
{
	if (res < 0) {
		int zero = 0;
		atomic_compare_exchange_strong(&io->err, &zero, res);
	}
	if (atomic_fetch_sub(&io->pending, 1) == 1) {
		int err = atomic_load(&io->err);
		struct vol *v = io->v;
		bool write = io->write;
		io->cb(io->arg, err ? err : io->result);
		free(io);
		if (write)
			atomic_fetch_sub(&v->writes_inflight, 1);
		atomic_fetch_sub(&v->inflight, 1);
	}
}

static void seg_done(struct blk_req *req, int res)
{
	struct seg *s = (struct seg *)req;
	struct vol_io *io = s->io;

	if (req->op == BLK_WRITE)
		crash_point("after-data-write");
	if (res >= 0 && s->decrypt) {
		res = crypt_xts(io->v->key, false, req->buf, req->len, req->off);
		if (res >= 0 && s->bounce)
			memcpy(s->dst, s->bounce + s->skip, s->dlen);
	}
	if (s->bounce)
		free(req->buf);
	free(s);
	io_put(io, res < 0 ? res : 0);
}

static int seg_submit(struct vol_io *io, enum blk_op op, int fd, void *buf, size_t len,
		      uint64_t off, int mode, struct seg **segp)
{
	struct seg *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->req.op = op;
	s->req.fd = fd;
	s->req.buf = buf;
	s->req.len = len;
	s->req.off = off;
	s->req.mode = mode;
	s->req.done = seg_done;
	s->io = io;
	if (segp) {
		/* caller finishes setting up and submits */
		*segp = s;
		return 0;
	}
	return seg_go(s);
}

/* Hand a prepared segment to the engine; a read the page cache holds, and a small aligned
 * write, complete here and now (blk_try_now), on the caller's thread. */
static int seg_go(struct seg *s)
{
	int ret;

	atomic_fetch_add(&s->io->pending, 1);
	if (s->req.op == BLK_READ || s->req.op == BLK_WRITE) {
		ret = blk_try_now(s->io->v->eng, &s->req);
		if (ret >= 0) {
			seg_done(&s->req, ret);
			return 0;
		}
	}
	ret = blk_submit(s->io->v->eng, &s->req);
	if (ret) {
		atomic_fetch_sub(&s->io->pending, 1);
		if (s->bounce)
			free(s->req.buf);
		free(s);
	}
	return ret;
}

/* ---- map ----------------------------------------------------------------------------- */

static inline uint8_t map_state(const struct vol *v, uint64_t c)
{
	return v->map[c] & MAP_STATE;
}

/* Set chunk c's map byte; marks its map page dirty when it changes. Under v->lock. */
static void map_set(struct vol *v, uint64_t c, uint8_t val)
{
	if (v->map[c] != val) {
		uint64_t page = c / MAP_PER_PAGE;
		v->map[c] = val;
		v->dirty[page / 64] |= 1ull << (page % 64);
	}
}

static size_t map_pages(uint64_t nchunks)
{
	return (size_t)((nchunks + MAP_PER_PAGE - 1) / MAP_PER_PAGE);
}

/* Copy page's states of map (nchunks long; NULL: all ABSENT) into pg, zero-padded. */
static void map_page_fill(const uint8_t *map, uint64_t nchunks, uint64_t page, uint8_t *pg)
{
	uint64_t start = page * MAP_PER_PAGE;
	size_t n = start < nchunks ? (size_t)MIN((uint64_t)MAP_PER_PAGE, nchunks - start) : 0;

	if (map && n)
		memcpy(pg, map + start, n);
	else
		n = 0;
	memset(pg + n, 0, MAP_DPAGE - n);
}

/* Write page's trailer: its number and the CRC of everything before the CRC. */
static void map_page_seal(uint8_t *pg, uint64_t page)
{
	uint32_t crc;

	memcpy(pg + MAP_PER_PAGE, &page, 8);
	memset(pg + MAP_PER_PAGE + 8, 0, MAP_CRC_OFF - MAP_PER_PAGE - 8);
	crc = (uint32_t)crc32(0, pg, MAP_CRC_OFF);
	memcpy(pg + MAP_CRC_OFF, &crc, 4);
}

/* Check page pg read from disk for a volume of nchunks chunks. 0, or a static reason. */
static const char *map_page_check(const uint8_t *pg, uint64_t page, uint64_t nchunks)
{
	uint64_t start = page * MAP_PER_PAGE, idx;
	size_t n = (size_t)MIN((uint64_t)MAP_PER_PAGE, nchunks - start);
	uint32_t crc;

	memcpy(&crc, pg + MAP_CRC_OFF, 4);
	if (crc != (uint32_t)crc32(0, pg, MAP_CRC_OFF))
		return "checksum mismatch";
	memcpy(&idx, pg + MAP_PER_PAGE, 8);
	if (idx != page)
		return "page number mismatch (a misplaced page)";
	for (size_t i = MAP_PER_PAGE + 8; i < MAP_CRC_OFF; i++)
		if (pg[i])
			return "non-zero reserved trailer bytes";
	for (size_t i = 0; i < MAP_PER_PAGE; i++) {
		if (i >= n ? pg[i] != 0
			   : (pg[i] & ~(MAP_STATE | MAP_CHANGED)) || (pg[i] & MAP_STATE) == 3)
			return "invalid chunk state";
	}
	return NULL;
}

/* Write sealed pages [first, last) of map (NULL: all ABSENT) to fd, then fdatasync it. */
static int map_write_pages(int fd, const uint8_t *map, uint64_t nchunks, uint64_t first,
			   uint64_t last)
{
	uint8_t *buf = malloc((size_t)MAP_BATCH * MAP_DPAGE);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t p = first; p < last && !ret;) {
		uint64_t n = MIN((uint64_t)MAP_BATCH, last - p);
		for (uint64_t i = 0; i < n; i++) {
			map_page_fill(map, nchunks, p + i, buf + i * MAP_DPAGE);
			map_page_seal(buf + i * MAP_DPAGE, p + i);
		}
		for (size_t done = 0, len = (size_t)(n * MAP_DPAGE); done < len;) {
			ssize_t w = pwrite(fd, buf + done, len - done,
					   (off_t)(p * MAP_DPAGE + done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				ret = w < 0 ? -errno : -EIO;
				break;
			}
			done += (size_t)w;
		}
		p += n;
	}
	free(buf);
	if (!ret && fdatasync(fd) < 0)
		ret = -errno;
	return ret;
}

/* Read and verify every page of v's map file into v->map. -EUCLEAN (logged, naming the
 * page) on the first damaged page. */
static int map_read_all(struct vol *v, const char *name)
{
	size_t npages = map_pages(v->nchunks);
	uint8_t *buf = malloc((size_t)MAP_BATCH * MAP_DPAGE);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (size_t p = 0; p < npages && !ret;) {
		size_t n = MIN((size_t)MAP_BATCH, npages - p), len = n * MAP_DPAGE;
		ssize_t r = pread(v->map_fd, buf, len, (off_t)(p * MAP_DPAGE));
		if (r != (ssize_t)len) {
			ret = r < 0 ? -errno : -EUCLEAN;
			break;
		}
		for (size_t i = 0; i < n; i++) {
			const uint8_t *pg = buf + i * MAP_DPAGE;
			uint64_t start = (uint64_t)(p + i) * MAP_PER_PAGE;
			const char *why = map_page_check(pg, p + i, v->nchunks);
			if (why) {
				log_err("volume %s: chunk map page %zu (chunks %llu-%llu) is damaged: "
					"%s",
					name, p + i, (unsigned long long)start,
					(unsigned long long)MIN(start + MAP_PER_PAGE, v->nchunks) - 1,
					why);
				ret = -EUCLEAN;
				break;
			}
			memcpy(v->map + start, pg,
			       (size_t)MIN((uint64_t)MAP_PER_PAGE, v->nchunks - start));
		}
		p += n;
	}
	free(buf);
	return ret;
}

static struct chunk_lock *lock_find(struct vol *v, uint64_t idx)
{
	for (struct chunk_lock *l = v->locks; l; l = l->next)
		if (l->idx == idx)
			return l;
	return NULL;
}

static const uint8_t *base_entry(const struct vol *v, uint64_t c)
{
	if (!v->bm || c >= v->base_nchunks)
		return NULL;
	return manifest_lookup(v->bm, c);
}

static bool snap_pending(const struct vol *v, uint64_t c)
{
	const struct vol_snap *s = v->snap;

	return s && c < s->nchunks && ((s->pending[c / 64] >> (c % 64)) & 1);
}

/* Release chunk idx's lock (under v->lock). Returns the next waiter, which now holds the
 * lock and must be run by the caller after dropping v->lock, or NULL. */
static struct slow *lock_release(struct vol *v, uint64_t idx)
{
	struct chunk_lock *l = lock_find(v, idx);
	struct slow *next = NULL;

	if (l && l->waiters) {
		next = l->waiters;
		l->waiters = next->next;
		if (!l->waiters)
			l->wtail = &l->waiters;
		next->next = NULL;
	} else if (l) {
		struct chunk_lock **pp = &v->locks;
		while (*pp != l)
			pp = &(*pp)->next;
		*pp = l->next;
		free(l);
	}
	pthread_cond_broadcast(&v->cond);
	return next;
}

/* Take chunk idx's lock for a holder that is not a slow write (hydration, the snapshot
 * scan). false when it is taken. Under v->lock. */
static bool lock_try(struct vol *v, uint64_t idx)
{
	struct chunk_lock *lk;

	if (lock_find(v, idx))
		return false;
	lk = calloc(1, sizeof(*lk));
	if (!lk)
		return false;
	lk->idx = idx;
	lk->wtail = &lk->waiters;
	lk->next = v->locks;
	v->locks = lk;
	return true;
}

/* ---- header -------------------------------------------------------------------------- */

static int hdr_write(struct vol *v)
{
	uint8_t buf[HDR_SIZE] = {0};

	memcpy(buf, &v->hdr, sizeof(v->hdr));
	SHA256(buf, HDR_SUM_OFF, buf + HDR_SUM_OFF);
	return file_write_atomic(v->dirfd, "header", buf, sizeof(buf), 0600);
}

static int hdr_read(int dirfd, const char *name, struct vol_hdr *h)
{
	uint8_t sum[32];
	size_t len;
	void *buf;
	int ret;

	ret = file_read_all(dirfd, "header", &buf, &len);
	if (ret)
		return ret;
	ret = -EUCLEAN;
	if (len != HDR_SIZE)
		goto out_free;
	SHA256(buf, HDR_SUM_OFF, sum);
	if (memcmp(sum, (uint8_t *)buf + HDR_SUM_OFF, 32))
		goto out_free;
	memcpy(h, buf, sizeof(*h));
	if (memcmp(h->magic, HDR_MAGIC, 8))
		goto out_free;
	if (h->version != HDR_VERSION) {
		log_err("volume %s has on-disk format version %u; this build serves version %u "
			"only (chunk map pages with checksums) and has no converter",
			name, h->version, HDR_VERSION);
		goto out_free;
	}
	if (h->chunk_size < VOL_SECTOR || (h->chunk_size & (h->chunk_size - 1)) ||
	    h->chunk_size > (64u << 20) || h->size % h->chunk_size || !h->size ||
	    h->size > (1ull << 50))
		goto out_free;
	if ((h->flags & HDR_F_WRAPPED) && (h->flags & HDR_F_EPHEMERAL))
		goto out_free;
	if (h->flags & ~(HDR_F_WRAPPED | HDR_F_EPHEMERAL | HDR_F_CLEAN | HDR_F_BASE))
		goto out_free;
	h->base[ID_MAX - 1] = 0;
	if ((h->flags & HDR_F_BASE) && !id_valid("snap", h->base))
		goto out_free;
	ret = 0;
out_free:
	free(buf);
	return ret;
}

/* ---- create / open / close ----------------------------------------------------------- */

int vol_create(int parent, const char *name, const struct vol_params *p,
	       const struct vol_keys *keys)
{
	uint32_t cs = p->chunk_size ? p->chunk_size : VOL_DEFAULT_CHUNK;
	struct vol v = {0};
	char tmp[256];
	int fd, ret;

	if (cs < VOL_SECTOR || (cs & (cs - 1)) || !p->size || p->size % cs)
		return -EINVAL;
	if (snprintf(tmp, sizeof(tmp), ".%s.tmp", name) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	if (!faccessat(parent, name, F_OK, AT_SYMLINK_NOFOLLOW))
		return -EEXIST;
	file_remove_tree(parent, tmp);
	if (mkdirat(parent, tmp, 0700) < 0)
		return -errno;
	v.dirfd = openat(parent, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (v.dirfd < 0) {
		ret = -errno;
		goto out_rmdir;
	}
	memcpy(v.hdr.magic, HDR_MAGIC, 8);
	v.hdr.version = HDR_VERSION;
	v.hdr.size = p->size;
	v.hdr.chunk_size = cs;
	v.hdr.generation = 1;
	v.hdr.flags = HDR_F_CLEAN;
	if (p->base_snap) {
		if (!id_valid("snap", p->base_snap)) {
			ret = -EINVAL;
			goto out_close;
		}
		snprintf(v.hdr.base, sizeof(v.hdr.base), "%s", p->base_snap);
		v.hdr.flags |= HDR_F_BASE;
	}
	if (p->crypt == VOL_CRYPT_WRAPPED && p->wrapped_key) {
		/* restored from an encrypted snapshot: keep its key, checking it unwraps */
		uint8_t key[VOL_DATA_KEY_LEN];
		ret = keys && keys->master ? crypt_unwrap(keys->master, p->wrapped_key, key) : -ENOKEY;
		secure_zero(key, sizeof(key));
		if (ret)
			goto out_close;
		memcpy(v.hdr.wrapped_key, p->wrapped_key, CRYPT_WRAPPED_LEN);
		v.hdr.flags |= HDR_F_WRAPPED;
	} else if (p->crypt == VOL_CRYPT_WRAPPED) {
		uint8_t key[VOL_DATA_KEY_LEN];
		if (!keys || !keys->master) {
			ret = -ENOKEY;
			goto out_close;
		}
		do {
			ret = rand_bytes(key, sizeof(key));
		} while (!ret && !memcmp(key, key + 32, 32));
		if (!ret)
			ret = crypt_wrap(keys->master, key, v.hdr.wrapped_key);
		secure_zero(key, sizeof(key));
		if (ret)
			goto out_close;
		v.hdr.flags |= HDR_F_WRAPPED;
	} else if (p->crypt == VOL_CRYPT_EPHEMERAL) {
		v.hdr.flags |= HDR_F_EPHEMERAL;
	}
	ret = hdr_write(&v);
	if (ret)
		goto out_close;
	static const char *const files[] = {"data", "map"};
	for (int i = 0; i < 2; i++) {
		uint64_t len = i == 0 ? p->size : map_pages(p->size / cs) * (uint64_t)MAP_DPAGE;
		fd = openat(v.dirfd, files[i], O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    0600);
		if (fd < 0) {
			ret = -errno;
			goto out_close;
		}
		if (ftruncate(fd, (off_t)len) < 0)
			ret = -errno;
		else if (i == 1) /* every map page sealed: all ABSENT */
			ret = map_write_pages(fd, NULL, p->size / cs, 0, map_pages(p->size / cs));
		if (!ret && fsync(fd) < 0)
			ret = -errno;
		close(fd);
		if (ret)
			goto out_close;
	}
	if (fsync(v.dirfd) < 0) {
		ret = -errno;
		goto out_close;
	}
	close(v.dirfd);
	if (renameat(parent, tmp, parent, name) < 0) {
		ret = -errno;
		goto out_rmdir;
	}
	fsync(parent);
	return 0;
out_close:
	close(v.dirfd);
out_rmdir:
	file_remove_tree(parent, tmp);
	return ret;
}

/* After an unclean shutdown: make every chunk that is not PRESENT (ABSENT or ZERO) a hole
 * again and mark PRESENT ones CHANGED (see the crash protocol above). A write that reached
 * the data file but never a flushed map page was not acknowledged, so dropping it is
 * allowed; keeping it is not: under a ZERO chunk a later partial write would make the chunk
 * PRESENT and bring the never-acknowledged bytes around it back. */
static int vol_recover(struct vol *v)
{
	for (uint64_t c = 0; c < v->nchunks; c++) {
		if (map_state(v, c) == MAP_PRESENT) {
			/* A PRESENT chunk that is all hole lost its data to an unflushed whole-chunk
			 * discard (the only way to punch one; every write leaves complete data):
			 * it is ZERO, or an encrypted one would decrypt the hole into noise. */
			off_t o = (off_t)(c << v->chunk_shift);
			off_t d = v->simple ? o : lseek(v->data_fd, o, SEEK_DATA);
			if (d < 0 && errno != ENXIO)
				return -errno;
			bool hole = d < 0 || d >= o + (off_t)v->chunk_size;
			map_set(v, c, (hole ? MAP_ZERO : v->map[c] & MAP_STATE) | MAP_CHANGED);
			continue;
		}
		uint64_t run = c;
		while (run + 1 < v->nchunks && map_state(v, run + 1) != MAP_PRESENT)
			run++;
		off_t o = (off_t)(c << v->chunk_shift);
		off_t e = (off_t)((run + 1) << v->chunk_shift);
		off_t d = lseek(v->data_fd, o, SEEK_DATA);
		if (d >= 0 && d < e &&
		    fallocate(v->data_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, e - o) < 0)
			return -errno;
		if (d < 0 && errno != ENXIO)
			return -errno;
		c = run;
	}
	if (fdatasync(v->data_fd) < 0)
		return -errno;
	return 0;
}

static int map_write_all(struct vol *v)
{
	int ret = map_write_pages(v->map_fd, v->map, v->nchunks, 0, map_pages(v->nchunks));

	if (!ret)
		memset(v->dirty, 0, ((map_pages(v->nchunks) + 63) / 64) * 8);
	return ret;
}

int vol_read_base_id(int parent, const char *name, char out[ID_MAX])
{
	struct vol_hdr h;
	int dfd, ret;

	dfd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	ret = hdr_read(dfd, name, &h);
	close(dfd);
	if (ret)
		return ret;
	snprintf(out, ID_MAX, "%s", (h.flags & HDR_F_BASE) ? h.base : "");
	return 0;
}

int vol_open(int parent, const char *name, struct blk_engine *eng, const struct vol_keys *keys,
	     const struct vol_base *base, struct vol **out)
{
	struct vol *v = calloc(1, sizeof(*v));
	struct stat st;
	int ret;

	if (!v)
		return -ENOMEM;
	v->data_fd = v->map_fd = -1;
	v->eng = eng;
	pthread_mutex_init(&v->lock, NULL);
	pthread_cond_init(&v->cond, NULL);
	v->qtail = &v->queued;
	v->htail = &v->held;
	v->dirfd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (v->dirfd < 0) {
		ret = -errno;
		goto out_free;
	}
	ret = hdr_read(v->dirfd, name, &v->hdr);
	if (ret)
		goto out_close;
	v->chunk_size = v->hdr.chunk_size;
	v->chunk_shift = (unsigned)__builtin_ctz(v->chunk_size);
	v->nchunks = v->hdr.size >> v->chunk_shift;
	atomic_init(&v->size, v->hdr.size);
	if (v->hdr.flags & HDR_F_WRAPPED) {
		ret = keys && keys->master ? crypt_unwrap(keys->master, v->hdr.wrapped_key, v->key)
					   : -ENOKEY;
		if (ret)
			goto out_close;
		v->encrypted = true;
	} else if (v->hdr.flags & HDR_F_EPHEMERAL) {
		if (!keys || !keys->ephemeral) {
			ret = -ENOKEY;
			goto out_close;
		}
		memcpy(v->key, keys->ephemeral, VOL_DATA_KEY_LEN);
		v->encrypted = true;
	}
	if (v->hdr.flags & HDR_F_BASE) {
		const struct manifest *m = base ? base->m : NULL;
		if (!m || !base->store) {
			ret = -ENODATA; /* never serve zeros in place of the snapshot's data */
			goto out_close;
		}
		if (m->chunk_size != v->hdr.chunk_size || m->volume_size > v->hdr.size) {
			ret = -EUCLEAN;
			goto out_close;
		}
		v->store = base->store;
		v->bm = m;
		v->base_nchunks = m->volume_size / m->chunk_size;
		v->has_base = true;
	}
	v->simple = !v->encrypted && !v->has_base;
	v->data_fd = openat(v->dirfd, "data", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	v->map_fd = openat(v->dirfd, "map", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (v->data_fd < 0 || v->map_fd < 0) {
		ret = -errno;
		goto out_close;
	}
	ret = -EUCLEAN;
	if (fstat(v->data_fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < v->hdr.size)
		goto out_close;
	if (fstat(v->map_fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size < map_pages(v->nchunks) * (uint64_t)MAP_DPAGE ||
	    st.st_size % MAP_DPAGE) {
		log_err("volume %s: chunk map file has %lld bytes, %llu expected", name,
			(long long)st.st_size,
			(unsigned long long)map_pages(v->nchunks) * MAP_DPAGE);
		goto out_close;
	}
	v->map = malloc(v->nchunks);
	v->dirty = calloc((map_pages(v->nchunks) + 63) / 64, 8);
	if (!v->map || !v->dirty) {
		ret = -ENOMEM;
		goto out_close;
	}
	ret = map_read_all(v, name);
	if (ret)
		goto out_close;
	if (!(v->hdr.flags & HDR_F_CLEAN)) {
		log_warn("volume %s was not closed cleanly; recovering", name);
		ret = vol_recover(v);
		if (!ret)
			ret = map_write_all(v);
		if (ret)
			goto out_close;
	}
	v->hdr.flags &= ~HDR_F_CLEAN;
	ret = hdr_write(v);
	if (ret)
		goto out_close;
	*out = v;
	return 0;
out_close:
	if (v->data_fd >= 0)
		close(v->data_fd);
	if (v->map_fd >= 0)
		close(v->map_fd);
	close(v->dirfd);
out_free:
	free(v->map);
	free(v->dirty);
	pthread_cond_destroy(&v->cond);
	pthread_mutex_destroy(&v->lock);
	secure_zero(v->key, sizeof(v->key));
	free(v);
	return ret;
}

int vol_close(struct vol *v)
{
	int ret;

	if (!v)
		return 0;
	while (atomic_load(&v->inflight))
		usleep(1000);
	ret = vol_fsync(v);
	if (!ret) {
		v->hdr.flags |= HDR_F_CLEAN;
		ret = hdr_write(v);
	}
	close(v->data_fd);
	close(v->map_fd);
	close(v->dirfd);
	free(v->map);
	free(v->dirty);
	pthread_cond_destroy(&v->cond);
	pthread_mutex_destroy(&v->lock);
	secure_zero(v->key, sizeof(v->key));
	free(v);
	return ret;
}

int vol_destroy(int parent, const char *name)
{
	return file_remove_tree(parent, name);
}

uint64_t vol_size(const struct vol *v)
{
	return atomic_load(&v->size);
}

bool vol_encrypted(const struct vol *v)
{
	return v->encrypted;
}

static bool range_ok(struct vol *v, uint64_t off, uint64_t len)
{
	uint64_t size = atomic_load(&v->size);

	return off <= size && len <= size - off;
}

/* ---- base snapshot reads and hydration ------------------------------------------------ */

static void base_rd_done(struct blk_req *req, int res)
{
	struct base_rd *b = (struct base_rd *)req;

	close(req->fd);
	atomic_fetch_add(&b->v->base_reads, 1);
	if (res >= 0 && !store_verify(req->buf, req->len, b->id)) {
		char hex[OBJ_HEX_LEN + 1];
		obj_id_hex(b->id, hex);
		log_err("chunk %llu: stored object %s does not match its hash; failing the read",
			(unsigned long long)b->idx, hex);
		res = -EBADMSG;
	}
	b->done(b, res);
}

/* Read chunk idx's base object (id) into buf (one chunk); b->done runs on completion. */
static int base_rd_start(struct base_rd *b, struct vol *v, uint64_t idx, const uint8_t *id,
			 void *buf)
{
	uint64_t off = 0;
	int fd = store_open_object(v->store, id, &off), ret;

	if (fd < 0) {
		char hex[OBJ_HEX_LEN + 1];
		obj_id_hex(id, hex);
		log_err("chunk %llu: stored object %s cannot be opened: %s",
			(unsigned long long)idx, hex, strerror(-fd));
		return -EIO;
	}
	b->v = v;
	b->idx = idx;
	memcpy(b->id, id, OBJ_ID_LEN);
	b->req = (struct blk_req){
		.op = BLK_READ, .fd = fd, .buf = buf, .len = v->chunk_size, .off = off,
		.done = base_rd_done};
	ret = blk_submit(v->eng, &b->req);
	if (ret)
		close(fd);
	return ret;
}

struct hydration {
	struct blk_req req;
	struct vol *v;
	uint64_t idx;
};

static void hydrate_done(struct blk_req *req, int res)
{
	struct hydration *h = (struct hydration *)req;
	struct vol *v = h->v;
	struct slow *next;

	pthread_mutex_lock(&v->lock);
	if (res >= 0 && h->idx < v->nchunks && map_state(v, h->idx) == MAP_ABSENT)
		map_set(v, h->idx, MAP_PRESENT | (v->map[h->idx] & MAP_CHANGED));
	next = lock_release(v, h->idx);
	pthread_mutex_unlock(&v->lock);
	free(req->buf);
	free(h);
	if (next)
		slow_run(next);
	atomic_fetch_sub(&v->inflight, 1);
}

/* Copy a chunk just read from the base into the data file (first-touch hydration), unless
 * someone holds the chunk. Takes ownership of cbuf. */
static void hydrate(struct vol *v, uint64_t idx, uint8_t *cbuf)
{
	struct hydration *h;
	bool ok;

	pthread_mutex_lock(&v->lock);
	ok = idx < v->nchunks && map_state(v, idx) == MAP_ABSENT && lock_try(v, idx);
	pthread_mutex_unlock(&v->lock);
	if (!ok || !(h = calloc(1, sizeof(*h)))) {
		if (ok) {
			pthread_mutex_lock(&v->lock);
			struct slow *next = lock_release(v, idx);
			pthread_mutex_unlock(&v->lock);
			if (next)
				slow_run(next);
		}
		free(cbuf);
		return;
	}
	atomic_fetch_add(&v->inflight, 1);
	h->v = v;
	h->idx = idx;
	h->req = (struct blk_req){.op = BLK_WRITE,
				  .fd = v->data_fd,
				  .buf = cbuf,
				  .len = v->chunk_size,
				  .off = idx << v->chunk_shift,
				  .done = hydrate_done};
	if (blk_submit(v->eng, &h->req))
		hydrate_done(&h->req, -EIO);
}

/* A read of part of a chunk that comes from the base. */
struct base_seg {
	struct base_rd b;
	struct vol_io *io;
	uint8_t *cbuf, *dst;
	size_t skip, dlen;
};

static void base_seg_done(struct base_rd *b, int res)
{
	struct base_seg *bs = (struct base_seg *)b;
	struct vol *v = b->v;

	if (res >= 0 && v->encrypted) {
		uint8_t *tmp = malloc(v->chunk_size);
		res = tmp ? 0 : -ENOMEM;
		if (tmp) {
			memcpy(tmp, bs->cbuf, v->chunk_size);
			res = crypt_xts(v->key, false, tmp, v->chunk_size, b->idx << v->chunk_shift);
			memcpy(bs->dst, tmp + bs->skip, bs->dlen);
			free(tmp);
		}
	} else if (res >= 0) {
		memcpy(bs->dst, bs->cbuf + bs->skip, bs->dlen);
	}
	if (res >= 0)
		hydrate(v, b->idx, bs->cbuf);
	else
		free(bs->cbuf);
	io_put(bs->io, res < 0 ? res : 0);
	free(bs);
}

static int read_base(struct vol_io *io, uint64_t c, const uint8_t *id, uint8_t *dst, size_t skip,
		     size_t len)
{
	struct vol *v = io->v;
	struct base_seg *bs = calloc(1, sizeof(*bs));
	int ret;

	if (!bs || posix_memalign((void **)&bs->cbuf, VOL_SECTOR, v->chunk_size)) {
		free(bs);
		return -ENOMEM;
	}
	bs->io = io;
	bs->dst = dst;
	bs->skip = skip;
	bs->dlen = len;
	bs->b.done = base_seg_done;
	atomic_fetch_add(&io->pending, 1);
	ret = base_rd_start(&bs->b, v, c, id, bs->cbuf);
	if (ret) {
		atomic_fetch_sub(&io->pending, 1);
		free(bs->cbuf);
		free(bs);
	}
	return ret;
}

/* ---- data-file writes ---------------------------------------------------------------- */

/*
 * Buffered writes go to the data file in pieces of at most WRITE_PIECE bytes, split at
 * WRITE_PIECE boundaries. ext4 (6.16+) sizes a page-cache folio after the write that
 * creates it, and every later 4 KiB write into a large folio walks all of its buffer heads
 * (ext4_block_write_begin, an atomic bit set and often a cache miss each): after a 1 MiB
 * sequential fill in one piece, 4 KiB random writes ran at half speed, 74% of the time
 * there (perf, fio psync on the host file system). With 256 KiB pieces the walk was still
 * 39% of the daemon's CPU at rw4k QD32 via loop after the bench's fill (64 buffer heads a
 * write). 32 KiB pieces (8 buffer heads) cut the daemon's CPU per 4 KiB write from
 * 11.5-12.1 to 7.7-7.8 us and raised rw4k QD32 via loop by 1.36-1.37x (median of per-round
 * ratios, two runs of bench/ab.py on a quiet host); rr4k and 1 MiB reads did not move
 * (1.04, 1.01). Done at once on the FUSE thread, 32 pieces of a 1 MiB write cost 1 MiB
 * sequential writes 0.61-0.86x of their rate; queued to io_uring as 32 io-wq writes, 0.59x.
 * But a piece sizes only the folios a write creates: a write into chunks that were all
 * PRESENT before overwrites pages that are usually cached already, with the sizes its
 * first writer gave them. So such an overwrite longer than BLK_WRITE_NOW_MAX goes in
 * OVERWRITE_PIECE pieces through the engine (off the FUSE thread, as before), and only
 * writes that create data (into ABSENT or ZERO chunks: holes, nothing cached) use
 * WRITE_PIECE: after the bench's fill, sw1m 1.07x and rw4k 1.46x of 256 KiB pieces
 * everywhere, rr4k 0.94x (bench/ab.py, 3 rounds). Overwrites of chunks whose pages were
 * evicted, and cold reads (readahead), may still create large folios; not handled.
 * 16 KiB pieces gained little more on writes (1.49x) and cost cached reads (0.94x). An
 * earlier A/B on a host busy with stuck I/O (load 3-9) had seen rr4k -10 to -14% with
 * 32 KiB pieces; the quiet reruns saw 0.94-1.04.
 */
#define WRITE_PIECE (32u << 10)
#define OVERWRITE_PIECE (256u << 10)
static int data_write(struct vol_io *io, uint8_t *buf, uint64_t len, uint64_t off,
		      bool overwrite)
{
	uint64_t piece = overwrite && len > BLK_WRITE_NOW_MAX ? OVERWRITE_PIECE : WRITE_PIECE;
	int ret = 0;

	while (len && !ret) {
		uint64_t n = MIN(len, piece - (off & (piece - 1)));
		ret = seg_submit(io, BLK_WRITE, io->v->data_fd, buf, n, off, 0, NULL);
		buf += n;
		off += n;
		len -= n;
	}
	return ret;
}

/* ---- read ---------------------------------------------------------------------------- */

/* Queue a read of [off, off+len) of the data file into dst, decrypting if needed. */
static int read_data(struct vol_io *io, uint8_t *dst, size_t len, uint64_t off)
{
	struct vol *v = io->v;
	uint64_t a, b;
	struct seg *s;
	int ret;

	if (!v->encrypted)
		return seg_submit(io, BLK_READ, v->data_fd, dst, len, off, 0, NULL);
	a = off & ~(uint64_t)(VOL_SECTOR - 1);
	b = (off + len + VOL_SECTOR - 1) & ~(uint64_t)(VOL_SECTOR - 1);
	if (a == off && b == off + len) {
		ret = seg_submit(io, BLK_READ, v->data_fd, dst, len, off, 0, &s);
		if (ret)
			return ret;
	} else {
		uint8_t *bounce;
		if (posix_memalign((void **)&bounce, VOL_SECTOR, b - a))
			return -ENOMEM;
		ret = seg_submit(io, BLK_READ, v->data_fd, bounce, b - a, a, 0, &s);
		if (ret) {
			free(bounce);
			return ret;
		}
		s->bounce = bounce;
		s->dst = dst;
		s->skip = off - a;
		s->dlen = len;
	}
	s->decrypt = true;
	return seg_go(s);
}

/* Chunks planned per lock hold: bounds the run arrays below. */
#define PLAN_CHUNKS 16

void vol_read(struct vol *v, void *buf, size_t len, uint64_t off, vol_cb cb, void *arg)
{
	struct vol_io *io;
	uint64_t end = off + len;
	int ret = 0;

	if (!range_ok(v, off, len))
		return cb(arg, -EINVAL);
	if (!len)
		return cb(arg, 0);
	io = io_new(v, cb, arg, (int)len);
	if (!io)
		return cb(arg, -ENOMEM);
	/* Piece by piece: gather runs of PRESENT chunks under the lock and zero-fill the
	 * rest (never-written and discarded chunks cost no I/O), then submit the runs. */
	for (uint64_t p = off; p < end && !ret;) {
		uint64_t pend = MIN(end, ((p >> v->chunk_shift) + PLAN_CHUNKS) << v->chunk_shift);
		struct {
			uint64_t off, len;
		} runs[PLAN_CHUNKS];
		struct {
			uint64_t c, off, len;
			const uint8_t *id;
		} bases[PLAN_CHUNKS];
		int n = 0, nb = 0;

		pthread_mutex_lock(&v->lock);
		for (uint64_t cs = p; cs < pend;) {
			uint64_t c = cs >> v->chunk_shift;
			uint64_t ce = MIN(pend, (c + 1) << v->chunk_shift);
			uint8_t st = map_state(v, c);
			const uint8_t *id = st == MAP_ABSENT ? base_entry(v, c) : NULL;
			if (id) {
				bases[nb].c = c;
				bases[nb].off = cs;
				bases[nb].len = ce - cs;
				bases[nb++].id = id;
			} else if (st != MAP_PRESENT) {
				memset((uint8_t *)buf + (cs - off), 0, ce - cs);
			} else if (n && runs[n - 1].off + runs[n - 1].len == cs) {
				runs[n - 1].len += ce - cs;
			} else {
				runs[n].off = cs;
				runs[n++].len = ce - cs;
			}
			cs = ce;
		}
		pthread_mutex_unlock(&v->lock);
		for (int i = 0; i < n && !ret; i++)
			ret = read_data(io, (uint8_t *)buf + (runs[i].off - off), runs[i].len,
					runs[i].off);
		for (int i = 0; i < nb && !ret; i++)
			ret = read_base(io, bases[i].c, bases[i].id, (uint8_t *)buf + (bases[i].off - off),
					bases[i].off - (bases[i].c << v->chunk_shift), bases[i].len);
		p = pend;
	}
	io_put(io, ret);
}

/* ---- write --------------------------------------------------------------------------- */

static void slow_finish(struct slow *s, int res)
{
	struct vol *v = s->v;
	struct slow *next;

	pthread_mutex_lock(&v->lock);
	if (res >= 0 && s->idx < v->nchunks)
		map_set(v, s->idx, MAP_PRESENT | MAP_CHANGED);
	next = lock_release(v, s->idx);
	pthread_mutex_unlock(&v->lock);
	free(s->cbuf);
	io_put(s->io, res < 0 ? res : 0);
	free(s);
	if (next)
		slow_run(next);
}

static void slow_write_done(struct blk_req *req, int res)
{
	crash_point("after-data-write");
	slow_finish((struct slow *)req, res);
}

/* Read or write chunk bytes [a, b) of s's chunk through cbuf. */
static void slow_submit(struct slow *s, enum blk_op op, blk_done_fn done)
{
	struct vol *v = s->v;

	s->req = (struct blk_req){
		.op = op,
		.fd = v->data_fd,
		.buf = s->cbuf,
		.len = s->b - s->a,
		.off = (s->idx << v->chunk_shift) + s->a,
		.done = done,
	};
	int ret = blk_submit(v->eng, &s->req);

	if (ret)
		slow_finish(s, ret);
}

/*
 * A chunk fill goes to the data file in FILL_PIECE writes, done at once on this thread
 * (blk_try_now) while the engine takes them: ext4 (6.16+) sizes a new page-cache folio
 * after the write that creates it (see WRITE_PIECE), and a fill in one chunk-sized write
 * left every filled chunk in one 64 KiB folio, so each later 4 KiB write into it walked 16
 * buffer heads. On an encrypted volume every first write to a chunk fills it, and 4 KiB
 * random writes after the bench's preconditioning ran at 0.69-0.91x of the plain volume's,
 * which fills nothing (its holes read as zeros); the daemon spent 45% more CPU per write,
 * ext4_block_write_begin alone 6.6% of the samples against 1.7% (perf, bench rw4k QD32 via
 * loop). With 16 KiB pieces the bench's 4 KiB writes ran at 0.91-1.03x in a quiet run (the
 * 2 shared cores make single runs noisy). 4 KiB pieces ran as fast in steady state but cost
 * fresh writes (16 pwrites per fill); pieces submitted to io_uring, each one an io-wq write,
 * did no better in steady state and worse on fresh writes (15k IOPS against 24k, one run).
 * What try_now does not take is submitted as one request. Completing here, on the
 * caller's thread, makes slow_finish start the chunk's next queued writer from inside this
 * call; those are not fills (the chunk is PRESENT now, except past a shrink), so they go
 * through the engine and the recursion stops there.
 */
#define FILL_PIECE (16u << 10)

/* Write chunk bytes [a, b) from cbuf: a fill in FILL_PIECE pieces while try_now takes them,
 * the rest through the engine. */
static void slow_write_out(struct slow *s)
{
	struct vol *v = s->v;
	uint32_t p = s->a;
	int ret;

	while (s->fill && p < s->b) {
		uint32_t n = MIN(FILL_PIECE, s->b - p);
		struct blk_req r = {
			.op = BLK_WRITE,
			.fd = v->data_fd,
			.buf = s->cbuf + (p - s->a),
			.len = n,
			.off = (s->idx << v->chunk_shift) + p,
			.done = slow_write_done,
		};
		if (blk_try_now(v->eng, &r) != (int)n)
			break;
		p += n;
	}
	if (p == s->b)
		return slow_write_done(&s->req, 0);
	s->req = (struct blk_req){
		.op = BLK_WRITE,
		.fd = v->data_fd,
		.buf = s->cbuf + (p - s->a),
		.len = s->b - p,
		.off = (s->idx << v->chunk_shift) + p,
		.done = slow_write_done,
	};
	ret = blk_submit(v->eng, &s->req);
	if (ret)
		slow_finish(s, ret);
}

/* Merge the new bytes into cbuf (which holds chunk bytes [a, b)), encrypt, write back. */
static void slow_write(struct slow *s)
{
	struct vol *v = s->v;
	uint8_t *dst = s->cbuf + (s->o - s->a);
	int ret;

	if (s->src)
		memcpy(dst, s->src, s->l);
	else
		memset(dst, 0, s->l);
	if (v->encrypted) {
		ret = crypt_xts(v->key, true, s->cbuf, s->b - s->a,
				(s->idx << v->chunk_shift) + s->a);
		if (ret)
			return slow_finish(s, ret);
	}
	slow_write_out(s);
}

static void slow_read_done(struct blk_req *req, int res)
{
	struct slow *s = (struct slow *)req;

	if (res >= 0 && s->v->encrypted)
		res = crypt_xts(s->v->key, false, s->cbuf, s->b - s->a,
				(s->idx << s->v->chunk_shift) + s->a);
	if (res < 0)
		return slow_finish(s, res);
	slow_write(s);
}

static void slow_base_done(struct base_rd *b, int res)
{
	struct slow *s = container_of(b, struct slow, brd);

	/* the object holds the chunk as stored: decrypt like a data-file read */
	slow_read_done(&s->req, res);
}

/* Runs with the chunk lock held by s. A chunk still to be copied by a snapshot parks the
 * write until the snapshot has its point-in-time bytes (copy-before-write). */
static void slow_run(struct slow *s)
{
	struct vol *v = s->v;
	const uint8_t *id = NULL;
	uint8_t st;
	bool need_read = false;
	int ret;

	pthread_mutex_lock(&v->lock);
	if (snap_pending(v, s->idx)) {
		*v->snap->ptail = s;
		v->snap->ptail = &s->next;
		s->next = NULL;
		pthread_cond_broadcast(&v->cond);
		pthread_mutex_unlock(&v->lock);
		return;
	}
	st = s->idx < v->nchunks ? map_state(v, s->idx) : MAP_ZERO;
	if (st == MAP_ABSENT)
		id = base_entry(v, s->idx);
	pthread_mutex_unlock(&v->lock);
	if (st == MAP_PRESENT || v->simple) {
		/* a simple volume's holes read as zeros: no fill needed */
		if (v->encrypted) {
			s->a = s->o & ~(VOL_SECTOR - 1);
			s->b = (s->o + s->l + VOL_SECTOR - 1) & ~(VOL_SECTOR - 1);
			need_read = s->a != s->o || s->b != s->o + s->l;
		} else {
			s->a = s->o;
			s->b = s->o + s->l;
		}
	} else {
		/* ABSENT or ZERO: fill the whole chunk */
		s->a = 0;
		s->b = v->chunk_size;
		s->fill = true;
	}
	if (posix_memalign((void **)&s->cbuf, VOL_SECTOR, s->b - s->a))
		return slow_finish(s, -ENOMEM);
	if (id) {
		s->req.off = s->idx << v->chunk_shift; /* for the decryption tweak */
		s->brd.done = slow_base_done;
		ret = base_rd_start(&s->brd, v, s->idx, id, s->cbuf);
		if (ret)
			slow_finish(s, ret);
		return;
	}
	if (!need_read) {
		if (st != MAP_PRESENT)
			memset(s->cbuf, 0, s->b - s->a); /* no base data: the old chunk is zeros */
		return slow_write(s);
	}
	slow_submit(s, BLK_READ, slow_read_done);
}

/* Create a slow write for chunk c and take (or queue for) its lock. Under v->lock.
 * Returns the slow write to run now, or NULL when it was queued (or on ENOMEM: *err). */
static struct slow *slow_new(struct vol_io *io, uint64_t c, const uint8_t *src, uint32_t o,
			     uint32_t l, int *err)
{
	struct vol *v = io->v;
	struct slow *s = calloc(1, sizeof(*s));
	struct chunk_lock *lk;

	if (!s) {
		*err = -ENOMEM;
		return NULL;
	}
	s->io = io;
	s->v = v;
	s->idx = c;
	s->src = src;
	s->o = o;
	s->l = l;
	atomic_fetch_add(&io->pending, 1);
	lk = lock_find(v, c);
	if (lk) {
		*lk->wtail = s;
		lk->wtail = &s->next;
		return NULL;
	}
	lk = calloc(1, sizeof(*lk));
	if (!lk) {
		atomic_fetch_sub(&io->pending, 1);
		free(s);
		*err = -ENOMEM;
		return NULL;
	}
	lk->idx = c;
	lk->wtail = &lk->waiters;
	lk->next = v->locks;
	v->locks = lk;
	return s;
}

/*
 * The chunk walk shared by writes and discards of non-simple volumes: each chunk either
 * joins a fast run (returned in runs[]) or becomes a slow write (returned in slows).
 * src == NULL means zeros (discard). [off, off+len) spans at most PLAN_CHUNKS chunks, so
 * runs[] (PLAN_CHUNKS entries) cannot overflow. Under v->lock. On error, the slow writes
 * already planned are still returned and must be run.
 */
struct run {
	uint64_t off, len;
	bool punch;
	bool creates; /* a write that covers a chunk that was not PRESENT (data_write) */
};

static int plan_chunks(struct vol_io *io, const uint8_t *src, uint64_t off, uint64_t len,
		       struct run *runs, int *nruns, struct slow **slows)
{
	struct vol *v = io->v;
	uint64_t end = off + len, last = (end - 1) >> v->chunk_shift;
	int n = 0, err = 0;

	for (uint64_t c = off >> v->chunk_shift; c <= last; c++) {
		uint64_t cs = MAX(off, c << v->chunk_shift);
		uint64_t ce = MIN(end, (c + 1) << v->chunk_shift);
		uint8_t st = map_state(v, c);
		bool whole = ce - cs == v->chunk_size;
		bool busy = (v->locks && lock_find(v, c)) || snap_pending(v, c);
		bool fast, punch = false;

		if (!src) {
			/* discard: nothing to do where the chunk already reads as zeros */
			if (!busy && (st == MAP_ZERO || (st == MAP_ABSENT && !base_entry(v, c)))) {
				map_set(v, c, v->map[c] | MAP_CHANGED);
				continue;
			}
			fast = !busy && whole;
			punch = true;
		} else {
			/* simple volumes (here while a snapshot runs): a hole reads as zeros */
			fast = !busy && (st == MAP_PRESENT || v->simple) &&
			       (!v->encrypted || ((cs | ce) & (VOL_SECTOR - 1)) == 0);
		}
		if (fast) {
			bool creates = st != MAP_PRESENT;
			map_set(v, c, (punch ? MAP_ZERO : MAP_PRESENT) | MAP_CHANGED);
			if (n && runs[n - 1].off + runs[n - 1].len == cs && runs[n - 1].punch == punch) {
				runs[n - 1].len += ce - cs;
				runs[n - 1].creates |= creates;
				continue;
			}
			runs[n++] = (struct run){cs, ce - cs, punch, creates};
			continue;
		}
		struct slow *s = slow_new(io, c, src ? src + (cs - off) : NULL,
					  (uint32_t)(cs - (c << v->chunk_shift)), (uint32_t)(ce - cs),
					  &err);
		if (err)
			break;
		if (s) {
			s->next = *slows;
			*slows = s;
		}
	}
	*nruns = n;
	return err;
}

/* Submit planned runs and start the slow writes. */
static int run_plan(struct vol_io *io, uint8_t *buf, uint64_t off, struct run *runs, int nruns,
		    struct slow *slows)
{
	struct vol *v = io->v;
	int ret = 0;

	for (int i = 0; i < nruns && !ret; i++) {
		if (runs[i].punch) {
			ret = seg_submit(io, BLK_FALLOC, v->data_fd, NULL, runs[i].len, runs[i].off,
					 FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, NULL);
			continue;
		}
		uint8_t *p = buf + (runs[i].off - off);
		if (v->encrypted)
			ret = crypt_xts(v->key, true, p, runs[i].len, runs[i].off);
		if (!ret)
			ret = data_write(io, p, runs[i].len, runs[i].off, !runs[i].creates);
	}
	/* slow writes already count in io->pending: run them even after an error */
	while (slows) {
		struct slow *s = slows;
		slows = s->next;
		s->next = NULL;
		slow_run(s);
	}
	return ret;
}

/* Shared by vol_write (buf) and vol_discard (buf == NULL) once the range is validated. */
static void write_or_discard(struct vol *v, uint8_t *buf, uint64_t len, uint64_t off,
			     struct vol_io *io)
{
	uint64_t end = off + len;
	int ret = 0;

	pthread_mutex_lock(&v->lock);
	if (v->barrier) {
		/* a snapshot is switching the changed set: hold this request back */
		struct held *h = malloc(sizeof(*h));
		if (!h) {
			pthread_mutex_unlock(&v->lock);
			return io_put(io, -ENOMEM);
		}
		*h = (struct held){.buf = buf, .len = len, .off = off, .cb = io->cb, .arg = io->arg};
		*v->htail = h;
		v->htail = &h->next;
		pthread_mutex_unlock(&v->lock);
		io->cb = NULL;
		free(io);
		atomic_fetch_sub(&v->inflight, 1);
		return;
	}
	io->write = true;
	atomic_fetch_add(&v->writes_inflight, 1);
	if (v->simple && !v->snap) {
		uint64_t first = off >> v->chunk_shift, last = (end - 1) >> v->chunk_shift;
		bool overwrite = true;
		for (uint64_t c = first; c <= last; c++) {
			bool whole = (c << v->chunk_shift) >= off && ((c + 1) << v->chunk_shift) <= end;
			uint8_t st = buf ? MAP_PRESENT : whole ? MAP_ZERO : map_state(v, c);
			overwrite = overwrite && map_state(v, c) == MAP_PRESENT;
			map_set(v, c, st | MAP_CHANGED);
		}
		pthread_mutex_unlock(&v->lock);
		if (buf)
			ret = data_write(io, buf, len, off, overwrite);
		else
			ret = seg_submit(io, BLK_FALLOC, v->data_fd, NULL, len, off,
					 FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, NULL);
		return io_put(io, ret);
	}
	pthread_mutex_unlock(&v->lock);
	for (uint64_t p = off; p < end && !ret;) {
		uint64_t pend = MIN(end, ((p >> v->chunk_shift) + PLAN_CHUNKS) << v->chunk_shift);
		struct run runs[PLAN_CHUNKS];
		struct slow *slows = NULL;
		int nruns = 0;

		pthread_mutex_lock(&v->lock);
		ret = plan_chunks(io, buf ? buf + (p - off) : NULL, p, pend - p, runs, &nruns,
				  &slows);
		pthread_mutex_unlock(&v->lock);
		int r2 = run_plan(io, buf ? buf + (p - off) : NULL, p, runs, nruns, slows);
		if (!ret)
			ret = r2;
		p = pend;
	}
	io_put(io, ret);
}

void vol_write(struct vol *v, void *buf, size_t len, uint64_t off, vol_cb cb, void *arg)
{
	struct vol_io *io;

	if (!range_ok(v, off, len))
		return cb(arg, -EINVAL);
	if (!len)
		return cb(arg, 0);
	io = io_new(v, cb, arg, (int)len);
	if (!io)
		return cb(arg, -ENOMEM);
	write_or_discard(v, buf, len, off, io);
}

void vol_discard(struct vol *v, uint64_t off, uint64_t len, vol_cb cb, void *arg)
{
	struct vol_io *io;

	if (!range_ok(v, off, len))
		return cb(arg, -EINVAL);
	if (!len)
		return cb(arg, 0);
	io = io_new(v, cb, arg, 0);
	if (!io)
		return cb(arg, -ENOMEM);
	write_or_discard(v, NULL, len, off, io);
}

/* ---- flush --------------------------------------------------------------------------- */

struct flush_round {
	struct vol *v;
	struct flush_waiter *waiters;
	size_t npages;
	uint8_t *pages;	    /* npages * MAP_DPAGE sealed copies of the dirty map pages */
	uint64_t *page_idx; /* their page numbers */
	atomic_int pending;
	atomic_int err;
	struct blk_req fsync_req;
	struct blk_req *writes;
};

static void flush_start(struct vol *v, struct flush_waiter *waiters);

static void round_finish(struct flush_round *r, int res)
{
	struct vol *v = r->v;
	struct flush_waiter *next;

	pthread_mutex_lock(&v->lock);
	if (res < 0 && !v->flush_err) {
		log_err("flush failed: %s; this volume's later flushes will fail too",
			strerror(-res));
		v->flush_err = -EIO;
	}
	next = v->queued;
	v->queued = NULL;
	v->qtail = &v->queued;
	if (!next)
		v->flushing = false;
	pthread_mutex_unlock(&v->lock);
	for (struct flush_waiter *w = r->waiters, *n; w; w = n) {
		n = w->next;
		w->cb(w->arg, res < 0 ? -EIO : 0);
		free(w);
	}
	free(r->pages);
	free(r->page_idx);
	free(r->writes);
	free(r);
	if (next)
		flush_start(v, next);
}

static void map_fsync_done(struct blk_req *req, int res)
{
	struct flush_round *r = req->priv;

	crash_point("after-map-persist");
	round_finish(r, res);
}

static void map_write_done(struct blk_req *req, int res)
{
	struct flush_round *r = req->priv;

	if (res < 0) {
		int zero = 0;
		atomic_compare_exchange_strong(&r->err, &zero, res);
	}
	if (atomic_fetch_sub(&r->pending, 1) != 1)
		return;
	if (atomic_load(&r->err))
		return round_finish(r, atomic_load(&r->err));
	r->fsync_req = (struct blk_req){
		.op = BLK_FSYNC, .fd = r->v->map_fd, .done = map_fsync_done, .priv = r};
	if (blk_submit(r->v->eng, &r->fsync_req))
		round_finish(r, -EIO);
}

static void data_fsync_done(struct blk_req *req, int res)
{
	struct flush_round *r = req->priv;
	struct vol *v = r->v;
	size_t n = r->npages; /* r may be freed by the last map write's completion */

	crash_point("after-data-fsync");
	if (res < 0 || !n)
		return round_finish(r, res);
	atomic_init(&r->pending, (int)n);
	for (size_t i = 0; i < n; i++) {
		r->writes[i] = (struct blk_req){
			.op = BLK_WRITE,
			.fd = v->map_fd,
			.buf = r->pages + i * MAP_DPAGE,
			.len = MAP_DPAGE,
			.off = (off_t)(r->page_idx[i] * MAP_DPAGE),
			.done = map_write_done,
			.priv = r,
		};
	}
	for (size_t i = 0; i < n; i++)
		if (blk_submit(v->eng, &r->writes[i]))
			map_write_done(&r->writes[i], -EIO);
}

/* Start a flush round for waiters: capture the dirty map pages, then fsync data. */
static void flush_start(struct vol *v, struct flush_waiter *waiters)
{
	struct flush_round *r = calloc(1, sizeof(*r));
	size_t words, n = 0;
	int err;

	if (!r)
		goto out_nomem;
	r->v = v;
	r->waiters = waiters;
	pthread_mutex_lock(&v->lock);
	err = v->flush_err;
	words = (map_pages(v->nchunks) + 63) / 64;
	for (size_t i = 0; i < words; i++)
		n += (size_t)__builtin_popcountll(v->dirty[i]);
	if (!err && n) {
		r->pages = malloc(n * MAP_DPAGE);
		r->page_idx = malloc(n * sizeof(uint64_t));
		r->writes = calloc(n, sizeof(struct blk_req));
		if (!r->pages || !r->page_idx || !r->writes) {
			pthread_mutex_unlock(&v->lock);
			free(r->pages);
			free(r->page_idx);
			free(r->writes);
			free(r);
			goto out_nomem;
		}
		for (size_t i = 0; i < words; i++) {
			for (uint64_t bits = v->dirty[i]; bits; bits &= bits - 1) {
				uint64_t page = i * 64 + (uint64_t)__builtin_ctzll(bits);
				map_page_fill(v->map, v->nchunks, page,
					      r->pages + r->npages * MAP_DPAGE);
				r->page_idx[r->npages++] = page;
			}
			v->dirty[i] = 0;
		}
	}
	pthread_mutex_unlock(&v->lock);
	if (err)
		return round_finish(r, err);
	for (size_t i = 0; i < r->npages; i++) /* the CRCs, outside the lock */
		map_page_seal(r->pages + i * MAP_DPAGE, r->page_idx[i]);
#ifdef EBSIM_LYING_FSYNC
	/* test-only plant: acknowledge the flush without syncing anything */
	return round_finish(r, 0);
#endif
	r->fsync_req = (struct blk_req){
		.op = BLK_FSYNC, .fd = v->data_fd, .done = data_fsync_done, .priv = r};
	if (blk_submit(v->eng, &r->fsync_req))
		round_finish(r, -EIO);
	return;
out_nomem:
	/* cannot even allocate: fail these waiters, keep the queue moving */
	pthread_mutex_lock(&v->lock);
	v->flushing = v->queued != NULL;
	pthread_mutex_unlock(&v->lock);
	for (struct flush_waiter *w = waiters, *nx; w; w = nx) {
		nx = w->next;
		w->cb(w->arg, -ENOMEM);
		free(w);
	}
}

void vol_flush(struct vol *v, vol_cb cb, void *arg)
{
	struct flush_waiter *w = calloc(1, sizeof(*w));

	if (!w)
		return cb(arg, -ENOMEM);
	w->cb = cb;
	w->arg = arg;
	pthread_mutex_lock(&v->lock);
	if (v->flushing) {
		/* group commit: the next round serves every flush queued meanwhile */
		*v->qtail = w;
		v->qtail = &w->next;
		pthread_mutex_unlock(&v->lock);
		return;
	}
	v->flushing = true;
	pthread_mutex_unlock(&v->lock);
	flush_start(v, w);
}

/* ---- resize -------------------------------------------------------------------------- */

int vol_resize(struct vol *v, uint64_t new_size)
{
	uint64_t n;
	uint8_t *map;
	uint64_t *dirty;
	size_t old_words, new_words;
	int ret = 0;

	pthread_mutex_lock(&v->lock);
	if (new_size < v->hdr.size || new_size % v->chunk_size || new_size > (1ull << 50)) {
		ret = -EINVAL;
		goto out_unlock;
	}
	if (new_size == v->hdr.size)
		goto out_unlock;
	n = new_size >> v->chunk_shift;
	map = realloc(v->map, n);
	if (!map) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	v->map = map;
	memset(map + v->nchunks, MAP_ABSENT, n - v->nchunks);
	old_words = (map_pages(v->nchunks) + 63) / 64;
	new_words = (map_pages(n) + 63) / 64;
	dirty = realloc(v->dirty, new_words * 8);
	if (!dirty) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	v->dirty = dirty;
	memset(dirty + old_words, 0, (new_words - old_words) * 8);
	/* map and data grow first; the header is the commit point */
	/* the new pages, sealed (all ABSENT); the old last page's padding is ABSENT too */
	if (ftruncate(v->map_fd, (off_t)(map_pages(n) * MAP_DPAGE)) < 0) {
		ret = -errno;
		goto out_unlock;
	}
	ret = map_write_pages(v->map_fd, NULL, n, map_pages(v->nchunks), map_pages(n));
	if (ret)
		goto out_unlock;
	if (ftruncate(v->data_fd, (off_t)new_size) < 0 || fdatasync(v->data_fd) < 0) {
		ret = -errno;
		goto out_unlock;
	}
	v->hdr.size = new_size;
	v->hdr.generation++;
	ret = hdr_write(v);
	if (ret) {
		v->hdr.size = v->nchunks << v->chunk_shift;
		goto out_unlock;
	}
	v->nchunks = n;
	atomic_store(&v->size, new_size);
out_unlock:
	pthread_mutex_unlock(&v->lock);
	return ret;
}

/* ---- snapshots ----------------------------------------------------------------------- */

uint32_t vol_chunk_size(const struct vol *v)
{
	return v->chunk_size;
}

int vol_wrapped_key(const struct vol *v, uint8_t out[72])
{
	if (!(v->hdr.flags & HDR_F_WRAPPED))
		return -ENOKEY;
	memcpy(out, v->hdr.wrapped_key, CRYPT_WRAPPED_LEN);
	return 0;
}

int vol_chunk_plaintext(struct vol *v, uint64_t idx, void *buf)
{
	if (!v->encrypted)
		return 0;
	return crypt_xts(v->key, false, buf, v->chunk_size, idx << v->chunk_shift);
}

int vol_snap_begin(struct vol *v, bool full, struct vol_snap **out, uint64_t *total)
{
	struct vol_snap *s = calloc(1, sizeof(*s));
	struct held *held;
	size_t words;

	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&v->lock);
	if (v->snap || v->barrier) {
		pthread_mutex_unlock(&v->lock);
		free(s);
		return -EBUSY;
	}
	v->barrier = true;
	pthread_mutex_unlock(&v->lock);
	/* the writes already in flight complete; new ones are held (write_or_discard) */
	while (atomic_load(&v->writes_inflight))
		usleep(50);
	pthread_mutex_lock(&v->lock);
	s->v = v;
	s->nchunks = v->nchunks;
	words = (size_t)((s->nchunks + 63) / 64);
	s->pending = calloc(words, 8);
	s->captured = calloc(words, 8);
	s->ptail = &s->parked;
	if (s->pending && s->captured) {
		for (uint64_t c = 0; c < s->nchunks; c++) {
			uint8_t st = map_state(v, c);
			bool changed = v->map[c] & MAP_CHANGED;
			bool want = full ? st == MAP_PRESENT || (st == MAP_ABSENT && base_entry(v, c))
					 : changed;
			if (changed) {
				map_set(v, c, v->map[c] & ~MAP_CHANGED);
				s->captured[c / 64] |= 1ull << (c % 64);
			}
			if (want) {
				s->pending[c / 64] |= 1ull << (c % 64);
				s->left++;
			}
		}
		v->snap = s;
	}
	v->barrier = false;
	held = v->held;
	v->held = NULL;
	v->htail = &v->held;
	pthread_mutex_unlock(&v->lock);
	/* replay what was held back, in order */
	while (held) {
		struct held *h = held;
		held = h->next;
		if (h->buf)
			vol_write(v, h->buf, h->len, h->off, h->cb, h->arg);
		else
			vol_discard(v, h->off, h->len, h->cb, h->arg);
		free(h);
	}
	if (!v->snap || v->snap != s) {
		free(s->pending);
		free(s->captured);
		free(s);
		return -ENOMEM;
	}
	*total = s->left;
	*out = s;
	return 0;
}

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {
			memset((uint8_t *)buf + done, 0, len - done);
			break;
		}
		done += (size_t)n;
	}
	return 0;
}

int vol_snap_next(struct vol_snap *s, uint64_t max, uint64_t *idx, uint64_t *n,
		  enum vol_snap_kind *kind, void *buf, uint8_t base_id[OBJ_ID_LEN], vol_snap_fn fn,
		  void *arg)
{
	struct vol *v = s->v;
	struct slow *owner = NULL;
	const uint8_t *id = NULL;
	uint64_t c, run = 1;
	uint8_t st;
	int ret = 0;

	pthread_mutex_lock(&v->lock);
	for (;;) {
		if (s->parked) {
			/* a writer waits for this chunk: copy it first */
			owner = s->parked;
			s->parked = owner->next;
			if (!s->parked)
				s->ptail = &s->parked;
			c = owner->idx;
			break;
		}
		while (s->scan < s->nchunks && !((s->pending[s->scan / 64] >> (s->scan % 64)) & 1))
			s->scan++;
		if (s->scan >= s->nchunks) {
			if (!s->left) {
				pthread_mutex_unlock(&v->lock);
				return 0;
			}
			/* the rest were busy when the scan passed: wait for a release, rescan */
			s->scan = 0;
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 10 * 1000 * 1000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&v->cond, &v->lock, &ts);
			continue;
		}
		c = s->scan++;
		if (lock_try(v, c))
			break;
	}
	/* we hold chunk c (ourselves or through the parked writer): no write can change it */
	st = c < v->nchunks ? map_state(v, c) : MAP_ZERO;
	if (st == MAP_ABSENT)
		id = base_entry(v, c);
	s->pending[c / 64] &= ~(1ull << (c % 64));
	s->left--;
	/* a run: the following pending PRESENT chunks whose locks are free, all held until
	 * fn returns (a parked writer's chunk stands alone: the writer holds its lock) */
	while (!owner && st == MAP_PRESENT && run < max && c + run < s->nchunks &&
	       c + run < v->nchunks && ((s->pending[(c + run) / 64] >> ((c + run) % 64)) & 1) &&
	       map_state(v, c + run) == MAP_PRESENT && lock_try(v, c + run)) {
		s->pending[(c + run) / 64] &= ~(1ull << ((c + run) % 64));
		s->left--;
		run++;
	}
	if (!owner)
		s->scan = c + run;
	pthread_mutex_unlock(&v->lock);

	*idx = c;
	*n = run;
	if (st == MAP_PRESENT) {
		*kind = VOL_SNAP_DATA;
		ret = read_full(v->data_fd, buf, run << v->chunk_shift, c << v->chunk_shift);
		/* still under the chunks' locks: fn sees the bytes in buf also at (data_fd, off) */
		if (!ret && fn)
			ret = fn(arg, c, run, buf, v->data_fd, c << v->chunk_shift);
	} else if (id) {
		*kind = VOL_SNAP_BASE;
		memcpy(base_id, id, OBJ_ID_LEN);
	} else {
		*kind = VOL_SNAP_ZERO;
	}
	if (owner) {
		slow_run(owner); /* the parked write goes on; it keeps the chunk lock */
		return ret < 0 ? ret : 1;
	}
	for (uint64_t i = 0; i < run; i++) {
		pthread_mutex_lock(&v->lock);
		struct slow *next = lock_release(v, c + i);
		pthread_mutex_unlock(&v->lock);
		if (next)
			slow_run(next);
	}
	return ret < 0 ? ret : 1;
}

void vol_snap_end(struct vol_snap *s, bool ok)
{
	struct vol *v = s->v;
	struct slow *parked;

	pthread_mutex_lock(&v->lock);
	if (!ok) {
		for (uint64_t c = 0; c < s->nchunks && c < v->nchunks; c++)
			if ((s->captured[c / 64] >> (c % 64)) & 1)
				map_set(v, c, v->map[c] | MAP_CHANGED);
	}
	parked = s->parked;
	v->snap = NULL;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	while (parked) {
		struct slow *w = parked;
		parked = w->next;
		w->next = NULL;
		slow_run(w);
	}
	free(s->pending);
	free(s->captured);
	free(s);
}

/* ---- hydration ----------------------------------------------------------------------- */

uint64_t vol_base_reads(const struct vol *v)
{
	return atomic_load(&v->base_reads);
}

/* Under v->lock. */
static uint64_t base_left_locked(struct vol *v)
{
	uint64_t n = 0;

	if (!v->bm)
		return 0;
	for (size_t i = 0; i < v->bm->nentries; i++) {
		uint64_t c = v->bm->e[i].idx;
		if (c < v->nchunks && map_state(v, c) == MAP_ABSENT)
			n++;
	}
	return n;
}

uint64_t vol_base_left(struct vol *v)
{
	uint64_t n;

	pthread_mutex_lock(&v->lock);
	n = base_left_locked(v);
	pthread_mutex_unlock(&v->lock);
	return n;
}

int vol_hydrate(struct vol *v, uint64_t *next, uint64_t max, uint64_t *left)
{
	uint8_t *buf = NULL;
	uint64_t done = 0;
	int ret = 0;

	if (!v->bm) {
		*left = 0;
		return 0;
	}
	if (posix_memalign((void **)&buf, VOL_SECTOR, v->chunk_size))
		return -ENOMEM;
	/* *next indexes the base manifest's entries */
	while (*next < v->bm->nentries && done < max && !ret) {
		const struct manifest_entry *e = &v->bm->e[(*next)++];
		bool mine;

		pthread_mutex_lock(&v->lock);
		mine = e->idx < v->nchunks && map_state(v, e->idx) == MAP_ABSENT &&
		       lock_try(v, e->idx);
		pthread_mutex_unlock(&v->lock);
		if (!mine)
			continue; /* already there, or busy (a later pass retries) */
		ret = store_get(v->store, e->id, buf, v->chunk_size);
		atomic_fetch_add(&v->base_reads, 1);
		if (!ret) {
			ssize_t n = pwrite(v->data_fd, buf, v->chunk_size,
					   (off_t)(e->idx << v->chunk_shift));
			ret = n == (ssize_t)v->chunk_size ? 0 : n < 0 ? -errno : -ENOSPC;
		} else {
			char hex[OBJ_HEX_LEN + 1];
			obj_id_hex(e->id, hex);
			log_err("hydrating chunk %llu: object %s: %s", (unsigned long long)e->idx,
				hex, strerror(-ret));
		}
		pthread_mutex_lock(&v->lock);
		if (!ret && map_state(v, e->idx) == MAP_ABSENT)
			map_set(v, e->idx, MAP_PRESENT | (v->map[e->idx] & MAP_CHANGED));
		struct slow *w = lock_release(v, e->idx);
		pthread_mutex_unlock(&v->lock);
		if (w)
			slow_run(w);
		done++;
	}
	free(buf);
	if (ret)
		return ret;
	pthread_mutex_lock(&v->lock);
	*left = base_left_locked(v);
	pthread_mutex_unlock(&v->lock);
	if (*next < v->bm->nentries)
		return 1;
	if (*left) {
		*next = 0; /* some were busy: go round again */
		return 1;
	}
	/* Every base chunk is in the data file: make that durable, then the header stops
	 * naming the base, so the store is never read for this volume again. */
	ret = vol_fsync(v);
	if (ret)
		return ret;
	pthread_mutex_lock(&v->lock);
	v->hdr.flags &= ~HDR_F_BASE;
	memset(v->hdr.base, 0, sizeof(v->hdr.base));
	ret = hdr_write(v);
	pthread_mutex_unlock(&v->lock);
	return ret;
}

/* ---- synchronous wrappers ------------------------------------------------------------ */

struct waiter {
	pthread_mutex_t m;
	pthread_cond_t c;
	bool done;
	int res;
};

static void waiter_cb(void *arg, int res)
{
	struct waiter *w = arg;

	pthread_mutex_lock(&w->m);
	w->res = res;
	w->done = true;
	pthread_cond_signal(&w->c);
	pthread_mutex_unlock(&w->m);
}

static int waiter_wait(struct waiter *w)
{
	pthread_mutex_lock(&w->m);
	while (!w->done)
		pthread_cond_wait(&w->c, &w->m);
	pthread_mutex_unlock(&w->m);
	pthread_mutex_destroy(&w->m);
	pthread_cond_destroy(&w->c);
	return w->res;
}

#define WAITER_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0}

int vol_pread(struct vol *v, void *buf, size_t len, uint64_t off)
{
	struct waiter w = WAITER_INIT;

	vol_read(v, buf, len, off, waiter_cb, &w);
	return waiter_wait(&w);
}

int vol_pwrite(struct vol *v, const void *buf, size_t len, uint64_t off)
{
	struct waiter w = WAITER_INIT;
	void *copy = malloc(len ? len : 1);
	int ret;

	if (!copy)
		return -ENOMEM;
	memcpy(copy, buf, len);
	vol_write(v, copy, len, off, waiter_cb, &w);
	ret = waiter_wait(&w);
	free(copy);
	return ret;
}

int vol_fsync(struct vol *v)
{
	struct waiter w = WAITER_INIT;

	vol_flush(v, waiter_cb, &w);
	return waiter_wait(&w);
}

int vol_pdiscard(struct vol *v, uint64_t off, uint64_t len)
{
	struct waiter w = WAITER_INIT;

	vol_discard(v, off, len, waiter_cb, &w);
	return waiter_wait(&w);
}

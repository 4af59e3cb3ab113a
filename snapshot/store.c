/* SPDX-License-Identifier: MIT */
/*
 * store.c - the content-addressed object store: put/get with SHA-256 verification, the
 * durability barrier, mark-and-sweep GC and the integrity check (see snapshot.h).
 *
 * Design notes
 * ------------
 * Layout: <store>/objects/ab/<62 hex> holds the bytes whose SHA-256 is "ab<62 hex>" (lower
 * case); <store>/manifests/snap-<17 hex> is a manifest (manifest.c); <store>/packs/ holds
 * pack files (below). Directories are 0700, files 0600. Names are only ever built from a
 * 32-byte id, random pack names or a validated snapshot id, and every open is relative to
 * a directory fd with O_NOFOLLOW.
 *
 * Packs (why: one file per 64 KiB chunk cost an inode allocation, a rename and a syncfs of
 * the whole file system; profiled, ext4_create was most of a full snapshot's CPU time):
 * pk-<16 hex>.pack is objects appended back to back; pk-<16 hex>.idx is a 32-byte header
 * ("EBSPACK1", u64 entry count, u64 pack bytes covered, u64 zero), 48-byte entries (32-byte
 * id, u64 offset, u32 length, u32 zero), then the SHA-256 of all that; integers are
 * little-endian. A writer (store_pack_*) appends to a new pack, starting writeback every
 * 8 MiB, and closes it at 256 MiB or on commit: fdatasync(pack) -> index written atomically
 * (temp, fsync, rename, fsync packs/) -> the entries enter the map. So an index never names
 * bytes that are not durable, and a pack without an index is a crashed writer's (GC removes
 * it). The map (an id set, value = pack, offset, length) is built from every index at
 * store_open and rebuilt after GC; map_lock (rwlock) guards it and packs[]. A reader takes
 * a dup of the pack fd under the read lock, so GC may unlink a pack under it. An index that
 * fails validation is left alone: its objects read as missing (-ENOENT), which check reports.
 * Why buffered appends and not O_DIRECT: measured with fio on this host's disk (ext4 on
 * virtio, 1 GiB into a new file, each ending durable), this pattern (64 KiB writes,
 * writeback started every 8 MiB, fsync at the end) did 264-429 MB/s against 138-310 MB/s
 * for 1 MiB O_DIRECT writes at QD8/QD32, into a sparse or a fallocate'd file alike, run
 * interleaved; a 2, 32 MiB or no writeback step made no clear difference. The full snapshot
 * is bounded by that disk rate, not by SHA-256 (~1.4 GB/s on one core).
 * Reflink (store_pack_clone_raw/_finish): on a file system with shared extents (XFS
 * reflink=1, btrfs) an object can enter the pack as a clone of a range of another file (the
 * volume's data file) instead of written bytes: one FICLONERANGE at the pack's end (offset
 * == size, so chunk-sized objects keep pack offsets block-aligned, as the ioctl requires).
 * The clone is made first (while the caller keeps the source range still) and named later,
 * in order, once its hash is known: an entry is added then, unless it is a duplicate (or
 * the caller says zero), whose range is punched out of the pack, so the pack may have holes
 * no entry names. One clone may carry a run of objects that lie back to back in the source
 * (a snapshot clones up to 32 consecutive chunks with one ioctl: measured on XFS, one
 * FICLONERANGE per 64 KiB chunk cost ~0.45 s per GiB, most of a full snapshot); each is
 * then named by its own clone_finish (w->raw counts the bytes not named yet). A pack is
 * closed (PACK_MAX, commit) only with no clone unnamed, so it may end up to one run
 * past PACK_MAX. The kernel
 * writes back the source range before sharing it, and the clone is metadata, made durable
 * by the pack's fsync at commit (fsync rather than fdatasync once a clone went in, so the
 * inode's extent changes are surely logged); the crash protocol above is unchanged. When
 * the ioctl is refused (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY, EBADF...: ext4, another file
 * system, misalignment), store_pack_clone_raw returns -EOPNOTSUPP and stores nothing; the
 * caller then puts the bytes (store_pack_put). Packs with cloned and written objects read,
 * check and GC alike (GC rewrites partly-live packs by copying).
 * Dedup: a put looks in the map, the writer's own pending set, then the loose objects (a hit
 * there may not be durable yet: commit then also runs store_sync). Two writers storing the
 * same new chunk at once both keep it; the map points at one copy (the canonical one) and
 * GC drops the other.
 *
 * Directory fds: the store dir, objects/ and manifests/ are opened by store_open; the 256
 * fan-out directories are created and opened lazily, the first time an object lands in or
 * is looked up under them, and stay open until store_close. fan[] is read lock-free
 * (acquire); fan_lock serialises only the first open of each directory.
 *
 * Put protocol (after git's write_loose_object): hash -> fstatat "already have it?" ->
 * write a temp file ".tmp.<pid>.<seq>" (O_EXCL) in the destination fan-out directory ->
 * renameat onto the final name. Two writers of the same content both succeed: the rename
 * of identical bytes over identical bytes is harmless. Nothing is fsynced here: the
 * snapshot path puts ~16k objects per GiB and a per-object fsync would bound it to the
 * disk's flush rate. store_sync is the barrier: one syncfs() of the store's file system
 * (file data, inodes and directory entries alike; since Linux 5.8 it also reports
 * writeback errors).
 *
 * Crash protocol: a snapshot is complete only after store_sync and then manifest_write
 * (atomic + durable). A crash before that leaves objects no manifest references (GC
 * removes them) and stale temp files (GC removes them too). An object put but never synced
 * may come back after a crash empty or short (ext4/XFS delayed allocation); store_put
 * therefore trusts an existing object only when its size matches, and otherwise rewrites
 * it, so a retried snapshot cannot adopt a torn object. Every read re-hashes anyway
 * (-EBADMSG on any mismatch), so other damage is detected, never returned as data.
 *
 * GC (mark and sweep): the mark phase reads every manifest into an open-addressing hash set
 * of 32-byte ids (home slot = first 8 bytes of the id, which are uniformly distributed;
 * linear probing; load <= 3/4; an occupancy bitmap, so no id value is reserved): 32-byte
 * slots, 1.33 to 2.67 per live object (10M objects: 512 MiB, 768 MiB while growing). Any
 * manifest that cannot be read aborts GC before anything is deleted: never delete data
 * on uncertain roots. The sweep then reads each fan-out directory and unlinks every
 * object not in the set, and every temp file. Then each pack: all entries live (referenced
 * and canonical) -> kept; none -> index then pack unlinked; some -> the live entries are
 * appended to a new pack, committed, then the old one is unlinked (a crash in between leaves
 * duplicates for the next GC). Temp files and index-less packs in packs/ go, and the map is
 * rebuilt. GC must not run while a snapshot is being written (its objects are not
 * referenced yet); the caller serialises that.
 *
 * Check: builds the same set, with the first (manifest, chunk index) referencing each
 * object as its value, walks and re-hashes every object (corrupt / leaked; an unreferenced
 * corrupt object is reported as both, with a NULL manifest), then re-reads the manifests and
 * reports each entry whose object file is absent (missing). Pack entries are checked the same
 * way (re-read at their offset and re-hashed). Manifests are re-read rather
 * than kept: a large volume's manifest is tens of MiB. Temp files and foreign names in the
 * fan-out directories are neither checked nor reported (GC removes temp files).
 */
#include "snapshot/snapshot_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

struct idset;

#define FANOUT 256
#define TMP_PREFIX ".tmp."
#define CHECK_BUF (1u << 20)
#define PACK_MAGIC "EBSPACK1"
#define PACK_NAME_LEN 20		/* "pk-" + 16 hex + NUL */
#define PACK_MAX (256ull << 20)	/* a pack is closed once it holds this much */
#define PACK_WB_STEP (8u << 20)	/* start writeback every 8 MiB */

struct snap_store {
	int dirfd;		 /* the store directory */
	int objfd;		 /* objects/ */
	int manfd;		 /* manifests/ */
	_Atomic int fan[FANOUT]; /* objects/00 .. objects/ff, -1 until first used */
	pthread_mutex_t fan_lock;
	atomic_ulong tmpseq;
	int packfd;		 /* packs/ */
	pthread_rwlock_t map_lock; /* map and packs[] */
	struct idset *map;	 /* packed id -> struct pack_loc */
	struct pack **packs;	 /* indexed by pack_loc.pack; NULL once removed */
	size_t npacks;
};


int store_manifest_dirfd(struct snap_store *s)
{
	return s->manfd;
}

/* ---- hashing ------------------------------------------------------------------------- */

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/* Fetch the implementation once: EVP_sha256() would look it up again on every digest. */
static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
	pthread_once(&sha256_once, sha256_fetch);
	return sha256_md ? sha256_md : EVP_sha256();
}

int store_sha256(const void *buf, size_t len, uint8_t out[OBJ_ID_LEN])
{
	unsigned int n = 0;

	if (!EVP_Digest(buf, len, out, &n, sha256(), NULL) || n != OBJ_ID_LEN)
		return -ENOMEM;
	return 0;
}

bool store_verify(const void *buf, size_t len, const uint8_t id[OBJ_ID_LEN])
{
	uint8_t h[OBJ_ID_LEN];

	return store_sha256(buf, len, h) == 0 && memcmp(h, id, OBJ_ID_LEN) == 0;
}

/* ---- ids ----------------------------------------------------------------------------- */

void obj_id_hex(const uint8_t id[OBJ_ID_LEN], char hex[OBJ_HEX_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < OBJ_ID_LEN; i++) {
		hex[2 * i] = digits[id[i] >> 4];
		hex[2 * i + 1] = digits[id[i] & 15];
	}
	hex[OBJ_HEX_LEN] = '\0';
}

static int hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int obj_id_parse(const char *hex, uint8_t id[OBJ_ID_LEN])
{
	if (!hex)
		return -EINVAL;
	/* stops at the first non-hex character, so never reads past the NUL */
	for (int i = 0; i < OBJ_HEX_LEN; i++)
		if (hex_val(hex[i]) < 0)
			return -EINVAL;
	if (hex[OBJ_HEX_LEN] != '\0')
		return -EINVAL;
	for (int i = 0; i < OBJ_ID_LEN; i++)
		id[i] = (uint8_t)(hex_val(hex[2 * i]) << 4 | hex_val(hex[2 * i + 1]));
	return 0;
}

/* ---- id sets (GC and check) ---------------------------------------------------------- */

/* Open addressing over slots of `stride` bytes: a 32-byte id, then the caller's value. */
struct idset {
	uint8_t *slots;
	uint64_t *used; /* occupancy bitmap */
	size_t cap;	/* a power of two */
	size_t n;
	size_t stride;
};

static size_t idset_home(const struct idset *set, const uint8_t id[OBJ_ID_LEN])
{
	uint64_t k;

	memcpy(&k, id, sizeof(k));
	return (size_t)k & (set->cap - 1);
}

static bool idset_used(const struct idset *set, size_t i)
{
	return set->used[i / 64] >> (i % 64) & 1;
}

static int idset_init(struct idset *set, size_t cap, size_t stride)
{
	set->slots = calloc(cap, stride);
	set->used = calloc((cap + 63) / 64, sizeof(uint64_t));
	set->cap = cap;
	set->n = 0;
	set->stride = stride;
	if (!set->slots || !set->used) {
		free(set->slots);
		free(set->used);
		set->slots = NULL;
		set->used = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void idset_free(struct idset *set)
{
	free(set->slots);
	free(set->used);
	set->slots = NULL;
	set->used = NULL;
}

/* The slot of id: its own when present, else the free slot where it would go. */
static uint8_t *idset_probe(const struct idset *set, const uint8_t id[OBJ_ID_LEN], bool *found)
{
	size_t i = idset_home(set, id);

	for (;; i = (i + 1) & (set->cap - 1)) {
		uint8_t *slot = set->slots + i * set->stride;

		if (!idset_used(set, i)) {
			*found = false;
			return slot;
		}
		if (!memcmp(slot, id, OBJ_ID_LEN)) {
			*found = true;
			return slot;
		}
	}
}

static uint8_t *idset_find(const struct idset *set, const uint8_t id[OBJ_ID_LEN])
{
	bool found;
	uint8_t *slot = idset_probe(set, id, &found);

	return found ? slot : NULL;
}

static int idset_grow(struct idset *set)
{
	struct idset big;
	int ret;

	if (set->cap > SIZE_MAX / 2 / set->stride)
		return -ENOMEM;
	ret = idset_init(&big, set->cap * 2, set->stride);
	if (ret)
		return ret;
	for (size_t i = 0; i < set->cap; i++) {
		uint8_t *from = set->slots + i * set->stride, *to;
		bool found;

		if (!idset_used(set, i))
			continue;
		to = idset_probe(&big, from, &found);
		memcpy(to, from, set->stride);
		size_t j = (size_t)(to - big.slots) / big.stride;
		big.used[j / 64] |= 1ull << (j % 64);
		big.n++;
	}
	idset_free(set);
	*set = big;
	return 0;
}

/* Insert id (value zeroed) unless present. Returns its slot, NULL on -ENOMEM. The pointer
 * is valid until the next insertion. */
static uint8_t *idset_add(struct idset *set, const uint8_t id[OBJ_ID_LEN], bool *added)
{
	uint8_t *slot;
	bool found;
	size_t i;

	if ((set->n + 1) * 4 > set->cap * 3 && idset_grow(set))
		return NULL;
	slot = idset_probe(set, id, &found);
	*added = !found;
	if (found)
		return slot;
	memset(slot, 0, set->stride);
	memcpy(slot, id, OBJ_ID_LEN);
	i = (size_t)(slot - set->slots) / set->stride;
	set->used[i / 64] |= 1ull << (i % 64);
	set->n++;
	return slot;
}

/* ---- open / close -------------------------------------------------------------------- */

static int dir_open(int at, const char *name)
{
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/* Open at/name, creating it (0700) if missing; *created is set when this call made it. */
static int dir_open_or_create(int at, const char *name, bool *created)
{
	int fd = dir_open(at, name);

	if (fd != -ENOENT)
		return fd;
	if (mkdirat(at, name, 0700) < 0) {
		if (errno != EEXIST)
			return -errno;
	} else {
		*created = true;
	}
	return dir_open(at, name);
}

static int packs_load(struct snap_store *s);
static void packs_free(struct snap_store *s);

int store_open(int parent_dirfd, const char *name, struct snap_store **out)
{
	struct snap_store *s;
	bool created = false, sub_created = false;
	unsigned long seq;
	int ret;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dirfd = s->objfd = s->manfd = s->packfd = -1;
	for (int i = 0; i < FANOUT; i++)
		atomic_init(&s->fan[i], -1);
	/* a random start keeps two handles on one store in one process apart (O_EXCL anyway) */
	if (rand_bytes(&seq, sizeof(seq)))
		seq = 0;
	atomic_init(&s->tmpseq, seq & 0xffffffffu);
	ret = pthread_mutex_init(&s->fan_lock, NULL);
	if (ret) {
		free(s);
		return -ret;
	}
	ret = pthread_rwlock_init(&s->map_lock, NULL);
	if (ret) {
		pthread_mutex_destroy(&s->fan_lock);
		free(s);
		return -ret;
	}

	ret = dir_open_or_create(parent_dirfd, name, &created);
	if (ret < 0)
		goto out_close;
	s->dirfd = ret;
	ret = dir_open_or_create(s->dirfd, "objects", &sub_created);
	if (ret < 0)
		goto out_close;
	s->objfd = ret;
	ret = dir_open_or_create(s->dirfd, "manifests", &sub_created);
	if (ret < 0)
		goto out_close;
	s->manfd = ret;
	ret = dir_open_or_create(s->dirfd, "packs", &sub_created);
	if (ret < 0)
		goto out_close;
	s->packfd = ret;
	ret = packs_load(s);
	if (ret < 0)
		goto out_close;
	/* new directory entries must be durable before a manifest can rely on them */
	if ((sub_created && fsync(s->dirfd) < 0) || (created && fsync(parent_dirfd) < 0)) {
		ret = -errno;
		goto out_close;
	}
	*out = s;
	return 0;

out_close:
	log_err("store_open %s: %s", name, strerror(-ret));
	store_close(s);
	return ret;
}

void store_close(struct snap_store *s)
{
	if (!s)
		return;
	for (int i = 0; i < FANOUT; i++) {
		int fd = atomic_load(&s->fan[i]);
		if (fd >= 0)
			close(fd);
	}
	packs_free(s);
	if (s->packfd >= 0)
		close(s->packfd);
	if (s->manfd >= 0)
		close(s->manfd);
	if (s->objfd >= 0)
		close(s->objfd);
	if (s->dirfd >= 0)
		close(s->dirfd);
	pthread_mutex_destroy(&s->fan_lock);
	pthread_rwlock_destroy(&s->map_lock);
	free(s);
}

static void fan_name(unsigned int b, char name[3])
{
	static const char digits[] = "0123456789abcdef";

	name[0] = digits[(b >> 4) & 15];
	name[1] = digits[b & 15];
	name[2] = '\0';
}

/* The fd of fan-out directory objects/<b in hex>, opened (and with create, made) on first
 * use. -ENOENT when it does not exist and create is false. */
static int fan_fd(struct snap_store *s, unsigned int b, bool create)
{
	char name[3];
	bool created = false;
	int fd = atomic_load_explicit(&s->fan[b], memory_order_acquire);

	if (fd >= 0)
		return fd;
	fan_name(b, name);
	pthread_mutex_lock(&s->fan_lock);
	fd = atomic_load_explicit(&s->fan[b], memory_order_relaxed);
	if (fd < 0) {
		fd = create ? dir_open_or_create(s->objfd, name, &created)
			    : dir_open(s->objfd, name);
		if (fd >= 0)
			atomic_store_explicit(&s->fan[b], fd, memory_order_release);
	}
	pthread_mutex_unlock(&s->fan_lock);
	return fd;
}

/* ---- packs --------------------------------------------------------------------------- */

/* Where a packed object lives: the map's value after each 32-byte id. */
struct pack_loc {
	uint32_t pack; /* index into s->packs */
	uint32_t len;
	uint64_t off;
};

struct pack {
	char name[PACK_NAME_LEN]; /* "pk-<16 hex>" */
	int fd;			  /* the .pack file, read-only */
	uint64_t size;		  /* bytes the index covers */
	uint64_t n;		  /* entries in its index */
};

/* One index entry, as stored (little-endian). */
struct pack_ent {
	uint8_t id[OBJ_ID_LEN];
	uint64_t off;
	uint32_t len;
	uint32_t pad;
};

struct pack_idx_hdr {
	char magic[8];
	uint64_t n;
	uint64_t pack_size;
	uint64_t reserved;
};

_Static_assert(sizeof(struct pack_ent) == 48, "pack_ent layout");
_Static_assert(sizeof(struct pack_idx_hdr) == 32, "pack_idx_hdr layout");

static struct pack_loc *map_loc(uint8_t *slot)
{
	return (struct pack_loc *)(slot + OBJ_ID_LEN);
}

static bool pack_name_ok(const char *name, const char *suffix)
{
	size_t sl = strlen(suffix);

	if (strlen(name) != PACK_NAME_LEN - 1 + sl || strncmp(name, "pk-", 3) ||
	    strcmp(name + PACK_NAME_LEN - 1, suffix))
		return false;
	for (int i = 3; i < PACK_NAME_LEN - 1; i++)
		if (hex_val(name[i]) < 0)
			return false;
	return true;
}

/* Read and validate packs/<name>.idx: 0 with *ents (malloc'd) and *hdr, -EUCLEAN when
 * damaged, or -errno. */
static int pack_idx_read(struct snap_store *s, const char *name, struct pack_idx_hdr *hdr,
			 struct pack_ent **ents)
{
	char fn[PACK_NAME_LEN + 8];
	uint8_t h[OBJ_ID_LEN];
	size_t len;
	void *buf;
	int ret;

	snprintf(fn, sizeof(fn), "%s.idx", name);
	ret = file_read_all(s->packfd, fn, &buf, &len);
	if (ret)
		return ret;
	ret = -EUCLEAN;
	if (len < sizeof(*hdr) + OBJ_ID_LEN)
		goto out;
	memcpy(hdr, buf, sizeof(*hdr));
	if (memcmp(hdr->magic, PACK_MAGIC, 8) ||
	    hdr->n != (len - sizeof(*hdr) - OBJ_ID_LEN) / sizeof(struct pack_ent) ||
	    len != sizeof(*hdr) + hdr->n * sizeof(struct pack_ent) + OBJ_ID_LEN)
		goto out;
	if (store_sha256(buf, len - OBJ_ID_LEN, h) ||
	    memcmp(h, (uint8_t *)buf + len - OBJ_ID_LEN, OBJ_ID_LEN))
		goto out;
	*ents = malloc(hdr->n ? hdr->n * sizeof(struct pack_ent) : 1);
	if (!*ents) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(*ents, (uint8_t *)buf + sizeof(*hdr), hdr->n * sizeof(struct pack_ent));
	for (uint64_t i = 0; i < hdr->n; i++) {
		struct pack_ent *e = &(*ents)[i];
		if (e->off > hdr->pack_size || e->len > hdr->pack_size - e->off) {
			free(*ents);
			*ents = NULL;
			goto out;
		}
	}
	ret = 0;
out:
	free(buf);
	return ret;
}

/* Register a pack whose index is durable: open it and map its entries (an id already
 * mapped keeps its first location). Caller holds map_lock for writing. */
static int pack_register(struct snap_store *s, const char *name)
{
	struct pack_idx_hdr hdr;
	struct pack_ent *ents = NULL;
	char fn[PACK_NAME_LEN + 8];
	struct pack *p = NULL;
	struct stat st;
	int ret;

	ret = pack_idx_read(s, name, &hdr, &ents);
	if (ret)
		return ret;
	p = calloc(1, sizeof(*p));
	if (!p) {
		ret = -ENOMEM;
		goto out;
	}
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(fn, sizeof(fn), "%s.pack", name);
	p->fd = openat(s->packfd, fn, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (p->fd < 0) {
		ret = -errno;
		goto out;
	}
	if (fstat(p->fd, &st) < 0 || (uint64_t)st.st_size < hdr.pack_size) {
		ret = -EUCLEAN;
		goto out;
	}
	p->size = hdr.pack_size;
	p->n = hdr.n;
	if (s->npacks % 64 == 0) {
		void *np = reallocarray(s->packs, s->npacks + 64, sizeof(*s->packs));
		if (!np || s->npacks >= UINT32_MAX) {
			ret = -ENOMEM;
			goto out;
		}
		s->packs = np;
	}
	for (uint64_t i = 0; i < hdr.n; i++) {
		bool added;
		uint8_t *slot = idset_add(s->map, ents[i].id, &added);

		if (!slot) {
			ret = -ENOMEM; /* entries added so far point at a pack we do keep */
			break;
		}
		if (added)
			*map_loc(slot) = (struct pack_loc){
				.pack = (uint32_t)s->npacks, .len = ents[i].len, .off = ents[i].off};
	}
	s->packs[s->npacks++] = p;
	p = NULL;
out:
	if (p && p->fd >= 0)
		close(p->fd);
	free(p);
	free(ents);
	return ret;
}

static void packs_free(struct snap_store *s)
{
	for (size_t i = 0; i < s->npacks; i++) {
		if (s->packs[i]) {
			close(s->packs[i]->fd);
			free(s->packs[i]);
		}
	}
	free(s->packs);
	s->packs = NULL;
	s->npacks = 0;
	if (s->map) {
		idset_free(s->map);
		free(s->map);
		s->map = NULL;
	}
}

/* (Re)build the map from every pack index. A damaged index is left alone (logged): its
 * objects read as missing, which store_check reports. Caller holds map_lock for writing
 * (or is store_open). */
static int packs_load(struct snap_store *s)
{
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	packs_free(s);
	s->map = calloc(1, sizeof(*s->map));
	if (!s->map || idset_init(s->map, 1024, OBJ_ID_LEN + sizeof(struct pack_loc)))
		return -ENOMEM;
	fd = openat(s->packfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	while ((de = readdir(d))) {
		char name[PACK_NAME_LEN];

		if (!pack_name_ok(de->d_name, ".idx"))
			continue;
		snprintf(name, sizeof(name), "%.*s", PACK_NAME_LEN - 1, de->d_name);
		ret = pack_register(s, name);
		if (ret == -ENOMEM)
			break;
		if (ret)
			log_err("pack %s is unusable (%s): its objects read as missing", name,
				strerror(-ret));
		ret = 0;
	}
	closedir(d);
	return ret;
}

/* Look id up in the packs: a dup of its pack's fd (the caller closes it) and its place. */
static int pack_find(struct snap_store *s, const uint8_t id[OBJ_ID_LEN], uint64_t *off,
		     uint32_t *len)
{
	uint8_t *slot;
	int fd = -ENOENT;

	pthread_rwlock_rdlock(&s->map_lock);
	slot = s->map ? idset_find(s->map, id) : NULL;
	if (slot) {
		struct pack_loc *l = map_loc(slot);
		fd = fcntl(s->packs[l->pack]->fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			fd = -errno;
		*off = l->off;
		*len = l->len;
	}
	pthread_rwlock_unlock(&s->map_lock);
	return fd;
}

static bool pack_has(struct snap_store *s, const uint8_t id[OBJ_ID_LEN])
{
	bool r;

	pthread_rwlock_rdlock(&s->map_lock);
	r = s->map && idset_find(s->map, id);
	pthread_rwlock_unlock(&s->map_lock);
	return r;
}

/* ---- pack writer ----------------------------------------------------------------------- */

struct store_pack {
	struct snap_store *s;
	int fd;			  /* the pack being written, -1 between packs */
	char name[PACK_NAME_LEN];
	uint64_t size, synced;	  /* bytes written; bytes whose writeback was started */
	struct pack_ent *e;
	size_t n, cap;
	struct idset pend;	  /* ids in the current pack */
	bool loose_hits; /* an object was found loose: commit must store_sync */
	bool cloned;	  /* the current pack holds a clone: fsync, not fdatasync */
	uint64_t raw;	  /* bytes cloned into the current pack not yet finished (named) */
};

int store_pack_begin(struct snap_store *s, struct store_pack **out)
{
	struct store_pack *w = calloc(1, sizeof(*w));

	if (!w || idset_init(&w->pend, 1024, OBJ_ID_LEN)) {
		free(w);
		return -ENOMEM;
	}
	w->s = s;
	w->fd = -1;
	*out = w;
	return 0;
}

static int pack_new(struct store_pack *w)
{
	uint8_t r[8];
	char fn[PACK_NAME_LEN + 8];
	int tries = 0;

	do {
		if (rand_bytes(r, sizeof(r)))
			return -EIO;
		snprintf(w->name, sizeof(w->name), "pk-%02x%02x%02x%02x%02x%02x%02x%02x", r[0],
			 r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
		snprintf(fn, sizeof(fn), "%s.pack", w->name);
		w->fd = openat(w->s->packfd, fn,
			       O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	} while (w->fd < 0 && errno == EEXIST && ++tries < 10);
	if (w->fd < 0)
		return -errno;
	w->size = w->synced = 0;
	w->n = 0;
	return 0;
}

static void pack_drop(struct store_pack *w)
{
	char fn[PACK_NAME_LEN + 8];

	if (w->fd < 0)
		return;
	close(w->fd);
	w->fd = -1;
	snprintf(fn, sizeof(fn), "%s.pack", w->name);
	unlinkat(w->s->packfd, fn, 0);
}

/* Make the current pack durable and visible: fdatasync(pack) -> index written to a temp
 * file, fsynced, renamed -> fsync(packs/) -> registered in the map. */
static int pack_finish(struct store_pack *w)
{
	struct snap_store *s = w->s;
	struct pack_idx_hdr hdr = {.n = w->n, .pack_size = w->size};
	size_t len = sizeof(hdr) + w->n * sizeof(struct pack_ent) + OBJ_ID_LEN;
	char fn[PACK_NAME_LEN + 8];
	uint8_t *buf;
	int ret;

	if (w->fd < 0)
		return 0;
	if (w->raw)
		return -EINVAL; /* a clone_raw not finished */
	if (!w->n) {
		pack_drop(w);
		return 0;
	}
	if ((w->cloned ? fsync(w->fd) : fdatasync(w->fd)) < 0)
		return -errno;
	w->cloned = false;
	memcpy(hdr.magic, PACK_MAGIC, 8);
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, &hdr, sizeof(hdr));
	memcpy(buf + sizeof(hdr), w->e, w->n * sizeof(struct pack_ent));
	ret = store_sha256(buf, len - OBJ_ID_LEN, buf + len - OBJ_ID_LEN);
	snprintf(fn, sizeof(fn), "%s.idx", w->name);
	if (!ret)
		ret = file_write_atomic(s->packfd, fn, buf, len, 0600); /* durable, dir synced */
	free(buf);
	if (ret)
		return ret;
	close(w->fd);
	w->fd = -1;
	pthread_rwlock_wrlock(&s->map_lock);
	ret = pack_register(s, w->name);
	pthread_rwlock_unlock(&s->map_lock);
	/* fresh pending set for the next pack */
	idset_free(&w->pend);
	if (idset_init(&w->pend, 1024, OBJ_ID_LEN) && !ret)
		ret = -ENOMEM;
	return ret;
}

static int pack_append(struct store_pack *w, const void *buf, size_t len,
		       const uint8_t id[OBJ_ID_LEN]);

/* The dedup lookup of a put: true when the store or this writer has id already. */
static bool pack_dedup(struct store_pack *w, const uint8_t id[OBJ_ID_LEN])
{
	struct snap_store *s = w->s;

	if (pack_has(s, id) || idset_find(&w->pend, id))
		return true;
	if (store_has(s, id)) {
		/* a loose object may not be durable yet (put by a copy in progress) */
		w->loose_hits = true;
		return true;
	}
	return false;
}

static int pack_clone(struct store_pack *w, int src_fd, uint64_t src_off, size_t len);

int store_pack_clone_raw(struct store_pack *w, int fd, uint64_t off, size_t len, uint64_t *at)
{
	int ret;

	if (len > UINT32_MAX)
		return -EINVAL;
	if (w->fd < 0 && (ret = pack_new(w)))
		return ret;
	ret = pack_clone(w, fd, off, len);
	if (ret)
		return ret;
	*at = w->size;
	w->size += len;
	w->raw += len;
	return w->size >= PACK_MAX;
}

static int pack_entry_add(struct store_pack *w, const uint8_t id[OBJ_ID_LEN], uint64_t off,
			  size_t len);

int store_pack_clone_finish(struct store_pack *w, uint64_t at, size_t len,
			    const uint8_t id[OBJ_ID_LEN], bool *existed)
{
	int ret = 0;

	*existed = true;
	if (w->raw < len || w->fd < 0)
		return -EINVAL;
	w->raw -= len;
	if (id && !pack_dedup(w, id)) {
		*existed = false;
		ret = pack_entry_add(w, id, at, len);
	} else if (fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at,
			     (off_t)len) < 0) {
		ret = -errno; /* unreferenced: a dedup'd or zero chunk keeps no blocks */
	}
	if (!ret && !w->raw && w->size >= PACK_MAX)
		ret = pack_finish(w);
	return ret;
}

int store_pack_put(struct store_pack *w, const void *buf, size_t len,
		   const uint8_t id[OBJ_ID_LEN], bool *existed)
{
	*existed = false;
	if (len > UINT32_MAX)
		return -EINVAL;
	if (pack_dedup(w, id)) {
		*existed = true;
		return 0;
	}
	return pack_append(w, buf, len, id);
}

/* Clone len bytes of src_fd at src_off to the end of the current pack. */
static int pack_clone(struct store_pack *w, int src_fd, uint64_t src_off, size_t len)
{
	struct file_clone_range fcr = {
		.src_fd = src_fd, .src_offset = src_off, .src_length = len,
		.dest_offset = w->size,
	};

	if (ioctl(w->fd, FICLONERANGE, &fcr) < 0) {
		int e = errno;
		if (e == EOPNOTSUPP || e == EXDEV || e == EINVAL || e == ENOTTY || e == EBADF ||
		    e == ENOSYS || e == EPERM)
			return -EOPNOTSUPP;
		return -e;
	}
	w->cloned = true;
	return 0;
}

/* Record object id at off in the current pack. */
static int pack_entry_add(struct store_pack *w, const uint8_t id[OBJ_ID_LEN], uint64_t off,
			  size_t len)
{
	bool added;

	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 1024;
		void *p = reallocarray(w->e, cap, sizeof(*w->e));
		if (!p)
			return -ENOMEM;
		w->e = p;
		w->cap = cap;
	}
	if (!idset_add(&w->pend, id, &added))
		return -ENOMEM;
	memcpy(w->e[w->n].id, id, OBJ_ID_LEN);
	w->e[w->n].off = off;
	w->e[w->n].len = (uint32_t)len;
	w->e[w->n].pad = 0;
	w->n++;
	return 0;
}

/* Append one object to the writer's current pack (opening one if needed). */
static int pack_append(struct store_pack *w, const void *buf, size_t len,
		       const uint8_t id[OBJ_ID_LEN])
{
	int ret;

	if (w->fd < 0 && (ret = pack_new(w)))
		return ret;
	ret = file_write_full(w->fd, buf, len); /* sequential: offset == size */
	if (!ret)
		ret = pack_entry_add(w, id, w->size, len);
	if (ret)
		return ret;
	w->size += len;
	/* start writeback early, so the final fdatasync has little left to do */
	if (w->size - w->synced >= PACK_WB_STEP) {
		sync_file_range(w->fd, (off_t)w->synced, (off_t)(w->size - w->synced),
				SYNC_FILE_RANGE_WRITE);
		w->synced = w->size;
	}
	if (w->size >= PACK_MAX)
		return pack_finish(w);
	return 0;
}

int store_pack_commit(struct store_pack *w)
{
	int ret = pack_finish(w);

	if (!ret && w->loose_hits)
		ret = store_sync(w->s);
	return ret;
}

void store_pack_free(struct store_pack *w)
{
	if (!w)
		return;
	pack_drop(w); /* an unfinished pack: nothing references it */
	idset_free(&w->pend);
	free(w->e);
	free(w);
}

/* ---- objects ------------------------------------------------------------------------- */


/* pread exactly len bytes from off: 0, -EBADMSG if the file is shorter, or -errno. */
static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EBADMSG;
		got += (size_t)n;
	}
	return 0;
}

/* Write buf to a fresh temp file in directory dfd; its name goes to tmp. */
static int write_tmp(struct snap_store *s, int dfd, const void *buf, size_t len, char tmp[64])
{
	int fd = -1, ret;

	for (int tries = 0; fd < 0; tries++) {
		unsigned long seq = atomic_fetch_add_explicit(&s->tmpseq, 1, memory_order_relaxed);

		snprintf(tmp, 64, TMP_PREFIX "%d.%lu", (int)getpid(), seq);
		fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		/* EEXIST: a stale temp file of an earlier process with our pid */
		if (fd < 0 && (errno != EEXIST || tries >= 100))
			return -errno;
	}
	ret = file_write_full(fd, buf, len);
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (ret)
		unlinkat(dfd, tmp, 0);
	return ret;
}

int store_put(struct snap_store *s, const void *buf, size_t len, uint8_t id[OBJ_ID_LEN],
	      bool *existed)
{
	char hex[OBJ_HEX_LEN + 1], tmp[64];
	struct stat st;
	int dfd, ret;

	ret = store_sha256(buf, len, id);
	if (ret)
		return ret;
	if (pack_has(s, id)) {
		if (existed)
			*existed = true;
		return 0;
	}
	obj_id_hex(id, hex);
	dfd = fan_fd(s, id[0], true);
	if (dfd < 0)
		return dfd;
	if (fstatat(dfd, hex + 2, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (S_ISREG(st.st_mode) && (uint64_t)st.st_size == len) {
			if (existed)
				*existed = true;
			return 0;
		}
		/* torn by a crash before store_sync (or damaged): replace it */
		log_warn("object %s has %lld bytes, expected %zu: rewriting it", hex,
			 (long long)st.st_size, len);
	} else if (errno != ENOENT) {
		return -errno;
	}
	ret = write_tmp(s, dfd, buf, len, tmp);
	if (ret)
		return ret;
	if (renameat(dfd, tmp, dfd, hex + 2) < 0) {
		ret = -errno;
		unlinkat(dfd, tmp, 0);
		return ret;
	}
	if (existed)
		*existed = false;
	return 0;
}

int store_open_object(struct snap_store *s, const uint8_t id[OBJ_ID_LEN], uint64_t *off)
{
	char hex[OBJ_HEX_LEN + 1];
	uint32_t len;
	int dfd, fd;

	fd = pack_find(s, id, off, &len);
	if (fd != -ENOENT)
		return fd;
	*off = 0;
	dfd = fan_fd(s, id[0], false);
	if (dfd < 0)
		return dfd;
	obj_id_hex(id, hex);
	fd = openat(dfd, hex + 2, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int store_get(struct snap_store *s, const uint8_t id[OBJ_ID_LEN], void *buf, size_t len)
{
	char hex[OBJ_HEX_LEN + 1];
	struct stat st;
	uint64_t off;
	uint32_t plen;
	int fd, ret;

	fd = pack_find(s, id, &off, &plen);
	if (fd >= 0) {
		ret = plen == len ? read_full(fd, buf, len, off) : -EBADMSG;
		goto out_verify;
	}
	if (fd != -ENOENT)
		return fd;
	fd = store_open_object(s, id, &off);
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != len) {
		ret = -EBADMSG;
		goto out_close;
	}
	ret = read_full(fd, buf, len, 0);
out_verify:
	if (!ret && !store_verify(buf, len, id))
		ret = -EBADMSG;
out_close:
	close(fd);
	if (ret == -EBADMSG) {
		obj_id_hex(id, hex);
		log_err("object %s is corrupt (content or length does not match its name)", hex);
	}
	return ret;
}

bool store_has(struct snap_store *s, const uint8_t id[OBJ_ID_LEN])
{
	char hex[OBJ_HEX_LEN + 1];
	struct stat st;
	int dfd;

	if (pack_has(s, id))
		return true;
	dfd = fan_fd(s, id[0], false);
	if (dfd < 0)
		return false;
	obj_id_hex(id, hex);
	return fstatat(dfd, hex + 2, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

int store_copy_object(struct snap_store *src, struct snap_store *dst, const uint8_t id[OBJ_ID_LEN],
		      size_t len, bool *copied)
{
	uint8_t got[OBJ_ID_LEN];
	bool existed = false;
	void *buf;
	int ret;

	if (copied)
		*copied = false;
	if (store_has(dst, id))
		return 0;
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	ret = store_get(src, id, buf, len);
	if (ret)
		goto out_free;
	ret = store_put(dst, buf, len, got, &existed);
	if (!ret && memcmp(got, id, OBJ_ID_LEN))
		ret = -EIO; /* cannot happen: store_get verified the bytes */
	if (!ret && copied)
		*copied = !existed;
out_free:
	free(buf);
	return ret;
}

int store_sync(struct snap_store *s)
{
	return syncfs(s->dirfd) < 0 ? -errno : 0;
}

int store_remove_object(struct snap_store *s, const uint8_t id[OBJ_ID_LEN])
{
	char hex[OBJ_HEX_LEN + 1];
	int dfd = fan_fd(s, id[0], false);

	if (dfd < 0)
		return dfd;
	obj_id_hex(id, hex);
	return unlinkat(dfd, hex + 2, 0) < 0 ? -errno : 0;
}

/* ---- walking the objects ------------------------------------------------------------- */

/* Called for each entry of a fan-out directory: dfd is that directory, name the entry, id
 * the object id (NULL when the name is not an object name). Non-zero stops the walk. */
typedef int (*obj_walk_fn)(void *arg, int dfd, const char *name, const uint8_t *id);

static int obj_walk(struct snap_store *s, obj_walk_fn fn, void *arg)
{
	int ret = 0;

	for (unsigned int b = 0; b < FANOUT && !ret; b++) {
		struct dirent *de;
		DIR *d;
		int dfd = fan_fd(s, b, false), fd;

		if (dfd == -ENOENT)
			continue;
		if (dfd < 0)
			return dfd;
		/* a fresh open file description: readdir must not share dfd's position */
		fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		d = fdopendir(fd);
		if (!d) {
			ret = -errno;
			close(fd);
			return ret;
		}
		for (;;) {
			char hex[OBJ_HEX_LEN + 1];
			uint8_t id[OBJ_ID_LEN];
			bool ok;

			errno = 0;
			de = readdir(d);
			if (!de) {
				ret = errno ? -errno : 0;
				break;
			}
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			ok = strlen(de->d_name) == OBJ_HEX_LEN - 2;
			if (ok) {
				fan_name(b, hex);
				memcpy(hex + 2, de->d_name, OBJ_HEX_LEN - 1);
				ok = obj_id_parse(hex, id) == 0;
			}
			ret = fn(arg, dfd, de->d_name, ok ? id : NULL);
			if (ret)
				break;
		}
		closedir(d);
	}
	return ret;
}

/* ---- GC ------------------------------------------------------------------------------ */

struct gc_state {
	struct snap_store *s;
	struct idset live;
	uint64_t freed, tmps;
};

static int gc_mark(void *arg, const char *snap_id)
{
	struct gc_state *g = arg;
	struct manifest *m;
	int ret = manifest_read(g->s, snap_id, &m);

	if (ret == -ENOENT)
		return 0; /* removed since readdir saw it */
	if (ret) {
		log_err("gc: manifest %s unreadable (%s): not sweeping", snap_id, strerror(-ret));
		return ret;
	}
	for (size_t i = 0; i < m->nentries && !ret; i++) {
		bool added;
		if (!idset_add(&g->live, m->e[i].id, &added))
			ret = -ENOMEM;
	}
	manifest_free(m);
	return ret;
}

static int gc_sweep(void *arg, int dfd, const char *name, const uint8_t *id)
{
	struct gc_state *g = arg;

	if (id) {
		if (idset_find(&g->live, id))
			return 0;
		g->freed++;
	} else if (!strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX))) {
		g->tmps++;
	} else {
		log_warn("gc: leaving unknown file objects/.../%s alone", name);
		return 0;
	}
	if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

/* A pack's name and a dup of its fd, or -ENOENT when slot i is empty or past the end. */
static int pack_get(struct snap_store *s, size_t i, char name[PACK_NAME_LEN])
{
	int fd = -ENOENT;

	pthread_rwlock_rdlock(&s->map_lock);
	if (i < s->npacks && s->packs[i]) {
		snprintf(name, PACK_NAME_LEN, "%s", s->packs[i]->name);
		fd = fcntl(s->packs[i]->fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			fd = -errno;
	}
	pthread_rwlock_unlock(&s->map_lock);
	return fd;
}

static size_t packs_count(struct snap_store *s)
{
	size_t n;

	pthread_rwlock_rdlock(&s->map_lock);
	n = s->npacks;
	pthread_rwlock_unlock(&s->map_lock);
	return n;
}

/* Is pack i's entry e where the map finds its id (the copy readers use)? */
static bool pack_canonical(struct snap_store *s, size_t i, const struct pack_ent *e)
{
	uint8_t *slot;
	bool r;

	pthread_rwlock_rdlock(&s->map_lock);
	slot = idset_find(s->map, e->id);
	r = slot && map_loc(slot)->pack == i && map_loc(slot)->off == e->off;
	pthread_rwlock_unlock(&s->map_lock);
	return r;
}

static void pack_unlink(struct snap_store *s, const char *name)
{
	char fn[PACK_NAME_LEN + 8];

	/* the index first: a pack without an index is garbage, never the reverse */
	snprintf(fn, sizeof(fn), "%s.idx", name);
	unlinkat(s->packfd, fn, 0);
	snprintf(fn, sizeof(fn), "%s.pack", name);
	unlinkat(s->packfd, fn, 0);
}

/* Sweep the packs: a pack whose entries are all live stays; one with none live goes; the
 * others are rewritten with only their live entries (a new pack made durable first, then
 * the old one removed: a crash in between leaves duplicates, which the next GC drops).
 * Then stale temp files and packs without an index go, and the map is rebuilt. */
static int gc_packs(struct gc_state *g)
{
	struct snap_store *s = g->s;
	size_t np = packs_count(s);
	struct store_pack *w = NULL;
	uint8_t *buf = NULL;
	size_t bufcap = 0;
	struct dirent *de;
	DIR *d;
	int ret = 0, fd;

	for (size_t i = 0; i < np && !ret; i++) {
		char name[PACK_NAME_LEN];
		struct pack_idx_hdr hdr;
		struct pack_ent *ents = NULL;
		uint64_t live = 0;
		int pfd = pack_get(s, i, name);

		if (pfd == -ENOENT)
			continue;
		if (pfd < 0)
			return pfd;
		ret = pack_idx_read(s, name, &hdr, &ents);
		if (ret) {
			close(pfd);
			ret = ret == -ENOMEM ? ret : 0; /* changed under us: leave it */
			continue;
		}
		for (uint64_t k = 0; k < hdr.n; k++)
			if (idset_find(&g->live, ents[k].id) && pack_canonical(s, i, &ents[k]))
				live++;
		if (live < hdr.n && live) {
			if (!w)
				ret = store_pack_begin(s, &w);
			for (uint64_t k = 0; k < hdr.n && !ret; k++) {
				struct pack_ent *e = &ents[k];
				if (!idset_find(&g->live, e->id) || !pack_canonical(s, i, e))
					continue;
				if (e->len > bufcap) {
					void *nb = realloc(buf, e->len);
					if (!nb) {
						ret = -ENOMEM;
						break;
					}
					buf = nb;
					bufcap = e->len;
				}
				/* copied as is: a corrupt object stays detectably corrupt */
				ret = read_full(pfd, buf, e->len, e->off);
				if (!ret)
					ret = pack_append(w, buf, e->len, e->id);
			}
			if (!ret)
				ret = pack_finish(w);
		}
		if (!ret && live < hdr.n) {
			pack_unlink(s, name);
			g->freed += hdr.n - live;
		}
		close(pfd);
		free(ents);
	}
	store_pack_free(w);
	free(buf);
	if (ret)
		goto out_reload;
	/* leftovers of crashed writers: temp indexes, packs whose index was never written */
	fd = openat(s->packfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		ret = -errno;
		goto out_reload;
	}
	while ((de = readdir(d))) {
		char idx[PACK_NAME_LEN + 8];
		struct stat st;

		if (de->d_name[0] == '.' && strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			unlinkat(s->packfd, de->d_name, 0);
			g->tmps++;
		} else if (pack_name_ok(de->d_name, ".pack")) {
			snprintf(idx, sizeof(idx), "%.*s.idx", PACK_NAME_LEN - 1, de->d_name);
			if (fstatat(s->packfd, idx, &st, AT_SYMLINK_NOFOLLOW) < 0 &&
			    errno == ENOENT) {
				unlinkat(s->packfd, de->d_name, 0);
				g->tmps++;
			}
		}
	}
	closedir(d);
out_reload:
	pthread_rwlock_wrlock(&s->map_lock);
	fd = packs_load(s);
	pthread_rwlock_unlock(&s->map_lock);
	return ret ? ret : fd;
}

int store_gc(struct snap_store *s, uint64_t *freed)
{
	struct gc_state g = {.s = s};
	int ret;

	if (freed)
		*freed = 0;
	ret = idset_init(&g.live, 1024, OBJ_ID_LEN);
	if (ret)
		return ret;
	ret = manifest_each(s, gc_mark, &g);
	if (ret)
		goto out_free;
	ret = obj_walk(s, gc_sweep, &g);
	if (!ret)
		ret = gc_packs(&g);
	if (freed)
		*freed = g.freed;
	log_info("gc: %zu objects referenced, %llu removed, %llu stale temp files removed%s",
		 g.live.n, (unsigned long long)g.freed, (unsigned long long)g.tmps,
		 ret ? " (sweep failed)" : "");
out_free:
	idset_free(&g.live);
	return ret;
}

/* ---- check --------------------------------------------------------------------------- */

/* The value stored after each id in the check's reference map. */
struct chk_ref {
	uint64_t idx;	  /* the chunk index in the first manifest referencing it */
	uint32_t snap;	  /* that manifest, an index into chk_state.snaps */
	uint32_t present; /* an object file with this name exists */
};

struct chk_state {
	struct snap_store *s;
	struct check_report *r;
	struct idset refs;
	char (*snaps)[ID_MAX]; /* readable manifests */
	size_t nsnaps, capsnaps;
	EVP_MD_CTX *ctx;
	uint8_t *buf;
};

static struct chk_ref *chk_ref(uint8_t *slot)
{
	return (struct chk_ref *)(slot + OBJ_ID_LEN);
}

static int chk_collect(void *arg, const char *snap_id)
{
	struct chk_state *c = arg;
	struct manifest *m;
	int ret = manifest_read(c->s, snap_id, &m);

	if (ret == -ENOENT)
		return 0;
	if (ret == -EUCLEAN) {
		c->r->bad_manifests_n++;
		if (c->r->bad_manifest)
			c->r->bad_manifest(c->r->arg, snap_id);
		return 0;
	}
	if (ret)
		return ret;
	if (c->nsnaps == c->capsnaps) {
		size_t cap = c->capsnaps ? c->capsnaps * 2 : 16;
		void *p = reallocarray(c->snaps, cap, sizeof(*c->snaps));
		if (!p || cap > UINT32_MAX) {
			ret = -ENOMEM;
			goto out_free;
		}
		c->snaps = p;
		c->capsnaps = cap;
	}
	snprintf(c->snaps[c->nsnaps], ID_MAX, "%s", snap_id);
	for (size_t i = 0; i < m->nentries; i++) {
		bool added;
		uint8_t *slot = idset_add(&c->refs, m->e[i].id, &added);

		if (!slot) {
			ret = -ENOMEM;
			goto out_free;
		}
		if (added) {
			chk_ref(slot)->idx = m->e[i].idx;
			chk_ref(slot)->snap = (uint32_t)c->nsnaps;
		}
	}
	c->nsnaps++;
out_free:
	manifest_free(m);
	return ret;
}

/* Re-hash dfd/name against id: 0, -EBADMSG (mismatch, not a regular file), or -errno. */
static int chk_hash_file(struct chk_state *c, int dfd, const char *name, const uint8_t *id)
{
	uint8_t h[OBJ_ID_LEN];
	unsigned int hn = 0;
	struct stat st;
	int fd, ret = 0;

	fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ELOOP ? -EBADMSG : -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EBADMSG;
		goto out_close;
	}
	if (!EVP_DigestInit_ex(c->ctx, sha256(), NULL)) {
		ret = -ENOMEM;
		goto out_close;
	}
	for (;;) {
		ssize_t n = read(fd, c->buf, CHECK_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto out_close;
		}
		if (n == 0)
			break;
		if (!EVP_DigestUpdate(c->ctx, c->buf, (size_t)n)) {
			ret = -ENOMEM;
			goto out_close;
		}
	}
	if (!EVP_DigestFinal_ex(c->ctx, h, &hn) || hn != OBJ_ID_LEN)
		ret = -ENOMEM;
	else if (memcmp(h, id, OBJ_ID_LEN))
		ret = -EBADMSG;
out_close:
	close(fd);
	return ret;
}

/* Account for one object whose bytes hashed to ret (0, -EBADMSG, -ENOENT, -errno). */
static int chk_account(struct chk_state *c, const uint8_t *id, uint8_t *slot, int ret)
{
	struct check_report *r = c->r;
	char hex[OBJ_HEX_LEN + 1];

	if (ret == -ENOENT)
		return 0; /* removed since readdir saw it */
	if (ret == -ENOMEM)
		return ret;
	r->objects_checked++;
	obj_id_hex(id, hex);
	if (ret) {
		r->corrupt_n++;
		if (r->corrupt)
			r->corrupt(r->arg, hex, slot ? c->snaps[chk_ref(slot)->snap] : NULL,
				   slot ? chk_ref(slot)->idx : 0);
	}
	if (!slot) {
		r->leaked_n++;
		if (r->leaked)
			r->leaked(r->arg, hex);
	}
	return 0;
}

static int chk_object(void *arg, int dfd, const char *name, const uint8_t *id)
{
	struct chk_state *c = arg;
	uint8_t *slot;

	if (!id)
		return 0; /* temp files and strangers are GC's business */
	slot = idset_find(&c->refs, id);
	if (slot)
		chk_ref(slot)->present = 1;
	return chk_account(c, id, slot, chk_hash_file(c, dfd, name, id));
}

/* Re-hash every entry of every pack. */
static int chk_packs(struct chk_state *c)
{
	size_t np = packs_count(c->s);
	int ret = 0;

	for (size_t i = 0; i < np && !ret; i++) {
		char name[PACK_NAME_LEN];
		struct pack_idx_hdr hdr;
		struct pack_ent *ents = NULL;
		int pfd = pack_get(c->s, i, name);

		if (pfd == -ENOENT)
			continue;
		if (pfd < 0)
			return pfd;
		ret = pack_idx_read(c->s, name, &hdr, &ents);
		if (ret) {
			close(pfd);
			ret = ret == -ENOMEM ? ret : 0;
			continue;
		}
		for (uint64_t k = 0; k < hdr.n && !ret; k++) {
			struct pack_ent *e = &ents[k];
			uint8_t *slot = idset_find(&c->refs, e->id);
			int hr = -EBADMSG;

			if (slot)
				chk_ref(slot)->present = 1;
			if (e->len <= CHECK_BUF) {
				hr = read_full(pfd, c->buf, e->len, e->off);
				if (!hr && !store_verify(c->buf, e->len, e->id))
					hr = -EBADMSG;
				if (hr == -ENOENT)
					hr = -EIO;
			}
			ret = chk_account(c, e->id, slot, hr);
		}
		close(pfd);
		free(ents);
	}
	return ret;
}

static int chk_missing(struct chk_state *c, const char *snap_id)
{
	struct check_report *r = c->r;
	char hex[OBJ_HEX_LEN + 1];
	struct manifest *m;
	int ret = manifest_read(c->s, snap_id, &m);

	if (ret) {
		/* read fine a moment ago: removed or replaced since */
		log_warn("check: manifest %s changed during the check (%s)", snap_id,
			 strerror(-ret));
		return ret == -ENOMEM ? ret : 0;
	}
	for (size_t i = 0; i < m->nentries; i++) {
		uint8_t *slot = idset_find(&c->refs, m->e[i].id);

		if (slot && chk_ref(slot)->present)
			continue;
		r->missing_n++;
		if (r->missing) {
			obj_id_hex(m->e[i].id, hex);
			r->missing(r->arg, snap_id, m->e[i].idx, hex);
		}
	}
	manifest_free(m);
	return 0;
}

int store_check(struct snap_store *s, struct check_report *r)
{
	struct chk_state c = {.s = s, .r = r};
	int ret;

	r->objects_checked = r->corrupt_n = r->missing_n = r->leaked_n = r->bad_manifests_n = 0;
	ret = idset_init(&c.refs, 1024, OBJ_ID_LEN + sizeof(struct chk_ref));
	if (ret)
		return ret;
	c.ctx = EVP_MD_CTX_new();
	c.buf = malloc(CHECK_BUF);
	if (!c.ctx || !c.buf) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = manifest_each(s, chk_collect, &c);
	if (ret)
		goto out_free;
	ret = obj_walk(s, chk_object, &c);
	if (!ret)
		ret = chk_packs(&c);
	if (ret)
		goto out_free;
	for (size_t i = 0; i < c.nsnaps && !ret; i++)
		ret = chk_missing(&c, c.snaps[i]);
out_free:
	free(c.buf);
	EVP_MD_CTX_free(c.ctx);
	free(c.snaps);
	idset_free(&c.refs);
	return ret;
}

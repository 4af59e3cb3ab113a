/* SPDX-License-Identifier: MIT */
/*
 * fuzz_volhdr.c - libFuzzer target for the volume header and chunk map parsing of
 * vol_open() (blockdev/vol.c: hdr_read, the map check, unclean-shutdown recovery), followed
 * by a short I/O script on whatever opened.
 *
 * Design notes
 * ------------
 * Input layout:
 *   byte 0      flags: bit 0 re-seal the header's SHA-256 (so mutations get past it);
 *               bit 1 take exactly size/chunk_size chunk states (zero-padded) when the
 *               header's geometry is sane, the rest being the I/O script, and lay them out
 *               as the map file's sealed 4 KiB pages (4064 states, page number, CRC-32;
 *               see blockdev/vol.c), so mutated states get past the page checksums;
 *               otherwise the map file is all the remaining bytes, raw; bit 2 give the data file the header's size
 *               (else half of it: vol_open must refuse); bit 3 pass a base snapshot.
 *   byte 1, 2   base manifest: bit i of byte 1 lists chunk i (i < 8) in the base, bit i of
 *               byte 2 makes its object real (stored) rather than missing.
 *   4096 bytes  the header file (blockdev/vol.c "struct vol_hdr", padded; the SHA-256 of
 *               bytes [0, 4064) at 4064).
 *   then        the map, then up to 16 script steps of 8 bytes each.
 * The files are written into a fresh directory on a RAM file system; vol_open runs with a
 * fixed master key and ephemeral key, so seeds made by vol_create (tests/fuzz/mkseeds.c)
 * with the same keys open, encrypted ones included.
 *
 * Oracles: vol_open returns 0 or one of the documented refusals; after an open, every write
 * that succeeded reads back (immediately, and after flush + close + reopen) byte for byte
 * within a model window of the first 8 MiB; a discarded range reads as zeros.
 */
#include "blockdev/blockdev.h"
#include "snapshot/snapshot.h"
#include "tests/fuzz/fuzz_util.h"

#include <zlib.h>

#define HDR_SIZE 4096u
#define HDR_SUM_OFF (HDR_SIZE - 32)
#define OFF_FLAGS 12
#define OFF_SIZE 16
#define OFF_CHUNK 24
#define HDR_F_BASE 8u
#define MAP_DPAGE 4096u	   /* blockdev/vol.c: on-disk map page */
#define MAP_PER_PAGE 4064u /* states per page */
#define MAP_CRC_OFF 4092u
#define WINDOW (8u << 20) /* the model covers the volume's first 8 MiB */
#define MAX_STEPS 16
#define MAX_IO (256u << 10)

static uint8_t master[VOL_MASTER_KEY_LEN], ephemeral[VOL_DATA_KEY_LEN];
static struct blk_engine *eng;
static struct snap_store *store;
static char root[256];
static int root_fd;
static uint8_t *model, *known; /* WINDOW bytes each; known: 1 = model holds the content */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int ret;

	(void)argc;
	(void)argv;
	log_set_level(LOG_ERR);
	/* the keys tests/fuzz/mkseeds.c uses */
	for (size_t i = 0; i < sizeof(master); i++)
		master[i] = (uint8_t)(0xa0 + i);
	for (size_t i = 0; i < sizeof(ephemeral); i++)
		ephemeral[i] = (uint8_t)(0x30 + i);
	fuzz_mkdtemp(root, "volhdr");
	root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = root_fd < 0 ? -errno : blk_engine_open("psync", 4, &eng);
	if (!ret)
		ret = store_open(root_fd, "store", &store);
	model = malloc(WINDOW);
	known = malloc(WINDOW);
	if (ret || !model || !known) {
		fprintf(stderr, "fuzz_volhdr: set-up failed in %s: %s\n", root, strerror(-ret));
		abort();
	}
	return 0;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The base manifest: chunks 0..7 as bytes 1 and 2 of the input say. */
static int make_base(uint8_t listed, uint8_t real, uint64_t size, uint32_t cs,
		     struct manifest **out)
{
	struct manifest *m = calloc(1, sizeof(*m));
	uint64_t nchunks = size / cs;
	uint8_t *buf = NULL;

	if (!m)
		return -ENOMEM;
	m->volume_size = size;
	m->chunk_size = cs;
	snprintf(m->volume_id, sizeof(m->volume_id), "vol-0123456789abcdef0");
	snprintf(m->lineage, sizeof(m->lineage), "snap-0123456789abcdef0");
	m->e = calloc(8, sizeof(*m->e));
	if (!m->e) {
		free(m);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < 8 && i < nchunks; i++) {
		if (!(listed >> i & 1))
			continue;
		struct manifest_entry *e = &m->e[m->nentries++];
		e->idx = i;
		memset(e->id, 0xee, OBJ_ID_LEN); /* missing unless stored below */
		e->id[0] = (uint8_t)i;
		if ((real >> i & 1) && cs <= (1u << 20)) {
			if (!buf && !(buf = malloc(cs)))
				continue;
			for (uint32_t k = 0; k < cs; k++)
				buf[k] = (uint8_t)(k * 7 + i);
			store_put(store, buf, cs, e->id, NULL);
		}
	}
	free(buf);
	*out = m;
	return 0;
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

/* Compare a read-back range with the model where the model knows the content. */
static void check_range(const uint8_t *got, uint64_t off, size_t len, const char *when)
{
	for (size_t i = 0; i < len && off + i < WINDOW; i++)
		FUZZ_ASSERT(!known[off + i] || got[i] == model[off + i],
			    "%s: byte %llu reads %02x, model %02x", when,
			    (unsigned long long)(off + i), got[i], model[off + i]);
}

static bool all_known(uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (off + i >= WINDOW || !known[off + i])
			return false;
	return true;
}

struct range {
	uint64_t off;
	size_t len;
};

/* The script: read, write, discard, flush, grow, hydrate; models the window. */
static void run_script(struct vol *v, struct fuzz_in *in, struct range *written, int *nw)
{
	uint8_t *buf = malloc(MAX_IO);

	if (!buf)
		return;
	for (int s = 0; s < MAX_STEPS && in->pos < in->len; s++) {
		uint8_t op = fuzz_u8(in) % 6;
		uint32_t a = fuzz_u32(in);
		uint32_t b = (uint32_t)fuzz_u8(in) | (uint32_t)fuzz_u8(in) << 8;
		uint8_t seed = fuzz_u8(in);
		uint64_t size = vol_size(v), span = MIN(size, (uint64_t)WINDOW);
		uint64_t off = span ? a % span : 0;
		size_t len = (size_t)MIN((uint64_t)(b % MAX_IO) + 1, size - off);
		int r;

		switch (op) {
		case 0:
			r = vol_pread(v, buf, len, off);
			FUZZ_ASSERT(r == (int)len || r < 0, "read -> %d", r);
			FUZZ_ASSERT(r >= 0 || !all_known(off, len),
				    "a read of written data failed: %d", r);
			if (r >= 0)
				check_range(buf, off, len, "read");
			break;
		case 1:
			fill(buf, len, a ^ seed);
			r = vol_pwrite(v, buf, len, off);
			FUZZ_ASSERT(r == (int)len || r < 0, "write -> %d", r);
			for (size_t i = 0; i < len && off + i < WINDOW; i++) {
				model[off + i] = buf[i];
				known[off + i] = r >= 0; /* a failed write may be torn */
			}
			if (r >= 0 && *nw < MAX_STEPS) {
				written[(*nw)++] = (struct range){off, len};
				uint8_t *back = malloc(len);
				if (back) {
					r = vol_pread(v, back, len, off);
					FUZZ_ASSERT(r == (int)len, "read after write -> %d", r);
					check_range(back, off, len, "read after write");
					free(back);
				}
			}
			break;
		case 2:
			r = vol_pdiscard(v, off, len);
			for (size_t i = 0; i < len && off + i < WINDOW; i++) {
				model[off + i] = 0;
				known[off + i] = r >= 0;
			}
			break;
		case 3:
			vol_fsync(v);
			break;
		case 4: {
			uint64_t cs = vol_chunk_size(v);
			uint64_t grow = (uint64_t)(seed % 4 + 1) * cs;
			if (size + grow <= (64ull << 30))
				vol_resize(v, size + grow);
			break;
		}
		case 5: {
			uint64_t next = 0, left = 0;
			for (int k = 0; k < 4 && vol_hydrate(v, &next, 8, &left) == 1; k++)
				;
			break;
		}
		}
	}
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vol_keys keys = {.master = master, .ephemeral = ephemeral};
	struct fuzz_in in = {data, size, 0};
	struct manifest *bm = NULL;
	struct vol_base base = {0};
	struct range written[MAX_STEPS];
	int nw = 0;
	uint8_t hdr[HDR_SIZE] = {0}, flags, listed, real;
	struct vol *v = NULL;
	char name[32];
	static unsigned long seq;
	int dfd = -1, fd, ret;

	flags = fuzz_u8(&in);
	listed = fuzz_u8(&in);
	real = fuzz_u8(&in);
	for (size_t i = 0; i < HDR_SIZE; i++)
		hdr[i] = fuzz_u8(&in);
	if (flags & 1)
		fuzz_reseal(hdr, HDR_SUM_OFF, HDR_SUM_OFF);
	uint64_t vsize = get64(hdr + OFF_SIZE);
	uint32_t cs = get32(hdr + OFF_CHUNK);
	bool sane = cs >= 4096 && !(cs & (cs - 1)) && cs <= (64u << 20) && vsize &&
		    vsize % cs == 0 && vsize <= (1ull << 40);
	size_t maplen;
	if ((flags & 2) && sane && vsize / cs <= (1u << 20))
		maplen = (size_t)(vsize / cs);
	else
		maplen = in.len - in.pos;
	uint8_t *map = calloc(1, maplen ? maplen : 1);
	if (!map)
		return 0;
	for (size_t i = 0; i < maplen; i++)
		map[i] = fuzz_u8(&in);
	if ((flags & 2) && sane && vsize / cs <= (1u << 20)) {
		/* seal the states into pages the way vol.c writes them */
		size_t np = (maplen + MAP_PER_PAGE - 1) / MAP_PER_PAGE;
		uint8_t *pages = calloc(np ? np : 1, MAP_DPAGE);
		if (!pages) {
			free(map);
			return 0;
		}
		for (size_t pg = 0; pg < np; pg++) {
			uint8_t *q = pages + pg * MAP_DPAGE;
			uint64_t idx = pg;
			size_t n = MIN((size_t)MAP_PER_PAGE, maplen - pg * MAP_PER_PAGE);
			memcpy(q, map + pg * MAP_PER_PAGE, n);
			memcpy(q + MAP_PER_PAGE, &idx, 8);
			uint32_t crc = (uint32_t)crc32(0, q, MAP_CRC_OFF);
			memcpy(q + MAP_CRC_OFF, &crc, 4);
		}
		free(map);
		map = pages;
		maplen = np * MAP_DPAGE;
	}

	snprintf(name, sizeof(name), "v%lu", seq++);
	if (mkdirat(root_fd, name, 0700) < 0 ||
	    (dfd = openat(root_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		goto out;
	if (mkdirat(dfd, "vol", 0700) < 0)
		goto out;
	int vfd = openat(dfd, "vol", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (vfd < 0)
		goto out;
	ret = fuzz_write_file(vfd, "header", hdr, sizeof(hdr));
	if (!ret)
		ret = fuzz_write_file(vfd, "map", map, maplen);
	fd = openat(vfd, "data", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		uint64_t dsize = vsize <= (1ull << 40) ? vsize : 0;
		if (ftruncate(fd, (off_t)((flags & 4) ? dsize : dsize / 2)) < 0)
			ret = -errno;
		close(fd);
	}
	close(vfd);
	if (ret)
		goto out;
	if ((flags & 8) && sane && !make_base(listed, real, vsize, cs, &bm)) {
		base.store = store;
		base.m = bm;
	}

	ret = vol_open(dfd, "vol", eng, &keys, bm ? &base : NULL, &v);
	FUZZ_ASSERT(ret == 0 || ret == -EUCLEAN || ret == -ENODATA || ret == -ENOKEY ||
			    ret == -EKEYREJECTED || ret == -ENOMEM || ret == -EINVAL ||
			    ret == -EIO,
		    "vol_open -> %d (%s)", ret, strerror(-ret));
	FUZZ_ASSERT(ret != 0 || (sane && (bm || !(hdr[OFF_FLAGS] & HDR_F_BASE))),
		    "vol_open accepted a header with bad geometry or a base it was not given");
	if (ret)
		goto out;
	memset(known, 0, WINDOW);
	run_script(v, &in, written, &nw);
	int flushed = vol_fsync(v);
	ret = vol_close(v);
	v = NULL;
	FUZZ_ASSERT(ret == flushed || flushed == 0, "close -> %d after flush %d", ret, flushed);
	if (flushed)
		goto out;
	/* everything written and flushed survives a clean close and reopen */
	ret = vol_open(dfd, "vol", eng, &keys, bm ? &base : NULL, &v);
	FUZZ_ASSERT(ret == 0, "reopen after a clean close -> %d (%s)", ret, strerror(-ret));
	for (int i = 0; i < nw; i++) {
		uint8_t *back = malloc(written[i].len);
		if (!back)
			break;
		int r = vol_pread(v, back, written[i].len, written[i].off);
		FUZZ_ASSERT(r == (int)written[i].len || !all_known(written[i].off, written[i].len),
			    "read of flushed data after reopen -> %d", r);
		if (r >= 0)
			check_range(back, written[i].off, written[i].len, "after reopen");
		free(back);
	}
	vol_close(v);
	v = NULL;
out:
	if (v)
		vol_close(v);
	if (dfd >= 0)
		close(dfd);
	file_remove_tree(root_fd, name);
	manifest_free(bm);
	free(map);
	return 0;
}

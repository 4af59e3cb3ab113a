/* SPDX-License-Identifier: MIT */
/*
 * mkseeds.c - writes the binary seed inputs of fuzz_manifest and fuzz_volhdr into
 * tests/fuzz/corpus/{manifest,volhdr}/ (the text seeds of fuzz_ctl and fuzz_cli are
 * committed as they are). Seeds are made by the real writers (manifest_write,
 * vol_create/vol_open/vol_close) so that they are valid inputs the fuzzer mutates from.
 *
 *   make build-fuzz/mkseeds && build-fuzz/mkseeds tests/fuzz/corpus
 *
 * The keys match fuzz_volhdr.c's, so encrypted seeds open there.
 */
#include "blockdev/blockdev.h"
#include "snapshot/snapshot.h"
#include "tests/fuzz/fuzz_util.h"

static uint8_t master[VOL_MASTER_KEY_LEN], ephemeral[VOL_DATA_KEY_LEN];
static int out_man, out_vol, work;

static void die(const char *what, int err)
{
	fprintf(stderr, "mkseeds: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void *slurp(int dfd, const char *name, size_t *len)
{
	void *buf;
	int ret = file_read_all(dfd, name, &buf, len);

	if (ret)
		die(name, ret);
	return buf;
}

static void emit(int dfd, const char *name, const uint8_t *pre, size_t plen, const void *a,
		 size_t alen, const void *b, size_t blen, const void *c, size_t clen)
{
	uint8_t *buf = malloc(plen + alen + blen + clen);

	memcpy(buf, pre, plen);
	memcpy(buf + plen, a, alen);
	if (blen)
		memcpy(buf + plen + alen, b, blen);
	if (clen)
		memcpy(buf + plen + alen + blen, c, clen);
	int ret = fuzz_write_file(dfd, name, buf, plen + alen + blen + clen);
	if (ret)
		die(name, ret);
	free(buf);
}

static void manifests(void)
{
	struct snap_store *st;
	struct manifest m = {.volume_size = 1 << 20, .chunk_size = 64 << 10};
	struct manifest_entry e[3];
	int ret = store_open(work, "store", &st);

	if (ret)
		die("store_open", ret);
	snprintf(m.volume_id, sizeof(m.volume_id), "vol-0123456789abcdef0");
	snprintf(m.lineage, sizeof(m.lineage), "snap-0123456789abcdef0");
	struct {
		const char *name;
		size_t n;
		const char *parent;
		uint32_t flags;
		uint32_t chunk;
		uint64_t size;
	} v[] = {
		{"empty", 0, "", 0, 64 << 10, 1 << 20},
		{"three", 3, "", 0, 64 << 10, 1 << 20},
		{"child", 2, "snap-00000000000000001", 0, 4096, 1 << 16},
		{"encrypted", 1, "", MANIFEST_F_ENCRYPTED, 64 << 10, 1ull << 30},
	};
	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		for (size_t k = 0; k < 3; k++) {
			e[k].idx = k * 5 + 1;
			memset(e[k].id, (int)(0x11 * (k + 1)), OBJ_ID_LEN);
		}
		m.nentries = v[i].n;
		m.e = e;
		m.flags = v[i].flags;
		m.chunk_size = v[i].chunk;
		m.volume_size = v[i].size;
		memset(m.wrapped_key, m.flags ? 0x77 : 0, sizeof(m.wrapped_key));
		snprintf(m.parent, sizeof(m.parent), "%s", v[i].parent);
		ret = manifest_write(st, "snap-0123456789abcdef0", &m);
		if (ret)
			die("manifest_write", ret);
		int mfd = openat(work, "store/manifests", O_RDONLY | O_DIRECTORY);
		size_t len;
		void *buf = slurp(mfd, "snap-0123456789abcdef0", &len);
		close(mfd);
		char name[64];
		for (uint8_t reseal = 0; reseal < 2; reseal++) {
			snprintf(name, sizeof(name), "%s%s", v[i].name, reseal ? "-reseal" : "");
			emit(out_man, name, &reseal, 1, buf, len, NULL, 0, NULL, 0);
		}
		free(buf);
	}
	store_close(st);
}

/* The chunk states of a map file of sealed 4 KiB pages (4064 states each, see
 * blockdev/vol.c), compacted in place; returns their count (n, or fewer when short). */
static size_t map_states(uint8_t *map, size_t len, uint64_t n)
{
	size_t out = 0;

	for (size_t pg = 0; pg * 4096 < len && out < n; pg++) {
		size_t k = (size_t)MIN((uint64_t)4064, n - out);
		memmove(map + out, map + pg * 4096, k);
		out += k;
	}
	return out;
}

/* A script step of fuzz_volhdr: op, offset, length, seed. */
static size_t step(uint8_t *p, uint8_t op, uint32_t off, uint16_t len, uint8_t seed)
{
	p[0] = op;
	for (int i = 0; i < 4; i++)
		p[1 + i] = (uint8_t)(off >> (8 * i));
	p[5] = (uint8_t)len;
	p[6] = (uint8_t)(len >> 8);
	p[7] = seed;
	return 8;
}

static void volumes(struct blk_engine *eng)
{
	struct vol_keys keys = {.master = master, .ephemeral = ephemeral};
	uint8_t script[128];
	size_t sl = 0;

	sl += step(script + sl, 1, 1000, 5000, 1);  /* write */
	sl += step(script + sl, 0, 0, 9000, 0);     /* read */
	sl += step(script + sl, 2, 70000, 4096, 0); /* discard */
	sl += step(script + sl, 3, 0, 0, 0);	    /* flush */
	sl += step(script + sl, 4, 0, 0, 1);	    /* grow */
	sl += step(script + sl, 1, 131072, 65535, 2);
	sl += step(script + sl, 5, 0, 0, 0); /* hydrate */
	sl += step(script + sl, 0, 65536, 65535, 0);
	struct {
		const char *name;
		struct vol_params p;
		uint8_t flags, listed, real;
		bool unclean, written;
	} v[] = {
		{"plain", {.size = 1 << 20}, 0x07, 0, 0, false, true},
		{"small-chunks", {.size = 1 << 16, .chunk_size = 4096}, 0x07, 0, 0, false, false},
		{"wrapped", {.size = 1 << 20, .crypt = VOL_CRYPT_WRAPPED}, 0x07, 0, 0, false, true},
		{"ephemeral", {.size = 1 << 20, .crypt = VOL_CRYPT_EPHEMERAL}, 0x07, 0, 0, false, false},
		{"base", {.size = 1 << 20, .base_snap = "snap-0123456789abcdef0"}, 0x0f, 0x0f, 0x05,
		 false, false},
		{"unclean", {.size = 1 << 20}, 0x07, 0, 0, true, true},
		{"unsealed", {.size = 1 << 20}, 0x06, 0, 0, false, false},
	};
	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		struct vol *vol = NULL;
		int ret = vol_create(work, v[i].name, &v[i].p, &keys);
		if (ret)
			die("vol_create", ret);
		if (v[i].written && !v[i].p.base_snap) {
			ret = vol_open(work, v[i].name, eng, &keys, NULL, &vol);
			if (ret)
				die("vol_open", ret);
			uint8_t buf[8192];
			memset(buf, 0x5c, sizeof(buf));
			vol_pwrite(vol, buf, sizeof(buf), 65536);
			vol_fsync(vol);
			if (!v[i].unclean)
				vol_close(vol);
		}
		int dfd = openat(work, v[i].name, O_RDONLY | O_DIRECTORY);
		size_t hl, ml;
		void *hdr = slurp(dfd, "header", &hl), *map = slurp(dfd, "map", &ml);
		close(dfd);
		uint8_t pre[3] = {v[i].flags, v[i].listed, v[i].real};
		if (v[i].flags & 2) /* fuzz_volhdr seals the pages: give it the states only */
			ml = map_states(map, ml, v[i].p.size / (v[i].p.chunk_size ?: VOL_DEFAULT_CHUNK));
		if (!strcmp(v[i].name, "unsealed"))
			((uint8_t *)hdr)[hl - 1] ^= 1; /* only the re-seal flag makes it open */
		emit(out_vol, v[i].name, pre, 3, hdr, hl, map, ml, script, sl);
		if (v[i].unclean)
			vol_close(vol); /* after the header (clean flag cleared) was captured */
		free(hdr);
		free(map);
	}
}

int main(int argc, char **argv)
{
	struct blk_engine *eng;
	char tmp[256], path[4096];

	if (argc != 2) {
		fprintf(stderr, "usage: mkseeds CORPUS_DIR (e.g. tests/fuzz/corpus)\n");
		return 2;
	}
	for (size_t i = 0; i < sizeof(master); i++)
		master[i] = (uint8_t)(0xa0 + i);
	for (size_t i = 0; i < sizeof(ephemeral); i++)
		ephemeral[i] = (uint8_t)(0x30 + i);
	snprintf(path, sizeof(path), "%s/manifest", argv[1]);
	mkdir(path, 0755);
	out_man = open(path, O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof(path), "%s/volhdr", argv[1]);
	mkdir(path, 0755);
	out_vol = open(path, O_RDONLY | O_DIRECTORY);
	fuzz_mkdtemp(tmp, "mkseeds");
	work = open(tmp, O_RDONLY | O_DIRECTORY);
	if (out_man < 0 || out_vol < 0 || work < 0)
		die(argv[1], errno);
	int ret = blk_engine_open("psync", 4, &eng);
	if (ret)
		die("engine", ret);
	manifests();
	volumes(eng);
	blk_engine_close(eng);
	fuzz_rmtree(tmp);
	return 0;
}

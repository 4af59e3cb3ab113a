/* SPDX-License-Identifier: MIT */
/*
 * fuzz_manifest.c - libFuzzer target for manifest_parse() (snapshot/manifest.c), the parser
 * of the snapshot manifests every restore and GC reads from disk.
 *
 * Design notes
 * ------------
 * Input: one flags byte, then the manifest file's bytes. Flag bit 0 re-seals the SHA-256
 * trailer over the mutated bytes, so that the fuzzer also reaches the code behind the
 * checksum (entry decoding, allocation); without it, the checksum rejects almost every
 * mutation, which is the other half of the contract.
 *
 * Oracles beyond "no crash, no sanitizer report, no leak": a manifest that parses obeys
 * the format's rules (geometry, sorted in-range entries), manifest_lookup finds every entry
 * and nothing between them, and write(parse(x)) -> read gives back the same manifest (a
 * store in a scratch directory, created once).
 */
#include "snapshot/snapshot.h"
#include "tests/fuzz/fuzz_util.h"

static struct snap_store *store;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char dir[256];
	int dfd, ret;

	(void)argc;
	(void)argv;
	log_set_level(LOG_ERR);
	fuzz_mkdtemp(dir, "manifest");
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = dfd < 0 ? -errno : store_open(dfd, "store", &store);
	if (ret) {
		fprintf(stderr, "fuzz_manifest: cannot open a scratch store in %s: %s\n", dir,
			strerror(-ret));
		abort();
	}
	return 0;
}

static bool same(const struct manifest *a, const struct manifest *b)
{
	return a->volume_size == b->volume_size && a->chunk_size == b->chunk_size &&
	       a->flags == b->flags && !strcmp(a->volume_id, b->volume_id) &&
	       !strcmp(a->parent, b->parent) && !strcmp(a->lineage, b->lineage) &&
	       !memcmp(a->wrapped_key, b->wrapped_key, sizeof(a->wrapped_key)) &&
	       a->nentries == b->nentries &&
	       (!a->nentries || !memcmp(a->e, b->e, a->nentries * sizeof(*a->e)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct manifest *m = NULL, *m2 = NULL;
	uint8_t *buf;
	size_t len;
	int ret;

	if (size < 1)
		return 0;
	len = size - 1;
	buf = malloc(len ? len : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, len);
	if ((data[0] & 1) && len >= 32)
		fuzz_reseal(buf, len - 32, len - 32);
	ret = manifest_parse(buf, len, &m);
	FUZZ_ASSERT(ret == 0 || ret == -EUCLEAN || ret == -ENOMEM, "manifest_parse -> %d", ret);
	FUZZ_ASSERT((ret == 0) == (m != NULL), "ret %d with m %p", ret, (void *)m);
	if (ret)
		goto out;

	uint64_t nchunks = m->volume_size / m->chunk_size;
	FUZZ_ASSERT(m->chunk_size >= 4096 && !(m->chunk_size & (m->chunk_size - 1)) &&
			    m->volume_size && m->volume_size % m->chunk_size == 0,
		    "geometry %llu/%u", (unsigned long long)m->volume_size, m->chunk_size);
	FUZZ_ASSERT(id_valid("vol", m->volume_id) && id_valid("snap", m->lineage) &&
			    (!m->parent[0] || id_valid("snap", m->parent)),
		    "ids");
	for (size_t i = 0; i < m->nentries; i++) {
		FUZZ_ASSERT(m->e[i].idx < nchunks, "entry %zu idx %llu >= %llu", i,
			    (unsigned long long)m->e[i].idx, (unsigned long long)nchunks);
		FUZZ_ASSERT(!i || m->e[i].idx > m->e[i - 1].idx, "entries not ascending at %zu", i);
		const uint8_t *id = manifest_lookup(m, m->e[i].idx);
		FUZZ_ASSERT(id && !memcmp(id, m->e[i].id, OBJ_ID_LEN), "lookup of entry %zu", i);
		if (m->e[i].idx + 1 < nchunks && (i + 1 == m->nentries || m->e[i + 1].idx > m->e[i].idx + 1))
			FUZZ_ASSERT(!manifest_lookup(m, m->e[i].idx + 1), "lookup between entries");
	}
	if (!m->nentries || m->e[0].idx > 0)
		FUZZ_ASSERT(!manifest_lookup(m, 0), "lookup of an absent chunk 0");

	/* round trip through the store: what was parsed is written and read back unchanged */
	ret = manifest_write(store, "snap-0123456789abcdef0", m);
	FUZZ_ASSERT(ret == 0, "manifest_write of a parsed manifest -> %d", ret);
	ret = manifest_read(store, "snap-0123456789abcdef0", &m2);
	FUZZ_ASSERT(ret == 0 && same(m, m2), "round trip -> %d", ret);
	manifest_remove(store, "snap-0123456789abcdef0");
out:
	manifest_free(m);
	manifest_free(m2);
	free(buf);
	return 0;
}

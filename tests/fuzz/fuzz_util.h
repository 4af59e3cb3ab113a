/* SPDX-License-Identifier: MIT */
/*
 * fuzz_util.h - helpers shared by the libFuzzer targets in tests/fuzz/: scratch
 * directories on a RAM file system, a deterministic byte reader over the input, and the
 * checksum re-sealing that lets a fuzzer get past a SHA-256 trailer.
 *
 * Header-only on purpose: each target is one translation unit plus the ebsim objects
 * (see the fuzz rules in the Makefile and tests/fuzz/README.md).
 */
#ifndef EBSIM_FUZZ_UTIL_H
#define EBSIM_FUZZ_UTIL_H

#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

/* A crash report for an invariant the target checks itself (libFuzzer sees the abort). */
#define FUZZ_ASSERT(cond, ...)                                                             \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__,  \
				__LINE__, #cond);                                          \
			fprintf(stderr, __VA_ARGS__);                                      \
			fputc('\n', stderr);                                               \
			abort();                                                           \
		}                                                                          \
	} while (0)

static char fuzz_scratch[256];

static void fuzz_scratch_remove(void)
{
	if (fuzz_scratch[0])
		file_remove_tree(AT_FDCWD, fuzz_scratch);
}

/* A fresh directory for scratch files: $EBSIM_FUZZ_TMP, else /dev/shm, else /tmp, removed
 * at exit (the first one made). Returns buf, or aborts: a harness without scratch space is
 * useless. */
static inline const char *fuzz_mkdtemp(char buf[256], const char *what)
{
	const char *base = getenv("EBSIM_FUZZ_TMP");
	struct stat st;

	if (!base || !*base)
		base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
	snprintf(buf, 256, "%s/ebsim-fuzz-%s-XXXXXX", base, what);
	if (!mkdtemp(buf)) {
		fprintf(stderr, "fuzz: cannot create a scratch directory under %s: %s\n", base,
			strerror(errno));
		abort();
	}
	if (!fuzz_scratch[0]) {
		snprintf(fuzz_scratch, sizeof(fuzz_scratch), "%s", buf);
		atexit(fuzz_scratch_remove);
	}
	return buf;
}

/* Remove everything below (and including) path. */
static inline void fuzz_rmtree(const char *path)
{
	file_remove_tree(AT_FDCWD, path);
}

/* Consume input bytes deterministically; past the end, every read yields zeros. */
struct fuzz_in {
	const uint8_t *p;
	size_t len, pos;
};

static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
	return in->pos < in->len ? in->p[in->pos++] : 0;
}

static inline uint32_t fuzz_u32(struct fuzz_in *in)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v |= (uint32_t)fuzz_u8(in) << (8 * i);
	return v;
}

static inline uint64_t fuzz_u64(struct fuzz_in *in)
{
	return (uint64_t)fuzz_u32(in) | (uint64_t)fuzz_u32(in) << 32;
}

/* Replace the 32-byte SHA-256 at sum_off with the hash of buf[0, hashed_len). The targets
 * do this when the input asks (a flag bit), so that mutations reach the code behind a
 * checksum instead of dying at it. */
static inline void fuzz_reseal(uint8_t *buf, size_t hashed_len, size_t sum_off)
{
	SHA256(buf, hashed_len, buf + sum_off);
}

/* Write len bytes to dirfd/name (created 0600, truncated). 0 or -errno. */
static inline int fuzz_write_file(int dirfd, const char *name, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0)
		return -errno;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		p += n;
		len -= (size_t)n;
	}
	close(fd);
	return 0;
}

#endif

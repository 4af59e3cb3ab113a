/* SPDX-License-Identifier: MIT */
/*
 * crypt.c - AES-256-XTS per 4 KiB sector and RFC 3394 key wrapping, through OpenSSL EVP.
 *
 * Design notes
 * ------------
 * EVP contexts are not thread-safe, and setting an XTS key costs a key schedule. Each
 * thread keeps one encrypt and one decrypt context and the key they were set up with; a
 * request for another key re-keys that thread's context. Volumes are served from a few
 * threads (the FUSE loop and the engine completion threads), so re-keying is rare.
 * Key material in the per-thread cache is wiped when the thread exits.
 */
#include "blockdev/crypt_i.h"
#include "common/common.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

struct xts_cache {
	EVP_CIPHER_CTX *ctx[2]; /* [0] decrypt, [1] encrypt */
	uint8_t key[2][64];
	bool keyed[2];
};

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_free(void *p)
{
	struct xts_cache *c = p;

	for (int i = 0; i < 2; i++)
		EVP_CIPHER_CTX_free(c->ctx[i]);
	secure_zero(c, sizeof(*c));
	free(c);
}

static void cache_init(void)
{
	pthread_key_create(&cache_key, cache_free);
}

static EVP_CIPHER_CTX *xts_ctx(const uint8_t key[64], int enc)
{
	struct xts_cache *c;

	pthread_once(&cache_once, cache_init);
	c = pthread_getspecific(cache_key);
	if (!c) {
		c = calloc(1, sizeof(*c));
		if (!c)
			return NULL;
		pthread_setspecific(cache_key, c);
	}
	if (!c->ctx[enc]) {
		c->ctx[enc] = EVP_CIPHER_CTX_new();
		if (!c->ctx[enc])
			return NULL;
	}
	if (!c->keyed[enc] || memcmp(c->key[enc], key, 64)) {
		if (EVP_CipherInit_ex(c->ctx[enc], EVP_aes_256_xts(), NULL, key, NULL, enc) != 1)
			return NULL;
		memcpy(c->key[enc], key, 64);
		c->keyed[enc] = true;
	}
	return c->ctx[enc];
}

int crypt_xts(const uint8_t key[64], bool encrypt, uint8_t *buf, size_t len, uint64_t byte_off)
{
	EVP_CIPHER_CTX *ctx = xts_ctx(key, encrypt ? 1 : 0);
	uint64_t sector = byte_off / 4096;
	int outl;

	if (!ctx || (len % 4096) || (byte_off % 4096))
		return -EIO;
	for (size_t done = 0; done < len; done += 4096, sector++) {
		uint8_t iv[16] = {0};
		for (int i = 0; i < 8; i++)
			iv[i] = (uint8_t)(sector >> (8 * i));
		if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1 ||
		    EVP_CipherUpdate(ctx, buf + done, &outl, buf + done, 4096) != 1 || outl != 4096)
			return -EIO;
	}
	return 0;
}

static int wrap_op(const uint8_t kek[32], int enc, const uint8_t *in, int inl, uint8_t *out,
		   int outcap)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int l1 = 0, l2 = 0, ret = -EKEYREJECTED;

	if (!ctx)
		return -ENOMEM;
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_wrap(), NULL, kek, NULL, enc) == 1 &&
	    EVP_CipherUpdate(ctx, out, &l1, in, inl) == 1 &&
	    EVP_CipherFinal_ex(ctx, out + l1, &l2) == 1 && l1 + l2 <= outcap)
		ret = l1 + l2;
	EVP_CIPHER_CTX_free(ctx);
	return ret;
}

int crypt_wrap(const uint8_t kek[32], const uint8_t key[64], uint8_t out[CRYPT_WRAPPED_LEN])
{
	int n = wrap_op(kek, 1, key, 64, out, CRYPT_WRAPPED_LEN);

	return n == CRYPT_WRAPPED_LEN ? 0 : -EIO;
}

int crypt_unwrap(const uint8_t kek[32], const uint8_t in[CRYPT_WRAPPED_LEN], uint8_t key[64])
{
	uint8_t tmp[CRYPT_WRAPPED_LEN];
	int n = wrap_op(kek, 0, in, CRYPT_WRAPPED_LEN, tmp, sizeof(tmp));

	if (n != 64) {
		secure_zero(tmp, sizeof(tmp));
		return -EKEYREJECTED;
	}
	memcpy(key, tmp, 64);
	secure_zero(tmp, sizeof(tmp));
	return 0;
}

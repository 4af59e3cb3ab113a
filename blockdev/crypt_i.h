/* SPDX-License-Identifier: MIT */
/* crypt_i.h - blockdev-private AES-256-XTS sector encryption and data-key wrapping. */
#ifndef EBSIM_CRYPT_I_H
#define EBSIM_CRYPT_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPT_WRAPPED_LEN 72 /* RFC 3394 key wrap of a 64-byte key */

/* Encrypt or decrypt buf in place: len is a multiple of 4096, byte_off the volume offset of
 * buf[0] (sector aligned). Each 4 KiB sector uses its sector number (little-endian) as the
 * XTS tweak. 0 or -EIO. Safe to call from any thread. */
int crypt_xts(const uint8_t key[64], bool encrypt, uint8_t *buf, size_t len, uint64_t byte_off);

/* AES-256 key wrap (RFC 3394) of a 64-byte data key under a 32-byte master key. */
int crypt_wrap(const uint8_t kek[32], const uint8_t key[64], uint8_t out[CRYPT_WRAPPED_LEN]);
/* Unwrap; -EKEYREJECTED when the master key does not match (integrity check fails). */
int crypt_unwrap(const uint8_t kek[32], const uint8_t in[CRYPT_WRAPPED_LEN], uint8_t key[64]);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * bundle.c - instance-store AMI bundles in the ec2-ami-tools format (manifest 2007-10-10).
 *
 * Design notes
 * ------------
 * Format (as ec2-bundle-image writes it; see bundle.h for the pipeline):
 *  - tar: one member named PREFIX (ec2-bundle-image symlinks the image to PREFIX and tars
 *    it with -h), owner/group 0, GNU format, written by libarchive; its SHA-1 (lower-case
 *    hex) is <image><digest algorithm='SHA1'>.
 *  - gzip -9 of the tar stream (zlib, gzip wrapper), then AES-128-CBC with PKCS#7 padding
 *    (what `openssl enc -e -aes-128-cbc -K key -iv iv` does). The key and IV are 16 random
 *    bytes each; what is RSA-wrapped (PKCS#1 v1.5) is their 32-character lower-case hex
 *    text, exactly like the Ruby tool's public_encrypt(Format::bin2hex(..)).
 *  - parts: 10 MiB (CHUNK_SIZE) slices named PREFIX.part.N where N is zero-padded to the
 *    number of digits of the part count (FileUtil.split: 3 parts -> .part.0..2,
 *    12 parts -> .part.00..11).
 *  - manifest: element order of ManifestV20071010#init: version, bundler(name, version,
 *    release), machine_configuration(architecture, block_device_mapping/mapping(virtual,
 *    device) sorted by virtual name, kernel_id, ramdisk_id), image(name, user, type,
 *    digest, size, bundled_size, ec2_encrypted_key, user_encrypted_key, ec2_encrypted_iv,
 *    user_encrypted_iv, parts(part index=..(filename, digest))), signature. Serialised
 *    like REXML's to_s: no whitespace, attributes in single quotes, empty elements as <x/>.
 *    We build a libxml2 tree and serialise it with one xmlTextWriter routine (quote char
 *    '\''), used both to write the file and to produce the signed bytes.
 *  - signature: RSA-SHA1 (PKCS#1 v1.5), hex, over the serialised <machine_configuration>
 *    followed by the serialised <image> (ManifestV20071010#sign).
 *
 * Parsing re-serialises the parsed tree with the same routine to get the signed bytes
 * (REXML's authenticate does the same: parse, to_s, cut the elements out), so what is
 * verified is exactly what was parsed: no comment/CDATA/duplicate-element tricks. To make
 * re-serialisation unambiguous, text and attribute values must be plain printable ASCII
 * without & < > " ' (no escaping ever happens), comments, PIs, CDATA, entities and DTDs
 * are refused, and the element shape is checked (each known element once, no unknown
 * ones, at most BUNDLE_MAX_PARTS parts with index = position).
 *
 * Unbundle order: signature, then every part's size and SHA-1 (pass 1), then decrypt while
 * re-hashing each part (pass 2: a part changed in between fails), inflate, SHA-1 the tar
 * stream, untar the single member into out_fd, then check tar digest, member name and size.
 *
 * Region keys: ec2-key.pem is linked into place first (link() fails with EEXIST for a
 * racing loser, who then uses the winner's key); ec2-cert.pem is then derived from
 * whichever key won, so a crash between the two links only delays the cert.
 */
#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlwriter.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/common.h"
#include "snapshot/bundle.h"

#define BUNDLER_NAME "ebsim-ami"
#define BUNDLER_VERSION "1.0"
#define BUNDLER_RELEASE "1"
#define SYM_ALG "AES-128-CBC"
#define DIGEST_ALG "SHA1"
#define IO_BUF (1u << 20)
#define PEM_MAX (64u * 1024)

static int fail(char *err, int ret, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, int ret, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err, BUNDLE_ERR_MAX, fmt, ap);
		va_end(ap);
	}
	return ret;
}

static void hex_encode(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode hex text of exactly 2*n digits (n = 0: any even length, malloc'd into *out). */
static int hex_decode(const char *s, uint8_t *fixed, size_t n, uint8_t **out, size_t *outlen)
{
	size_t len = strlen(s);
	uint8_t *b = fixed;

	if (len == 0 || len % 2 || (fixed && len != 2 * n) || len > 8192)
		return -EINVAL;
	if (!fixed) {
		b = malloc(len / 2);
		if (!b)
			return -ENOMEM;
	}
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			if (!fixed)
				free(b);
			return -EINVAL;
		}
		b[i] = (uint8_t)(hi << 4 | lo);
	}
	if (!fixed) {
		*out = b;
		*outlen = len / 2;
	}
	return 0;
}

/* ---- names ---------------------------------------------------------------------------- */

bool bundle_valid_object(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > BUNDLE_NAME_MAX || s[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
			return false;
	return true;
}

bool bundle_valid_prefix(const char *s)
{
	/* ".manifest.xml" (13) and ".part.NNNN" (10) must still fit in an object name */
	return bundle_valid_object(s) && strlen(s) <= BUNDLE_NAME_MAX - 16;
}

bool bundle_valid_part_name(const char *s)
{
	const char *p;

	if (!bundle_valid_object(s))
		return false;
	p = strstr(s, ".part.");
	if (!p || p == s)
		return false;
	for (const char *q; (q = strstr(p + 1, ".part.")); p = q)
		;
	p += 6;
	if (!*p || strlen(p) > 4)
		return false;
	return strspn(p, "0123456789") == strlen(p);
}

bool bundle_valid_bucket(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	int dots = 0, digits_only = 1;

	if (n < 3 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!(islower((unsigned char)c) || isdigit((unsigned char)c) || c == '.' || c == '-'))
			return false;
		if (c == '.') {
			dots++;
			if (s[i + 1] == '.' || s[i + 1] == '-' || (i && s[i - 1] == '-'))
				return false;
		} else if (!isdigit((unsigned char)c)) {
			digits_only = 0;
		}
	}
	return !(dots == 3 && digits_only); /* not an IPv4 address */
}

bool bundle_valid_arch(const char *s)
{
	return s && (!strcmp(s, "i386") || !strcmp(s, "x86_64") || !strcmp(s, "arm64"));
}

static bool valid_region(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	return n >= 1 && n <= 32 && isalnum((unsigned char)s[0]) &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

static bool valid_virtual(const char *s)
{
	if (!strcmp(s, "ami") || !strcmp(s, "root") || !strcmp(s, "swap"))
		return true;
	if (strncmp(s, "ephemeral", 9))
		return false;
	s += 9;
	return *s && strlen(s) <= 2 && strspn(s, "0123456789") == strlen(s);
}

static bool valid_device(const char *s)
{
	size_t n = strlen(s);

	if (!strncmp(s, "/dev/", 5))
		s += 5;
	return n < 64 && *s && isalpha((unsigned char)*s) &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789") == strlen(s);
}

static bool valid_aki(const char *s, const char *prefix)
{
	return s && !strncmp(s, prefix, 4) && strlen(s) <= 21 && strlen(s) > 4 &&
	       strspn(s + 4, "0123456789abcdef") == strlen(s + 4);
}

int bundle_bdm_parse(const char *s, struct bundle_bdm *out, size_t max, char *err)
{
	size_t n = 0;
	const char *p = s;

	if (!s || !*s)
		return fail(err, -EINVAL, "empty block device mapping");
	while (*p) {
		const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p);
		const char *eq = memchr(p, '=', (size_t)(end - p));
		size_t vl, dl;

		if (n == max || n == BUNDLE_MAX_BDM)
			return fail(err, -E2BIG, "too many block device mappings (at most %zu)",
				    MIN(max, (size_t)BUNDLE_MAX_BDM));
		if (!eq)
			return fail(err, -EINVAL, "block device mapping '%.*s' is not VIRTUAL=DEVICE",
				    (int)MIN(end - p, 64), p);
		vl = (size_t)(eq - p);
		dl = (size_t)(end - eq - 1);
		if (vl >= sizeof(out[n].virtual_name) || dl >= sizeof(out[n].device))
			return fail(err, -EINVAL, "block device mapping '%.*s' is too long",
				    (int)MIN(end - p, 64), p);
		memcpy(out[n].virtual_name, p, vl);
		out[n].virtual_name[vl] = '\0';
		memcpy(out[n].device, eq + 1, dl);
		out[n].device[dl] = '\0';
		if (!valid_virtual(out[n].virtual_name))
			return fail(err, -EINVAL,
				    "virtual name '%s' is not ami, root, swap or ephemeralN",
				    out[n].virtual_name);
		if (!valid_device(out[n].device))
			return fail(err, -EINVAL, "device name '%s' is not valid (e.g. sda1, /dev/sdb)",
				    out[n].device);
		for (size_t i = 0; i < n; i++)
			if (!strcmp(out[i].virtual_name, out[n].virtual_name))
				return fail(err, -EINVAL, "virtual name '%s' is mapped twice",
					    out[n].virtual_name);
		n++;
		if (!comma)
			break;
		p = comma + 1;
		if (!*p)
			return fail(err, -EINVAL, "block device mapping ends with ','");
	}
	return (int)n;
}

/* ---- small file helpers ------------------------------------------------------------- */

static int read_small(const char *path, char **out, size_t *len, char *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret;
	struct stat st;
	char *buf;

	if (fd < 0)
		return fail(err, -errno, "cannot open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)PEM_MAX) {
		close(fd);
		return fail(err, -EINVAL, "%s is not a regular file of at most %u bytes", path,
			    PEM_MAX);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	ret = (int)read(fd, buf, (size_t)st.st_size);
	close(fd);
	if (ret != (int)st.st_size) {
		free(buf);
		return fail(err, -EIO, "cannot read %s", path);
	}
	buf[st.st_size] = '\0';
	*out = buf;
	*len = (size_t)st.st_size;
	return 0;
}

static X509 *cert_from_pem(const char *pem, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	X509 *x;

	if (!b)
		return NULL;
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	return x;
}

static EVP_PKEY *key_from_pem(const char *pem, size_t len)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *k;

	if (!b)
		return NULL;
	k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	return k;
}

static EVP_PKEY *cert_file_pubkey(const char *path, char *err, int *ret)
{
	char *pem;
	size_t len;
	X509 *x;
	EVP_PKEY *k = NULL;

	*ret = read_small(path, &pem, &len, err);
	if (*ret)
		return NULL;
	x = cert_from_pem(pem, len);
	free(pem);
	if (!x || !(k = X509_get_pubkey(x)) || EVP_PKEY_id(k) != EVP_PKEY_RSA) {
		EVP_PKEY_free(k);
		X509_free(x);
		*ret = fail(err, -EINVAL, "%s is not a PEM X.509 certificate with an RSA key", path);
		return NULL;
	}
	X509_free(x);
	return k;
}

/* RSA PKCS#1 v1.5 encrypt in under pub; hex of the ciphertext into *hex (malloc'd). */
static int rsa_wrap(EVP_PKEY *pub, const char *in, char **hex)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pub, NULL);
	uint8_t out[1024];
	size_t outlen = sizeof(out);
	int ret = -EIO;

	if (!c)
		return -ENOMEM;
	if (EVP_PKEY_encrypt_init(c) <= 0 || EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) <= 0 ||
	    EVP_PKEY_encrypt(c, out, &outlen, (const uint8_t *)in, strlen(in)) <= 0)
		goto out;
	*hex = malloc(2 * outlen + 1);
	if (!*hex) {
		ret = -ENOMEM;
		goto out;
	}
	hex_encode(out, outlen, *hex);
	ret = 0;
out:
	EVP_PKEY_CTX_free(c);
	return ret;
}

/* Decrypt a wrapped key/IV: must give 32 hex digits (16 bytes). */
static int rsa_unwrap(EVP_PKEY *priv, const uint8_t *in, size_t inlen, uint8_t out[16])
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(priv, NULL);
	uint8_t buf[1024];
	size_t len = sizeof(buf);
	int ret = -EKEYREJECTED;

	if (!c)
		return -ENOMEM;
	if (EVP_PKEY_decrypt_init(c) > 0 && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) > 0 &&
	    EVP_PKEY_decrypt(c, buf, &len, in, inlen) > 0 && len == 32) {
		char hex[33];

		memcpy(hex, buf, 32);
		hex[32] = '\0';
		if (hex_decode(hex, out, 16, NULL, NULL) == 0)
			ret = 0;
	}
	ERR_clear_error();
	secure_zero(buf, sizeof(buf));
	EVP_PKEY_CTX_free(c);
	return ret;
}

/* ---- manifest serialisation (one routine for writing and for the signed bytes) ------- */

static int ser_node(xmlTextWriterPtr w, xmlNodePtr n)
{
	if (n->type == XML_TEXT_NODE)
		return xmlTextWriterWriteString(w, n->content) < 0 ? -EIO : 0;
	if (n->type != XML_ELEMENT_NODE)
		return -EINVAL;
	if (xmlTextWriterStartElement(w, n->name) < 0)
		return -EIO;
	for (xmlAttrPtr a = n->properties; a; a = a->next) {
		xmlChar *v = xmlNodeGetContent((xmlNodePtr)a);
		int r = xmlTextWriterWriteAttribute(w, a->name, v ? v : BAD_CAST "");

		xmlFree(v);
		if (r < 0)
			return -EIO;
	}
	for (xmlNodePtr c = n->children; c; c = c->next) {
		int ret = ser_node(w, c);

		if (ret)
			return ret;
	}
	return xmlTextWriterEndElement(w) < 0 ? -EIO : 0;
}

/* Serialise the given nodes (whole document when doc != NULL) into a malloc'd string. */
static int serialise(xmlDocPtr doc, xmlNodePtr *nodes, size_t n, char **out, size_t *outlen)
{
	xmlBufferPtr buf = xmlBufferCreate();
	xmlTextWriterPtr w;
	int ret = -EIO;

	if (!buf)
		return -ENOMEM;
	w = xmlNewTextWriterMemory(buf, 0);
	if (!w) {
		xmlBufferFree(buf);
		return -ENOMEM;
	}
	if (xmlTextWriterSetQuoteChar(w, '\'') < 0)
		goto out;
	if (doc && xmlTextWriterStartDocument(w, NULL, NULL, NULL) < 0)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (nodes[i] && (ret = ser_node(w, nodes[i])) != 0)
			goto out;
	if (doc && xmlTextWriterEndDocument(w) < 0)
		goto out;
	xmlFreeTextWriter(w); /* flushes into buf */
	w = NULL;
	*outlen = (size_t)xmlBufferLength(buf);
	*out = malloc(*outlen + 1);
	if (!*out) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(*out, xmlBufferContent(buf), *outlen);
	(*out)[*outlen] = '\0';
	if (doc) {
		/* REXML's Document#to_s puts nothing between the declaration and the root
		 * and nothing after it; xmlTextWriter adds a newline at both places */
		char *nl = strstr(*out, "?>\n");

		if (nl) {
			memmove(nl + 2, nl + 3, *outlen - (size_t)(nl + 3 - *out) + 1);
			(*outlen)--;
		}
		while (*outlen && (*out)[*outlen - 1] == '\n')
			(*out)[--*outlen] = '\0';
	}
	ret = 0;
out:
	if (w)
		xmlFreeTextWriter(w);
	xmlBufferFree(buf);
	return ret;
}

static xmlNodePtr child(xmlNodePtr parent, const char *name, const char *text)
{
	return xmlNewChild(parent, NULL, BAD_CAST name, text ? BAD_CAST text : NULL);
}

/* ---- bundle creation ------------------------------------------------------------------ */

struct part_out {
	int fd;
	uint64_t len;
	EVP_MD_CTX *md;
	uint8_t sha1[BUNDLE_SHA1_LEN];
};

struct creator {
	const struct bundle_params *p;
	int dirfd;
	char prefix[BUNDLE_NAME_MAX + 1];
	EVP_MD_CTX *tar_md;
	z_stream z;
	bool z_init;
	EVP_CIPHER_CTX *cipher;
	struct part_out *parts;
	size_t n_parts, cap_parts;
	uint64_t bundled;
	uint8_t *zbuf, *cbuf;
	int err;
};

static void tmp_part_name(const struct creator *c, size_t i, char *out, size_t len)
{
	snprintf(out, len, ".%s.part.%zu.tmp", c->prefix, i);
}

/* FileUtil.split's naming: the index zero-padded to the number of digits of the count. */
static void final_part_name(const char *prefix, size_t n_parts, size_t i,
			    char out[BUNDLE_NAME_MAX + 32])
{
	char num[24];
	int width = snprintf(num, sizeof(num), "%zu", n_parts);

	snprintf(out, BUNDLE_NAME_MAX + 32, "%s.part.%0*zu", prefix, width, i);
}

static int part_put(struct creator *c, const uint8_t *b, size_t n)
{
	while (n) {
		struct part_out *po = c->n_parts ? &c->parts[c->n_parts - 1] : NULL;
		size_t k;

		if (!po || po->len == BUNDLE_PART_SIZE) {
			char name[BUNDLE_NAME_MAX + 32];

			if (po && EVP_DigestFinal_ex(po->md, po->sha1, NULL) <= 0)
				return -EIO;
			if (c->n_parts == BUNDLE_MAX_PARTS)
				return -E2BIG;
			if (c->n_parts == c->cap_parts) {
				size_t nc = c->cap_parts ? c->cap_parts * 2 : 16;
				struct part_out *np = realloc(c->parts, nc * sizeof(*np));

				if (!np)
					return -ENOMEM;
				c->parts = np;
				c->cap_parts = nc;
			}
			po = &c->parts[c->n_parts];
			memset(po, 0, sizeof(*po));
			po->fd = -1;
			c->n_parts++;
			tmp_part_name(c, c->n_parts - 1, name, sizeof(name));
			po->fd = openat(c->dirfd, name,
					O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
			if (po->fd < 0)
				return -errno;
			po->md = EVP_MD_CTX_new();
			if (!po->md || EVP_DigestInit_ex(po->md, EVP_sha1(), NULL) <= 0)
				return -ENOMEM;
		}
		k = MIN(n, BUNDLE_PART_SIZE - po->len);
		if (file_write_full(po->fd, b, k))
			return -errno ? -errno : -EIO;
		EVP_DigestUpdate(po->md, b, k);
		po->len += k;
		c->bundled += k;
		b += k;
		n -= k;
	}
	return 0;
}

static int encrypt_put(struct creator *c, const uint8_t *b, size_t n)
{
	while (n) {
		size_t k = MIN(n, (size_t)IO_BUF);
		int outl = 0;

		if (EVP_EncryptUpdate(c->cipher, c->cbuf, &outl, b, (int)k) <= 0)
			return -EIO;
		if (outl) {
			int ret = part_put(c, c->cbuf, (size_t)outl);

			if (ret)
				return ret;
		}
		b += k;
		n -= k;
	}
	return 0;
}

static int deflate_put(struct creator *c, const uint8_t *b, size_t n, int flush)
{
	c->z.next_in = (Bytef *)b;
	c->z.avail_in = (uInt)n;
	for (;;) {
		int zr, ret;

		c->z.next_out = c->zbuf;
		c->z.avail_out = IO_BUF;
		zr = deflate(&c->z, flush);
		if (zr == Z_STREAM_ERROR)
			return -EIO;
		ret = encrypt_put(c, c->zbuf, IO_BUF - c->z.avail_out);
		if (ret)
			return ret;
		if (flush == Z_FINISH ? zr == Z_STREAM_END : c->z.avail_out != 0)
			return 0;
	}
}

/* libarchive's sink: every tar byte is hashed, then gzipped, encrypted, split. */
static la_ssize_t tar_sink(struct archive *a, void *arg, const void *buf, size_t n)
{
	struct creator *c = arg;
	int ret;

	(void)a;
	EVP_DigestUpdate(c->tar_md, buf, n);
	ret = deflate_put(c, buf, n, Z_NO_FLUSH);
	if (ret) {
		c->err = ret;
		return -1;
	}
	return (la_ssize_t)n;
}

static int build_manifest(struct creator *c, uint64_t image_size, const uint8_t tar_sha1[20],
			  char *const wraps[4], const char *key_pem, size_t key_len, char **out,
			  size_t *outlen, char *err)
{
	const struct bundle_params *p = c->p;
	static const struct bundle_bdm defbdm[] = {{"ami", "sda1"}, {"root", "/dev/sda1"}};
	const struct bundle_bdm *bdm = p->n_bdm ? p->bdm : defbdm;
	size_t n_bdm = p->n_bdm ? p->n_bdm : ARRAY_SIZE(defbdm), order[BUNDLE_MAX_BDM];
	xmlDocPtr doc = xmlNewDoc(BAD_CAST "1.0");
	xmlNodePtr root, n, mc, img, parts, signed_nodes[2];
	char hex[2 * BUNDLE_SHA1_LEN + 1], num[32], *signed_data = NULL;
	size_t signed_len;
	EVP_PKEY *key = NULL;
	EVP_MD_CTX *md = NULL;
	uint8_t sig[1024];
	size_t siglen = sizeof(sig);
	char sighex[2 * sizeof(sig) + 1];
	int ret = -ENOMEM;

	if (!doc)
		return -ENOMEM;
	root = xmlNewNode(NULL, BAD_CAST "manifest");
	if (!root)
		goto out;
	xmlDocSetRootElement(doc, root);
	child(root, "version", BUNDLE_MANIFEST_VERSION);
	n = child(root, "bundler", NULL);
	child(n, "name", BUNDLER_NAME);
	child(n, "version", BUNDLER_VERSION);
	child(n, "release", BUNDLER_RELEASE);
	mc = child(root, "machine_configuration", NULL);
	child(mc, "architecture", p->arch);
	/* Ruby: bdm.keys.sort */
	for (size_t i = 0; i < n_bdm; i++)
		order[i] = i;
	for (size_t i = 1; i < n_bdm; i++)
		for (size_t j = i; j > 0 && strcmp(bdm[order[j - 1]].virtual_name,
						   bdm[order[j]].virtual_name) > 0; j--) {
			size_t t = order[j];

			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	n = child(mc, "block_device_mapping", NULL);
	for (size_t i = 0; i < n_bdm; i++) {
		xmlNodePtr m = child(n, "mapping", NULL);

		child(m, "virtual", bdm[order[i]].virtual_name);
		child(m, "device", bdm[order[i]].device);
	}
	if (p->kernel_id)
		child(mc, "kernel_id", p->kernel_id);
	if (p->ramdisk_id)
		child(mc, "ramdisk_id", p->ramdisk_id);
	img = child(root, "image", NULL);
	child(img, "name", c->prefix);
	child(img, "user", p->account);
	child(img, "type", "machine");
	hex_encode(tar_sha1, BUNDLE_SHA1_LEN, hex);
	n = child(img, "digest", hex);
	xmlNewProp(n, BAD_CAST "algorithm", BAD_CAST DIGEST_ALG);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)image_size);
	child(img, "size", num);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)c->bundled);
	child(img, "bundled_size", num);
	n = child(img, "ec2_encrypted_key", wraps[0]);
	xmlNewProp(n, BAD_CAST "algorithm", BAD_CAST SYM_ALG);
	n = child(img, "user_encrypted_key", wraps[1]);
	xmlNewProp(n, BAD_CAST "algorithm", BAD_CAST SYM_ALG);
	child(img, "ec2_encrypted_iv", wraps[2]);
	child(img, "user_encrypted_iv", wraps[3]);
	parts = child(img, "parts", NULL);
	snprintf(num, sizeof(num), "%zu", c->n_parts);
	xmlNewProp(parts, BAD_CAST "count", BAD_CAST num);
	for (size_t i = 0; i < c->n_parts; i++) {
		xmlNodePtr pn = child(parts, "part", NULL);
		char name[BUNDLE_NAME_MAX + 32];

		snprintf(num, sizeof(num), "%zu", i);
		xmlNewProp(pn, BAD_CAST "index", BAD_CAST num);
		final_part_name(c->prefix, c->n_parts, i, name);
		child(pn, "filename", name);
		hex_encode(c->parts[i].sha1, BUNDLE_SHA1_LEN, hex);
		n = child(pn, "digest", hex);
		xmlNewProp(n, BAD_CAST "algorithm", BAD_CAST DIGEST_ALG);
	}
	/* sign <machine_configuration><image> as serialised */
	signed_nodes[0] = mc;
	signed_nodes[1] = img;
	ret = serialise(NULL, signed_nodes, 2, &signed_data, &signed_len);
	if (ret)
		goto out;
	key = key_from_pem(key_pem, key_len);
	if (!key || EVP_PKEY_id(key) != EVP_PKEY_RSA) {
		ret = fail(err, -EINVAL, "%s is not a PEM RSA private key", p->user_key);
		goto out;
	}
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestSignInit(md, NULL, EVP_sha1(), NULL, key) <= 0 ||
	    EVP_DigestSign(md, sig, &siglen, (const uint8_t *)signed_data, signed_len) <= 0) {
		ret = fail(err, -EIO, "cannot sign the manifest with %s", p->user_key);
		goto out;
	}
	hex_encode(sig, siglen, sighex);
	child(root, "signature", sighex);
	ret = serialise(doc, &root, 1, out, outlen);
out:
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(key);
	free(signed_data);
	xmlFreeDoc(doc);
	return ret;
}

static void creator_cleanup(struct creator *c, bool remove_tmp)
{
	for (size_t i = 0; i < c->n_parts; i++) {
		char name[BUNDLE_NAME_MAX + 32];

		if (c->parts[i].fd >= 0)
			close(c->parts[i].fd);
		EVP_MD_CTX_free(c->parts[i].md);
		if (remove_tmp) {
			tmp_part_name(c, i, name, sizeof(name));
			unlinkat(c->dirfd, name, 0);
		}
	}
	free(c->parts);
	if (c->z_init)
		deflateEnd(&c->z);
	EVP_CIPHER_CTX_free(c->cipher);
	EVP_MD_CTX_free(c->tar_md);
	free(c->zbuf);
	free(c->cbuf);
}

int bundle_create(const struct bundle_params *p, char *manifest_name, char *err)
{
	struct creator c = {.p = p, .dirfd = -1};
	uint8_t key[16], iv[16], tar_sha1[BUNDLE_SHA1_LEN];
	char keyhex[33], ivhex[33], *wraps[4] = {0}, *pem = NULL, *xml = NULL;
	char mname[BUNDLE_NAME_MAX + 32], tmpname[BUNDLE_NAME_MAX + 48];
	size_t pem_len, xml_len, renamed = 0;
	const char *base;
	EVP_PKEY *upub = NULL, *epub = NULL;
	struct archive *a = NULL;
	struct archive_entry *ae = NULL;
	struct stat st;
	uint8_t *ibuf = NULL;
	uint64_t done = 0;
	int fd = -1, ret, outl, mfd = -1;

	if (!p->image_path || !p->dest_dir || !p->user_key || !p->user_cert || !p->ec2_cert)
		return fail(err, -EINVAL, "image, destination, key and certificates are required");
	if (!bundle_valid_arch(p->arch))
		return fail(err, -EINVAL, "architecture '%s' is not i386, x86_64 or arm64",
			    p->arch ? p->arch : "");
	if (!p->account || strlen(p->account) != 12 || strspn(p->account, "0123456789") != 12)
		return fail(err, -EINVAL, "account '%s' is not 12 digits", p->account ? p->account : "");
	if (p->kernel_id && !valid_aki(p->kernel_id, "aki-"))
		return fail(err, -EINVAL, "kernel id '%s' is not aki-<hex>", p->kernel_id);
	if (p->ramdisk_id && !valid_aki(p->ramdisk_id, "ari-"))
		return fail(err, -EINVAL, "ramdisk id '%s' is not ari-<hex>", p->ramdisk_id);
	if (p->n_bdm > BUNDLE_MAX_BDM)
		return fail(err, -E2BIG, "too many block device mappings");
	for (size_t i = 0; i < p->n_bdm; i++)
		if (!valid_virtual(p->bdm[i].virtual_name) || !valid_device(p->bdm[i].device))
			return fail(err, -EINVAL, "invalid block device mapping %s=%s",
				    p->bdm[i].virtual_name, p->bdm[i].device);
	base = strrchr(p->image_path, '/');
	base = base ? base + 1 : p->image_path;
	if (p->prefix)
		base = p->prefix;
	else if (p->image_name)
		base = p->image_name;
	if (!bundle_valid_prefix(base))
		return fail(err, -EINVAL,
			    "prefix '%s' is not valid: use 1-239 characters of [A-Za-z0-9._-], not "
			    "starting with '.' (give one with -p)", base);
	snprintf(c.prefix, sizeof(c.prefix), "%s", base);
	snprintf(mname, sizeof(mname), "%s.manifest.xml", c.prefix);

	upub = cert_file_pubkey(p->user_cert, err, &ret);
	if (!upub)
		return ret;
	epub = cert_file_pubkey(p->ec2_cert, err, &ret);
	if (!epub)
		goto out;
	ret = read_small(p->user_key, &pem, &pem_len, err);
	if (ret)
		goto out;
	c.dirfd = open(p->dest_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c.dirfd < 0) {
		ret = fail(err, -errno, "cannot open destination %s: %s", p->dest_dir, strerror(errno));
		goto out;
	}
	if (faccessat(c.dirfd, mname, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		ret = fail(err, -EEXIST, "%s/%s already exists", p->dest_dir, mname);
		goto out;
	}
	fd = open(p->image_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = fail(err, -errno, "cannot open image %s: %s", p->image_path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = fail(err, -EINVAL, "image %s is not a regular file", p->image_path);
		goto out;
	}

	ret = -ENOMEM;
	c.tar_md = EVP_MD_CTX_new();
	c.cipher = EVP_CIPHER_CTX_new();
	c.zbuf = malloc(IO_BUF);
	c.cbuf = malloc(IO_BUF + 32);
	ibuf = malloc(IO_BUF);
	if (!c.tar_md || !c.cipher || !c.zbuf || !c.cbuf || !ibuf)
		goto out;
	if (rand_bytes(key, sizeof(key)) || rand_bytes(iv, sizeof(iv))) {
		ret = fail(err, -EIO, "no random bytes");
		goto out;
	}
	hex_encode(key, 16, keyhex);
	hex_encode(iv, 16, ivhex);
	if (EVP_DigestInit_ex(c.tar_md, EVP_sha1(), NULL) <= 0 ||
	    EVP_EncryptInit_ex(c.cipher, EVP_aes_128_cbc(), NULL, key, iv) <= 0)
		goto out;
	if (deflateInit2(&c.z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		goto out;
	c.z_init = true;

	a = archive_write_new();
	ae = archive_entry_new();
	if (!a || !ae)
		goto out;
	if (archive_write_set_format_gnutar(a) != ARCHIVE_OK ||
	    archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_open(a, &c, NULL, tar_sink, NULL) != ARCHIVE_OK) {
		ret = fail(err, -EIO, "tar: %s", archive_error_string(a));
		goto out;
	}
	archive_entry_set_pathname(ae, c.prefix);
	archive_entry_set_filetype(ae, AE_IFREG);
	archive_entry_set_perm(ae, st.st_mode & 07777);
	archive_entry_set_size(ae, st.st_size);
	archive_entry_set_mtime(ae, st.st_mtime, 0);
	archive_entry_set_uid(ae, 0);
	archive_entry_set_gid(ae, 0);
	archive_entry_set_uname(ae, "root");
	archive_entry_set_gname(ae, "root");
	if (archive_write_header(a, ae) != ARCHIVE_OK)
		goto tar_err;
	while (done < (uint64_t)st.st_size) {
		ssize_t n = pread(fd, ibuf, MIN((uint64_t)IO_BUF, (uint64_t)st.st_size - done),
				  (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = fail(err, n < 0 ? -errno : -EIO, "reading %s: %s", p->image_path,
				   n < 0 ? strerror(errno) : "file shrank");
			goto out;
		}
		if (archive_write_data(a, ibuf, (size_t)n) != n)
			goto tar_err;
		done += (uint64_t)n;
		if (p->progress && p->progress(p->progress_arg, "bundle", done, (uint64_t)st.st_size)) {
			ret = fail(err, -ECANCELED, "cancelled");
			goto out;
		}
	}
	if (archive_write_close(a) != ARCHIVE_OK)
		goto tar_err;
	if ((ret = deflate_put(&c, NULL, 0, Z_FINISH)) != 0)
		goto io_err;
	if (EVP_EncryptFinal_ex(c.cipher, c.cbuf, &outl) <= 0) {
		ret = -EIO;
		goto io_err;
	}
	if ((ret = part_put(&c, c.cbuf, (size_t)outl)) != 0)
		goto io_err;
	EVP_DigestFinal_ex(c.tar_md, tar_sha1, NULL);
	if (EVP_DigestFinal_ex(c.parts[c.n_parts - 1].md, c.parts[c.n_parts - 1].sha1, NULL) <= 0) {
		ret = -EIO;
		goto io_err;
	}
	for (size_t i = 0; i < c.n_parts; i++) {
		if (fsync(c.parts[i].fd) < 0) {
			ret = -errno;
			goto io_err;
		}
	}

	/* wrap key and IV: ec2 key, user key, ec2 iv, user iv */
	if ((ret = rsa_wrap(epub, keyhex, &wraps[0])) || (ret = rsa_wrap(upub, keyhex, &wraps[1])) ||
	    (ret = rsa_wrap(epub, ivhex, &wraps[2])) || (ret = rsa_wrap(upub, ivhex, &wraps[3]))) {
		ret = fail(err, ret, "cannot wrap the key with RSA");
		goto out;
	}
	ret = build_manifest(&c, (uint64_t)st.st_size, tar_sha1, wraps, pem, pem_len, &xml,
			     &xml_len, err);
	if (ret) {
		if (ret != -EINVAL && ret != -EIO)
			fail(err, ret, "cannot build the manifest: %s", strerror(-ret));
		goto out;
	}
	/* parts into place (never over an existing file), then the manifest */
	for (renamed = 0; renamed < c.n_parts; renamed++) {
		char name[BUNDLE_NAME_MAX + 32];

		tmp_part_name(&c, renamed, tmpname, sizeof(tmpname));
		final_part_name(c.prefix, c.n_parts, renamed, name);
		if (renameat2(c.dirfd, tmpname, c.dirfd, name, RENAME_NOREPLACE) < 0) {
			ret = fail(err, -errno, "cannot create %s/%s: %s", p->dest_dir, name,
				   strerror(errno));
			goto out;
		}
	}
	snprintf(tmpname, sizeof(tmpname), ".%s.tmp", mname);
	mfd = openat(c.dirfd, tmpname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (mfd < 0 || file_write_full(mfd, xml, xml_len) || fsync(mfd) < 0 ||
	    renameat2(c.dirfd, tmpname, c.dirfd, mname, RENAME_NOREPLACE) < 0) {
		ret = fail(err, -errno, "cannot write %s/%s: %s", p->dest_dir, mname, strerror(errno));
		unlinkat(c.dirfd, tmpname, 0);
		goto out;
	}
	fsync(c.dirfd);
	if (manifest_name)
		snprintf(manifest_name, BUNDLE_NAME_MAX + 1, "%.255s", mname);
	ret = 0;
	goto out;

tar_err:
	ret = c.err ? c.err : -EIO;
	fail(err, ret, "tar: %s", c.err ? strerror(-c.err) : archive_error_string(a));
	goto out;
io_err:
	fail(err, ret, "writing the parts in %s: %s", p->dest_dir, strerror(-ret));
out:
	if (ret && c.dirfd >= 0) {
		/* undo: parts already renamed, then the temp ones */
		for (size_t i = 0; i < renamed; i++) {
			char name[BUNDLE_NAME_MAX + 32];

			final_part_name(c.prefix, c.n_parts, i, name);
			unlinkat(c.dirfd, name, 0);
		}
	}
	if (mfd >= 0)
		close(mfd);
	if (a)
		archive_write_free(a);
	archive_entry_free(ae);
	creator_cleanup(&c, true);
	if (c.dirfd >= 0)
		close(c.dirfd);
	if (fd >= 0)
		close(fd);
	for (int i = 0; i < 4; i++)
		free(wraps[i]);
	free(xml);
	free(ibuf);
	if (pem) {
		secure_zero(pem, pem_len);
		free(pem);
	}
	secure_zero(key, sizeof(key));
	secure_zero(keyhex, sizeof(keyhex));
	EVP_PKEY_free(upub);
	EVP_PKEY_free(epub);
	return ret;
}

/* ---- parsing -------------------------------------------------------------------------- */

void bundle_manifest_free(struct bundle_manifest *m)
{
	if (!m)
		return;
	free(m->ec2_enc_key);
	free(m->user_enc_key);
	free(m->ec2_enc_iv);
	free(m->user_enc_iv);
	free(m->parts);
	free(m->signature);
	free(m->signed_data);
	free(m);
}

static bool is_ws(const xmlChar *s)
{
	for (; *s; s++)
		if (!strchr(" \t\r\n", *s))
			return false;
	return true;
}

/* Plain printable ASCII with nothing that serialisation would escape. */
static bool plain_text(const xmlChar *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e || strchr("&<>\"'", *s))
			return false;
	return true;
}

/* Check that n has only element children (and whitespace), every element name in
 * allowed[] at most once (or any number of times when repeat names it). */
static int check_children(xmlNodePtr n, const char *const *allowed, const char *repeat,
			  char *err)
{
	size_t counts[16] = {0};

	for (xmlNodePtr c = n->children; c; c = c->next) {
		size_t i;

		if (c->type == XML_TEXT_NODE && c->content && is_ws(c->content))
			continue;
		if (c->type != XML_ELEMENT_NODE)
			return fail(err, -EINVAL, "manifest: <%s> holds text or markup that is not "
				    "an element", (const char *)n->name);
		if (c->ns)
			return fail(err, -EINVAL, "manifest: namespaces are not allowed");
		for (i = 0; allowed[i]; i++)
			if (!strcmp((const char *)c->name, allowed[i]))
				break;
		if (!allowed[i])
			return fail(err, -EINVAL, "manifest: unexpected element <%.64s> in <%s>",
				    (const char *)c->name, (const char *)n->name);
		if (++counts[i] > 1 && !(repeat && !strcmp(repeat, allowed[i])))
			return fail(err, -EINVAL, "manifest: <%s> appears twice in <%s>", allowed[i],
				    (const char *)n->name);
	}
	return 0;
}

static xmlNodePtr find(xmlNodePtr n, const char *name)
{
	for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
		if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
			return c;
	return NULL;
}

/* The text of a leaf element: exactly one plain text child. Attributes: only allowed_attr
 * (may be NULL). */
static int leaf(xmlNodePtr n, const char *allowed_attr, const char **out, size_t max, char *err)
{
	const char *name = (const char *)n->name;

	for (xmlAttrPtr a = n->properties; a; a = a->next)
		if (!allowed_attr || strcmp((const char *)a->name, allowed_attr))
			return fail(err, -EINVAL, "manifest: unexpected attribute on <%s>", name);
	if (!n->children || n->children->next || n->children->type != XML_TEXT_NODE ||
	    !n->children->content || !*n->children->content)
		return fail(err, -EINVAL, "manifest: <%s> must hold plain text", name);
	if (!plain_text(n->children->content) || strlen((const char *)n->children->content) > max)
		return fail(err, -EINVAL, "manifest: <%s> holds invalid or overlong text", name);
	*out = (const char *)n->children->content;
	return 0;
}

static int leaf_copy(xmlNodePtr parent, const char *name, char *dst, size_t dstlen, bool required,
		     char *err)
{
	xmlNodePtr n = find(parent, name);
	const char *s;
	int ret;

	if (!n)
		return required ? fail(err, -EINVAL, "manifest: <%s> is missing in <%s>", name,
				       (const char *)parent->name) : 0;
	ret = leaf(n, NULL, &s, dstlen - 1, err);
	if (ret)
		return ret;
	snprintf(dst, dstlen, "%s", s);
	return 0;
}

/* An optional list element (ec2-ami-tools' <product_codes>, <ancestry>): only repeated
 * plain-text leaves named item. Accepted and signed, not interpreted. */
static int leaf_list(xmlNodePtr list, const char *item, char *err)
{
	const char *const allowed[] = {item, NULL};
	size_t n = 0;
	int ret;

	if (!list)
		return 0;
	if (list->properties)
		return fail(err, -EINVAL, "manifest: unexpected attribute on <%s>",
			    (const char *)list->name);
	if ((ret = check_children(list, allowed, item, err)))
		return ret;
	for (xmlNodePtr c = list->children; c; c = c->next) {
		const char *s;

		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (++n > 64)
			return fail(err, -E2BIG, "manifest: more than 64 <%s>", item);
		if ((ret = leaf(c, NULL, &s, 64, err)))
			return ret;
	}
	return 0;
}

static int attr_is(xmlNodePtr n, const char *attr, const char *want, char *err)
{
	xmlChar *v = xmlGetProp(n, BAD_CAST attr);
	bool ok = v && !strcmp((const char *)v, want);

	xmlFree(v);
	return ok ? 0 : fail(err, -EINVAL, "manifest: <%s %s> must be '%s'", (const char *)n->name,
			     attr, want);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 19)
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno ? -EINVAL : 0;
}

static int hex_field(xmlNodePtr img, const char *name, uint8_t **out, size_t *len, char *err)
{
	xmlNodePtr n = find(img, name);
	const char *s;
	bool alg = strstr(name, "_key") != NULL;
	int ret;

	if (!n)
		return fail(err, -EINVAL, "manifest: <%s> is missing", name);
	ret = leaf(n, alg ? "algorithm" : NULL, &s, 4096, err);
	if (!ret && alg)
		ret = attr_is(n, "algorithm", SYM_ALG, err);
	if (ret)
		return ret;
	if (hex_decode(s, NULL, 0, out, len))
		return fail(err, -EINVAL, "manifest: <%s> is not hex", name);
	return 0;
}

static int parse_tree(xmlDocPtr doc, struct bundle_manifest *m, char *err)
{
	static const char *const top[] = {"version", "bundler", "machine_configuration", "image",
					  "signature", NULL};
	static const char *const bundler[] = {"name", "version", "release", NULL};
	static const char *const mcs[] = {"architecture", "block_device_mapping", "kernel_id",
					  "ramdisk_id", "product_codes", NULL};
	static const char *const imgs[] = {"name", "user", "type", "ancestry", "digest", "size",
					   "bundled_size", "ec2_encrypted_key",
					   "user_encrypted_key", "ec2_encrypted_iv",
					   "user_encrypted_iv", "parts", NULL};
	static const char *const maps[] = {"mapping", NULL};
	static const char *const mapping[] = {"virtual", "device", NULL};
	static const char *const partss[] = {"part", NULL};
	static const char *const part[] = {"filename", "digest", NULL};
	xmlNodePtr root = xmlDocGetRootElement(doc), n, mc, img, parts;
	const char *s;
	char num[32], prefix[BUNDLE_NAME_MAX + 1] = "";
	uint64_t count;
	int ret;

	if (!root || strcmp((const char *)root->name, "manifest") || root->ns || root->properties)
		return fail(err, -EINVAL, "manifest: the root element is not <manifest>");
	for (xmlNodePtr c = doc->children; c; c = c->next)
		if (c != root)
			return fail(err, -EINVAL, "manifest: markup outside <manifest>");
	if ((ret = check_children(root, top, NULL, err)))
		return ret;
	if ((ret = leaf_copy(root, "version", m->version, sizeof(m->version), true, err)))
		return ret;
	if (strcmp(m->version, BUNDLE_MANIFEST_VERSION))
		return fail(err, -EINVAL, "manifest: version %s is not supported (only %s)",
			    m->version, BUNDLE_MANIFEST_VERSION);
	n = find(root, "bundler");
	if (!n)
		return fail(err, -EINVAL, "manifest: <bundler> is missing");
	if ((ret = check_children(n, bundler, NULL, err)) ||
	    (ret = leaf_copy(n, "name", m->bundler_name, sizeof(m->bundler_name), true, err)) ||
	    (ret = leaf_copy(n, "version", m->bundler_version, sizeof(m->bundler_version), true,
			     err)) ||
	    (ret = leaf_copy(n, "release", m->bundler_release, sizeof(m->bundler_release), true,
			     err)))
		return ret;

	mc = find(root, "machine_configuration");
	if (!mc)
		return fail(err, -EINVAL, "manifest: <machine_configuration> is missing");
	if ((ret = check_children(mc, mcs, NULL, err)) ||
	    (ret = leaf_copy(mc, "architecture", m->arch, sizeof(m->arch), true, err)) ||
	    (ret = leaf_copy(mc, "kernel_id", m->kernel_id, sizeof(m->kernel_id), false, err)) ||
	    (ret = leaf_copy(mc, "ramdisk_id", m->ramdisk_id, sizeof(m->ramdisk_id), false, err)))
		return ret;
	if (!bundle_valid_arch(m->arch))
		return fail(err, -EINVAL, "manifest: architecture '%s' is not supported", m->arch);
	if ((m->kernel_id[0] && !valid_aki(m->kernel_id, "aki-")) ||
	    (m->ramdisk_id[0] && !valid_aki(m->ramdisk_id, "ari-")))
		return fail(err, -EINVAL, "manifest: invalid kernel_id or ramdisk_id");
	n = find(mc, "block_device_mapping");
	if (n) {
		if ((ret = check_children(n, maps, "mapping", err)))
			return ret;
		for (xmlNodePtr c = n->children; c; c = c->next) {
			struct bundle_bdm *b;

			if (c->type != XML_ELEMENT_NODE)
				continue;
			if (m->n_bdm == BUNDLE_MAX_BDM)
				return fail(err, -E2BIG, "manifest: too many block device mappings");
			b = &m->bdm[m->n_bdm++];
			if ((ret = check_children(c, mapping, NULL, err)) ||
			    (ret = leaf_copy(c, "virtual", b->virtual_name, sizeof(b->virtual_name),
					     true, err)) ||
			    (ret = leaf_copy(c, "device", b->device, sizeof(b->device), true, err)))
				return ret;
			if (!valid_virtual(b->virtual_name) || !valid_device(b->device))
				return fail(err, -EINVAL, "manifest: invalid block device mapping");
			for (size_t i = 0; i + 1 < m->n_bdm; i++)
				if (!strcmp(m->bdm[i].virtual_name, b->virtual_name))
					return fail(err, -EINVAL, "manifest: '%s' mapped twice",
						    b->virtual_name);
		}
	}

	if ((ret = leaf_list(find(mc, "product_codes"), "product_code", err)))
		return ret;

	img = find(root, "image");
	if (!img)
		return fail(err, -EINVAL, "manifest: <image> is missing");
	if ((ret = check_children(img, imgs, NULL, err)) ||
	    (ret = leaf_copy(img, "name", m->name, sizeof(m->name), true, err)) ||
	    (ret = leaf_copy(img, "user", m->user, sizeof(m->user), true, err)) ||
	    (ret = leaf_copy(img, "type", m->type, sizeof(m->type), true, err)))
		return ret;
	if (!bundle_valid_prefix(m->name))
		return fail(err, -EINVAL, "manifest: image name '%s' is not valid", m->name);
	if (strlen(m->user) != 12 || strspn(m->user, "0123456789") != 12)
		return fail(err, -EINVAL, "manifest: user '%s' is not a 12-digit account", m->user);
	if (strcmp(m->type, "machine"))
		return fail(err, -EINVAL, "manifest: image type '%s' is not supported", m->type);
	if ((ret = leaf_list(find(img, "ancestry"), "ancestor_ami_id", err)))
		return ret;
	if ((ret = leaf_copy(img, "size", num, sizeof(num), true, err)))
		return ret;
	if (parse_u64(num, &m->size))
		return fail(err, -EINVAL, "manifest: <size> is not a number");
	if ((ret = leaf_copy(img, "bundled_size", num, sizeof(num), true, err)))
		return ret;
	if (parse_u64(num, &m->bundled_size))
		return fail(err, -EINVAL, "manifest: <bundled_size> is not a number");
	n = find(img, "digest");
	if (!n)
		return fail(err, -EINVAL, "manifest: <image><digest> is missing");
	if ((ret = leaf(n, "algorithm", &s, 64, err)) ||
	    (ret = attr_is(n, "algorithm", DIGEST_ALG, err)))
		return ret;
	if (hex_decode(s, m->tar_sha1, BUNDLE_SHA1_LEN, NULL, NULL))
		return fail(err, -EINVAL, "manifest: <image><digest> is not a SHA-1 in hex");
	if ((ret = hex_field(img, "ec2_encrypted_key", &m->ec2_enc_key, &m->ec2_enc_key_len,
			     err)) ||
	    (ret = hex_field(img, "user_encrypted_key", &m->user_enc_key, &m->user_enc_key_len,
			     err)) ||
	    (ret = hex_field(img, "ec2_encrypted_iv", &m->ec2_enc_iv, &m->ec2_enc_iv_len, err)) ||
	    (ret = hex_field(img, "user_encrypted_iv", &m->user_enc_iv, &m->user_enc_iv_len, err)))
		return ret;

	parts = find(img, "parts");
	if (!parts)
		return fail(err, -EINVAL, "manifest: <parts> is missing");
	if ((ret = check_children(parts, partss, "part", err)))
		return ret;
	for (xmlAttrPtr a = parts->properties; a; a = a->next)
		if (strcmp((const char *)a->name, "count"))
			return fail(err, -EINVAL, "manifest: unexpected attribute on <parts>");
	{
		xmlChar *v = xmlGetProp(parts, BAD_CAST "count");
		int bad = !v || parse_u64((const char *)v, &count);

		xmlFree(v);
		if (bad || count == 0 || count > BUNDLE_MAX_PARTS)
			return fail(err, -EINVAL, "manifest: <parts count> must be 1-%d",
				    BUNDLE_MAX_PARTS);
	}
	m->parts = calloc(count, sizeof(*m->parts));
	if (!m->parts)
		return -ENOMEM;
	for (xmlNodePtr c = parts->children; c; c = c->next) {
		struct bundle_part *bp;
		xmlNodePtr f, d;
		xmlChar *v;
		uint64_t idx;
		int bad;
		const char *dot;

		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (m->n_parts == count)
			return fail(err, -EINVAL, "manifest: more <part> elements than count %llu",
				    (unsigned long long)count);
		for (xmlAttrPtr a = c->properties; a; a = a->next)
			if (strcmp((const char *)a->name, "index"))
				return fail(err, -EINVAL, "manifest: unexpected attribute on <part>");
		v = xmlGetProp(c, BAD_CAST "index");
		bad = !v || parse_u64((const char *)v, &idx) || idx != m->n_parts;
		xmlFree(v);
		if (bad)
			return fail(err, -EINVAL, "manifest: part %zu has a missing or wrong index",
				    m->n_parts);
		bp = &m->parts[m->n_parts++];
		if ((ret = check_children(c, part, NULL, err)) ||
		    (ret = leaf_copy(c, "filename", bp->filename, sizeof(bp->filename), true, err)))
			return ret;
		if (!bundle_valid_part_name(bp->filename))
			return fail(err, -EINVAL,
				    "manifest: part file name '%.64s' is not one plain path component "
				    "NAME.part.N", bp->filename);
		dot = strrchr(bp->filename, '.');
		dot -= 5; /* ".part" */
		if (!prefix[0])
			snprintf(prefix, sizeof(prefix), "%.*s", (int)(dot - bp->filename),
				 bp->filename);
		else if (strncmp(prefix, bp->filename, (size_t)(dot - bp->filename)) ||
			 prefix[dot - bp->filename])
			return fail(err, -EINVAL, "manifest: parts do not share one prefix");
		for (size_t i = 0; i + 1 < m->n_parts; i++)
			if (!strcmp(m->parts[i].filename, bp->filename))
				return fail(err, -EINVAL, "manifest: part '%s' is listed twice",
					    bp->filename);
		if (strtoull(dot + 6, NULL, 10) != idx)
			return fail(err, -EINVAL, "manifest: part '%s' does not carry index %llu",
				    bp->filename, (unsigned long long)idx);
		d = find(c, "digest");
		f = d;
		if (!f)
			return fail(err, -EINVAL, "manifest: part %llu has no digest",
				    (unsigned long long)idx);
		if ((ret = leaf(d, "algorithm", &s, 64, err)) ||
		    (ret = attr_is(d, "algorithm", DIGEST_ALG, err)))
			return ret;
		if (hex_decode(s, bp->sha1, BUNDLE_SHA1_LEN, NULL, NULL))
			return fail(err, -EINVAL, "manifest: part %llu digest is not SHA-1 hex",
				    (unsigned long long)idx);
	}
	if (m->n_parts != count)
		return fail(err, -EINVAL, "manifest: %zu <part> elements but count is %llu",
			    m->n_parts, (unsigned long long)count);
	if (m->bundled_size > (uint64_t)count * BUNDLE_PART_SIZE ||
	    m->bundled_size <= (uint64_t)(count - 1) * BUNDLE_PART_SIZE)
		return fail(err, -EINVAL, "manifest: bundled_size does not fit %llu parts",
			    (unsigned long long)count);

	n = find(root, "signature");
	if (!n)
		return fail(err, -EINVAL, "manifest: <signature> is missing");
	if ((ret = leaf(n, NULL, &s, 8192, err)))
		return ret;
	if (hex_decode(s, NULL, 0, &m->signature, &m->signature_len))
		return fail(err, -EINVAL, "manifest: <signature> is not hex");

	{
		xmlNodePtr nodes[2] = {mc, img};

		ret = serialise(NULL, nodes, 2, &m->signed_data, &m->signed_len);
		if (ret)
			return fail(err, ret, "manifest: cannot serialise the signed elements");
	}
	return 0;
}

static void xml_quiet(void *ctx, const char *msg, ...)
{
	(void)ctx, (void)msg;
}

int bundle_manifest_parse(const char *buf, size_t len, struct bundle_manifest **out, char *err)
{
	struct bundle_manifest *m;
	xmlDocPtr doc;
	int ret;

	*out = NULL;
	if (len > BUNDLE_MANIFEST_MAX)
		return fail(err, -E2BIG, "manifest: larger than %u bytes", BUNDLE_MANIFEST_MAX);
	if (len == 0)
		return fail(err, -EINVAL, "manifest: empty");
	/* refuse any DTD before libxml2 sees it: no internal subset, no entities */
	if (memmem(buf, len, "<!", 2))
		return fail(err, -EINVAL, "manifest: DTDs, comments and CDATA are not allowed");
	xmlSetGenericErrorFunc(NULL, xml_quiet);
	doc = xmlReadMemory(buf, (int)len, "manifest.xml", NULL,
			    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (!doc)
		return fail(err, -EINVAL, "manifest: not well-formed XML");
	if (doc->intSubset || doc->extSubset) {
		xmlFreeDoc(doc);
		return fail(err, -EINVAL, "manifest: DTDs are not allowed");
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		xmlFreeDoc(doc);
		return -ENOMEM;
	}
	ret = parse_tree(doc, m, err);
	xmlFreeDoc(doc);
	if (ret) {
		bundle_manifest_free(m);
		return ret;
	}
	*out = m;
	return 0;
}

int bundle_manifest_load(int dirfd, const char *name, struct bundle_manifest **out, char *err)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), ret;
	struct stat st;
	char *buf;
	ssize_t n;

	*out = NULL;
	if (fd < 0)
		return fail(err, -errno, "cannot open manifest %s: %s", name, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return fail(err, -EINVAL, "manifest %s is not a regular file", name);
	}
	if (st.st_size > (off_t)BUNDLE_MANIFEST_MAX) {
		close(fd);
		return fail(err, -E2BIG, "manifest %s is larger than %u bytes", name,
			    BUNDLE_MANIFEST_MAX);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	n = pread(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if (n != (ssize_t)st.st_size) {
		free(buf);
		return fail(err, -EIO, "cannot read manifest %s", name);
	}
	ret = bundle_manifest_parse(buf, (size_t)n, out, err);
	free(buf);
	return ret;
}

/* ---- verification --------------------------------------------------------------------- */

int bundle_verify_signature(const struct bundle_manifest *m, const char *cert_pem,
			    size_t cert_len, char *err)
{
	X509 *x = cert_from_pem(cert_pem, cert_len);
	EVP_PKEY *k = x ? X509_get0_pubkey(x) : NULL;
	EVP_MD_CTX *md;
	int ret;

	if (!k || EVP_PKEY_id(k) != EVP_PKEY_RSA) {
		X509_free(x);
		ERR_clear_error();
		return fail(err, -EINVAL, "the certificate is not a PEM X.509 certificate with an "
			    "RSA key");
	}
	md = EVP_MD_CTX_new();
	if (!md) {
		X509_free(x);
		return -ENOMEM;
	}
	if (EVP_DigestVerifyInit(md, NULL, EVP_sha1(), NULL, k) > 0 &&
	    EVP_DigestVerify(md, m->signature, m->signature_len, (const uint8_t *)m->signed_data,
			     m->signed_len) == 1)
		ret = 0;
	else
		ret = fail(err, -EBADMSG, "the manifest signature does not verify against the "
			   "certificate (manifest altered, or signed by another key)");
	ERR_clear_error();
	EVP_MD_CTX_free(md);
	X509_free(x);
	return ret;
}

/* Open part i (regular file, no symlink) and return its fd. */
static int open_part(const struct bundle_manifest *m, int dirfd, size_t i, struct stat *st,
		     char *err)
{
	int fd = openat(dirfd, m->parts[i].filename, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return fail(err, errno == ENOENT ? -ENOENT : -errno, "part %s: %s",
			    m->parts[i].filename, errno == ENOENT ? "missing" : strerror(errno));
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		return fail(err, -EINVAL, "part %s is not a regular file", m->parts[i].filename);
	}
	return fd;
}

int bundle_verify_parts(const struct bundle_manifest *m, int srcdirfd,
			bundle_progress_fn progress, void *arg, char *err)
{
	uint8_t *buf = malloc(IO_BUF);
	uint64_t total = 0, done = 0;
	char prefix[BUNDLE_NAME_MAX + 8];
	const char *dot;
	DIR *d;
	int ret = 0, dfd;
	struct dirent *de;

	if (!buf)
		return -ENOMEM;
	/* sizes first: cheap checks before reading anything */
	for (size_t i = 0; i < m->n_parts; i++) {
		struct stat st;
		int fd = open_part(m, srcdirfd, i, &st, err);

		if (fd < 0) {
			free(buf);
			return fd;
		}
		close(fd);
		if ((i + 1 < m->n_parts && (uint64_t)st.st_size != BUNDLE_PART_SIZE) ||
		    st.st_size == 0 || (uint64_t)st.st_size > BUNDLE_PART_SIZE) {
			free(buf);
			return fail(err, -EBADMSG, "part %s has the wrong size (%lld bytes)",
				    m->parts[i].filename, (long long)st.st_size);
		}
		total += (uint64_t)st.st_size;
	}
	if (total != m->bundled_size) {
		free(buf);
		return fail(err, -EBADMSG, "the parts hold %llu bytes, the manifest says %llu",
			    (unsigned long long)total, (unsigned long long)m->bundled_size);
	}
	/* extra parts: any PREFIX.part.<digits> not listed */
	dot = strrchr(m->parts[0].filename, '.') - 5;
	snprintf(prefix, sizeof(prefix), "%.*s.part.", (int)(dot - m->parts[0].filename),
		 m->parts[0].filename);
	dfd = openat(srcdirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		free(buf);
		return fail(err, -errno, "cannot list the bundle directory: %s", strerror(errno));
	}
	while ((de = readdir(d))) {
		const char *s = de->d_name;
		bool listed = false;

		if (strncmp(s, prefix, strlen(prefix)) || !s[strlen(prefix)] ||
		    strspn(s + strlen(prefix), "0123456789") != strlen(s + strlen(prefix)))
			continue;
		for (size_t i = 0; i < m->n_parts && !listed; i++)
			listed = !strcmp(m->parts[i].filename, s);
		if (!listed) {
			ret = fail(err, -EBADMSG, "extra part %.200s is not in the manifest", s);
			break;
		}
	}
	closedir(d);
	/* digests */
	for (size_t i = 0; i < m->n_parts && !ret; i++) {
		struct stat st;
		int fd = open_part(m, srcdirfd, i, &st, err);
		uint8_t sha[BUNDLE_SHA1_LEN];
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		off_t off = 0;

		if (fd < 0 || !md) {
			ret = fd < 0 ? fd : -ENOMEM;
			if (fd >= 0)
				close(fd);
			EVP_MD_CTX_free(md);
			break;
		}
		EVP_DigestInit_ex(md, EVP_sha1(), NULL);
		for (;;) {
			ssize_t n = pread(fd, buf, IO_BUF, off);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				ret = fail(err, -errno, "reading part %s: %s", m->parts[i].filename,
					   strerror(errno));
				break;
			}
			if (n == 0)
				break;
			EVP_DigestUpdate(md, buf, (size_t)n);
			off += n;
			done += (uint64_t)n;
			if (progress && progress(arg, "verify", done, total)) {
				ret = fail(err, -ECANCELED, "cancelled");
				break;
			}
		}
		EVP_DigestFinal_ex(md, sha, NULL);
		EVP_MD_CTX_free(md);
		close(fd);
		if (!ret && memcmp(sha, m->parts[i].sha1, BUNDLE_SHA1_LEN))
			ret = fail(err, -EBADMSG, "part %s does not match its digest in the manifest",
				   m->parts[i].filename);
	}
	free(buf);
	return ret;
}

/* ---- unbundle ------------------------------------------------------------------------- */

struct reader {
	const struct bundle_manifest *m;
	int dirfd;
	size_t part;	   /* current part */
	int fd;		   /* of the current part, -1 between parts */
	EVP_MD_CTX *part_md;
	EVP_CIPHER_CTX *cipher;
	bool cipher_done;
	z_stream z;
	bool z_end;
	EVP_MD_CTX *tar_md;
	uint8_t *in, *dec, *out, *img;
	size_t dec_len, dec_off;
	uint64_t read_total;
	bundle_progress_fn progress;
	void *arg;
	int err;
	char *errbuf;
};

/* Fill r->dec with more decrypted bytes; 0 at the very end (after the final block). */
static int reader_decrypt_more(struct reader *r)
{
	for (;;) {
		ssize_t n;
		int outl = 0;

		if (r->cipher_done)
			return 0;
		if (r->fd < 0) {
			struct stat st;

			if (r->part == r->m->n_parts) {
				if (EVP_DecryptFinal_ex(r->cipher, r->dec, &outl) <= 0)
					return fail(r->errbuf, -EBADMSG,
						    "decryption failed (bad padding): wrong key or "
						    "corrupt parts");
				r->cipher_done = true;
				r->dec_len = (size_t)outl;
				r->dec_off = 0;
				return outl ? 1 : 0;
			}
			r->fd = open_part(r->m, r->dirfd, r->part, &st, r->errbuf);
			if (r->fd < 0)
				return r->fd;
			EVP_DigestInit_ex(r->part_md, EVP_sha1(), NULL);
		}
		n = read(r->fd, r->in, IO_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail(r->errbuf, -errno, "reading part %s: %s",
				    r->m->parts[r->part].filename, strerror(errno));
		if (n == 0) {
			uint8_t sha[BUNDLE_SHA1_LEN];

			EVP_DigestFinal_ex(r->part_md, sha, NULL);
			close(r->fd);
			r->fd = -1;
			if (memcmp(sha, r->m->parts[r->part].sha1, BUNDLE_SHA1_LEN))
				return fail(r->errbuf, -EBADMSG,
					    "part %s changed while it was being unbundled",
					    r->m->parts[r->part].filename);
			r->part++;
			continue;
		}
		EVP_DigestUpdate(r->part_md, r->in, (size_t)n);
		r->read_total += (uint64_t)n;
		if (r->read_total > r->m->bundled_size)
			return fail(r->errbuf, -EBADMSG, "parts grew while being unbundled");
		if (r->progress && r->progress(r->arg, "unbundle", r->read_total, r->m->bundled_size))
			return fail(r->errbuf, -ECANCELED, "cancelled");
		if (EVP_DecryptUpdate(r->cipher, r->dec, &outl, r->in, (int)n) <= 0)
			return fail(r->errbuf, -EBADMSG, "decryption failed");
		r->dec_len = (size_t)outl;
		r->dec_off = 0;
		if (outl)
			return 1;
	}
}

/* Produce up to IO_BUF bytes of the tar stream into r->out: returns the count, 0 at the end
 * of the gzip stream, or -errno. */
static ssize_t reader_tar(struct reader *r)
{
	r->z.next_out = r->out;
	r->z.avail_out = IO_BUF;
	while (r->z.avail_out == IO_BUF && !r->z_end) {
		int zr;

		if (r->dec_off == r->dec_len) {
			int ret = reader_decrypt_more(r);

			if (ret < 0)
				return ret;
			if (ret == 0)
				return fail(r->errbuf, -EBADMSG, "the gzip stream is truncated");
		}
		r->z.next_in = r->dec + r->dec_off;
		r->z.avail_in = (uInt)(r->dec_len - r->dec_off);
		zr = inflate(&r->z, Z_NO_FLUSH);
		r->dec_off = r->dec_len - r->z.avail_in;
		if (zr == Z_STREAM_END)
			r->z_end = true;
		else if (zr != Z_OK && zr != Z_BUF_ERROR)
			return fail(r->errbuf, -EBADMSG, "the gzip stream is corrupt (wrong key?)");
	}
	EVP_DigestUpdate(r->tar_md, r->out, IO_BUF - r->z.avail_out);
	return (ssize_t)(IO_BUF - r->z.avail_out);
}

static la_ssize_t tar_source(struct archive *a, void *arg, const void **buf)
{
	struct reader *r = arg;
	ssize_t n = reader_tar(r);

	(void)a;
	if (n < 0) {
		r->err = (int)n;
		return -1;
	}
	*buf = r->out;
	return n;
}

/* Which wrapped copy does priv open? The user's when priv matches the signing cert. */
static int unwrap_key(const struct bundle_manifest *m, EVP_PKEY *priv, EVP_PKEY *signer,
		      uint8_t key[16], uint8_t iv[16])
{
	if (EVP_PKEY_eq(priv, signer) == 1)
		return rsa_unwrap(priv, m->user_enc_key, m->user_enc_key_len, key) ?:
		       rsa_unwrap(priv, m->user_enc_iv, m->user_enc_iv_len, iv);
	if (rsa_unwrap(priv, m->ec2_enc_key, m->ec2_enc_key_len, key) == 0 &&
	    rsa_unwrap(priv, m->ec2_enc_iv, m->ec2_enc_iv_len, iv) == 0)
		return 0;
	return -EKEYREJECTED;
}

int bundle_check_ec2_key(const struct bundle_manifest *m, const char *key_pem, size_t key_len)
{
	EVP_PKEY *priv = key_from_pem(key_pem, key_len);
	uint8_t key[16], iv[16];
	int ret;

	if (!priv)
		return -EINVAL;
	ret = rsa_unwrap(priv, m->ec2_enc_key, m->ec2_enc_key_len, key) ?:
	      rsa_unwrap(priv, m->ec2_enc_iv, m->ec2_enc_iv_len, iv);
	secure_zero(key, sizeof(key));
	secure_zero(iv, sizeof(iv));
	EVP_PKEY_free(priv);
	return ret;
}

int bundle_unbundle(const struct bundle_manifest *m, const char *cert_pem, size_t cert_len,
		    int srcdirfd, const char *key_pem, size_t key_len, int out_fd,
		    bundle_progress_fn progress, void *arg, char *err)
{
	struct reader r = {.m = m, .dirfd = srcdirfd, .fd = -1, .progress = progress,
			   .arg = arg, .errbuf = err};
	uint8_t key[16], iv[16], sha[BUNDLE_SHA1_LEN];
	EVP_PKEY *priv = NULL;
	X509 *x = NULL;
	struct archive *a = NULL;
	struct archive_entry *ae;
	uint64_t written = 0;
	bool z_init = false;
	int ret;

	ret = bundle_verify_signature(m, cert_pem, cert_len, err);
	if (ret)
		return ret;
	ret = bundle_verify_parts(m, srcdirfd, progress, arg, err);
	if (ret)
		return ret;
	priv = key_from_pem(key_pem, key_len);
	x = cert_from_pem(cert_pem, cert_len);
	if (!priv || EVP_PKEY_id(priv) != EVP_PKEY_RSA || !x) {
		ret = fail(err, -EINVAL, "the private key is not a PEM RSA private key");
		goto out;
	}
	ret = unwrap_key(m, priv, X509_get0_pubkey(x), key, iv);
	if (ret) {
		fail(err, ret, "the private key opens neither the user's nor the EC2 copy of "
		     "the bundle key");
		goto out;
	}
	ret = -ENOMEM;
	r.part_md = EVP_MD_CTX_new();
	r.tar_md = EVP_MD_CTX_new();
	r.cipher = EVP_CIPHER_CTX_new();
	r.in = malloc(IO_BUF);
	r.dec = malloc(IO_BUF + 32);
	r.out = malloc(IO_BUF);
	r.img = malloc(IO_BUF);
	if (!r.part_md || !r.tar_md || !r.cipher || !r.in || !r.dec || !r.out || !r.img)
		goto out;
	if (EVP_DecryptInit_ex(r.cipher, EVP_aes_128_cbc(), NULL, key, iv) <= 0 ||
	    EVP_DigestInit_ex(r.tar_md, EVP_sha1(), NULL) <= 0 ||
	    inflateInit2(&r.z, 15 + 16) != Z_OK)
		goto out;
	z_init = true;
	a = archive_read_new();
	if (!a || archive_read_support_format_tar(a) != ARCHIVE_OK ||
	    archive_read_support_filter_none(a) != ARCHIVE_OK)
		goto out;
	if (archive_read_open(a, &r, NULL, tar_source, NULL) != ARCHIVE_OK ||
	    archive_read_next_header(a, &ae) != ARCHIVE_OK) {
		ret = r.err ? r.err : fail(err, -EBADMSG, "the decrypted data is not a tar stream");
		goto out;
	}
	if (archive_entry_filetype(ae) != AE_IFREG || !archive_entry_pathname(ae) ||
	    strcmp(archive_entry_pathname(ae), m->name)) {
		ret = fail(err, -EBADMSG, "the tar member is not a regular file named '%s'", m->name);
		goto out;
	}
	if (archive_entry_size(ae) != (la_int64_t)m->size) {
		ret = fail(err, -EBADMSG, "the image holds %lld bytes, the manifest says %llu",
			   (long long)archive_entry_size(ae), (unsigned long long)m->size);
		goto out;
	}
	for (;;) {
		la_ssize_t n = archive_read_data(a, r.img, IO_BUF);

		if (n == 0)
			break;
		if (n < 0) {
			ret = r.err ? r.err : fail(err, -EBADMSG, "tar: %s", archive_error_string(a));
			goto out;
		}
		if (file_write_full(out_fd, r.img, (size_t)n)) {
			ret = fail(err, -errno ? -errno : -EIO, "writing the image: %s",
				   strerror(errno));
			goto out;
		}
		written += (uint64_t)n;
	}
	if (archive_read_next_header(a, &ae) != ARCHIVE_EOF) {
		ret = r.err ? r.err
			    : fail(err, -EBADMSG, "the tar stream holds more than one member");
		goto out;
	}
	/* the rest of the tar stream (padding) still counts for the digest */
	for (;;) {
		ssize_t n = reader_tar(&r);

		if (n < 0) {
			ret = (int)n;
			goto out;
		}
		if (n == 0)
			break;
	}
	/* nothing may follow the gzip stream */
	if (r.dec_off != r.dec_len) {
		ret = fail(err, -EBADMSG, "data follows the gzip stream");
		goto out;
	}
	ret = reader_decrypt_more(&r);
	if (ret < 0)
		goto out;
	if (ret > 0 || r.part != m->n_parts) {
		ret = fail(err, -EBADMSG, "data follows the gzip stream");
		goto out;
	}
	EVP_DigestFinal_ex(r.tar_md, sha, NULL);
	if (memcmp(sha, m->tar_sha1, BUNDLE_SHA1_LEN)) {
		ret = fail(err, -EBADMSG, "the tar stream does not match the manifest digest");
		goto out;
	}
	if (written != m->size) {
		ret = fail(err, -EBADMSG, "wrote %llu bytes, the manifest says %llu",
			   (unsigned long long)written, (unsigned long long)m->size);
		goto out;
	}
	ret = 0;
out:
	if (a)
		archive_read_free(a);
	if (z_init)
		inflateEnd(&r.z);
	if (r.fd >= 0)
		close(r.fd);
	EVP_MD_CTX_free(r.part_md);
	EVP_MD_CTX_free(r.tar_md);
	EVP_CIPHER_CTX_free(r.cipher);
	free(r.in);
	free(r.dec);
	free(r.out);
	free(r.img);
	EVP_PKEY_free(priv);
	X509_free(x);
	secure_zero(key, sizeof(key));
	return ret;
}

/* ---- region keys ---------------------------------------------------------------------- */

static int write_tmp_pem(int dirfd, const char *name, mode_t mode, EVP_PKEY *k, X509 *x)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
	FILE *f;
	int ok;

	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		return -errno;
	}
	ok = k ? PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, x);
	if (ok && (fflush(f) || fsync(fd) || fchmod(fd, mode)))
		ok = 0;
	fclose(f);
	return ok ? 0 : -EIO;
}

static X509 *make_cert(EVP_PKEY *k, const char *region)
{
	X509 *x = X509_new();
	X509_NAME *n;
	char cn[64];

	if (!x)
		return NULL;
	snprintf(cn, sizeof(cn), "ec2-%s", region);
	if (!X509_set_version(x, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(x), 1) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), 20L * 365 * 86400) || !X509_set_pubkey(x, k))
		goto bad;
	n = X509_get_subject_name(x);
	if (!X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ||
	    !X509_set_issuer_name(x, n) || !X509_sign(x, k, EVP_sha256()))
		goto bad;
	return x;
bad:
	X509_free(x);
	return NULL;
}

int bundle_region_keys(int home_dirfd, const char *region, char *key_path, char *cert_path,
		       char *err)
{
	char dir[64], tmp[64];
	int rfd = -1, ret;
	EVP_PKEY *k = NULL;
	X509 *x = NULL;

	if (!valid_region(region))
		return fail(err, -EINVAL, "region '%s' is not valid", region ? region : "");
	if (mkdirat(home_dirfd, "regions", 0755) < 0 && errno != EEXIST)
		return fail(err, -errno, "cannot create regions/: %s", strerror(errno));
	snprintf(dir, sizeof(dir), "regions/%s", region);
	if (mkdirat(home_dirfd, dir, 0755) < 0 && errno != EEXIST)
		return fail(err, -errno, "cannot create %s: %s", dir, strerror(errno));
	if (key_path)
		snprintf(key_path, 256, "%s/ec2-key.pem", dir);
	if (cert_path)
		snprintf(cert_path, 256, "%s/ec2-cert.pem", dir);
	rfd = openat(home_dirfd, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rfd < 0)
		return fail(err, -errno, "cannot open %s: %s", dir, strerror(errno));
	if (faccessat(rfd, "ec2-cert.pem", F_OK, AT_SYMLINK_NOFOLLOW) == 0 &&
	    faccessat(rfd, "ec2-key.pem", F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		close(rfd);
		return 0;
	}
	snprintf(tmp, sizeof(tmp), ".ec2-key.%d.tmp", (int)getpid());
	if (faccessat(rfd, "ec2-key.pem", F_OK, AT_SYMLINK_NOFOLLOW) != 0) {
		k = EVP_RSA_gen(2048);
		if (!k) {
			ret = fail(err, -EIO, "cannot generate the region's EC2 key");
			goto out;
		}
		ret = write_tmp_pem(rfd, tmp, 0600, k, NULL);
		if (!ret && linkat(rfd, tmp, rfd, "ec2-key.pem", 0) < 0 && errno != EEXIST)
			ret = -errno;
		unlinkat(rfd, tmp, 0);
		if (ret) {
			fail(err, ret, "cannot write %s/ec2-key.pem: %s", dir, strerror(-ret));
			goto out;
		}
		EVP_PKEY_free(k);
		k = NULL;
	}
	/* the cert always comes from the key that won */
	{
		char *pem;
		size_t len;
		char path[300];
		int kfd = openat(rfd, "ec2-key.pem", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

		if (kfd < 0) {
			ret = fail(err, -errno, "cannot open %s/ec2-key.pem", dir);
			goto out;
		}
		snprintf(path, sizeof(path), "/proc/self/fd/%d", kfd);
		ret = read_small(path, &pem, &len, err);
		close(kfd);
		if (ret)
			goto out;
		k = key_from_pem(pem, len);
		secure_zero(pem, len);
		free(pem);
		if (!k) {
			ret = fail(err, -EINVAL, "%s/ec2-key.pem is not a PEM private key", dir);
			goto out;
		}
	}
	x = make_cert(k, region);
	if (!x) {
		ret = fail(err, -EIO, "cannot make the region's EC2 certificate");
		goto out;
	}
	snprintf(tmp, sizeof(tmp), ".ec2-cert.%d.tmp", (int)getpid());
	ret = write_tmp_pem(rfd, tmp, 0644, NULL, x);
	if (!ret && linkat(rfd, tmp, rfd, "ec2-cert.pem", 0) < 0 && errno != EEXIST)
		ret = -errno;
	unlinkat(rfd, tmp, 0);
	if (ret) {
		fail(err, ret, "cannot write %s/ec2-cert.pem: %s", dir, strerror(-ret));
		goto out;
	}
	fsync(rfd);
out:
	ERR_clear_error();
	EVP_PKEY_free(k);
	X509_free(x);
	close(rfd);
	return ret;
}

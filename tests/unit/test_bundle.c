/* SPDX-License-Identifier: MIT */
/*
 * test_bundle.c - snapshot/bundle.h through its C API, as ebsimd uses it: the name
 * validators (bucket, object, prefix, part) and bundle_bdm_parse against tables of good
 * and bad names; a bundle made with bundle_create (keys generated here) parses from
 * memory, verifies, and unbundles into a memfd with the user's key and with the region EC2
 * key from bundle_region_keys, giving back the image; a part changed after bundling is
 * -EBADMSG with nothing written; a key that matches neither copy is -EKEYREJECTED.
 * Exit: 0 pass, 1 fail, 77 skip.
 */
#include "common/common.h"
#include "snapshot/bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static int failures;
static char dir[512];

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
			fprintf(stderr, __VA_ARGS__);                                      \
			fputc('\n', stderr);                                               \
			failures++;                                                        \
		}                                                                          \
	} while (0)

static void test_names(void)
{
	static const char *const good_buckets[] = {"abc", "my-bucket", "a.b.c", "0day",
						   "x123456789012345678901234567890123456789012345678901234567890y"};
	static const char *const bad_buckets[] = {"", "ab", "-ab", "ab-", "Abc", "a..b", "a_b",
						  "a/b", "../x", "192.168.1.1", "a.-b", "a-.b",
						  "x12345678901234567890123456789012345678901234567890123456789012y"};
	static const char *const bad_objects[] = {"", ".x", "..", "a/b", "../a", "a b", "a\n",
						  "é"};
	static const char *const good_parts[] = {"image.part.0", "x.part.00", "a.b.part.9999"};
	static const char *const bad_parts[] = {"image.part.", "image.part.x", ".part.0",
						"../image.part.0", "a/image.part.0", "image.part.0/",
						"image.part.12345", "image"};

	for (size_t i = 0; i < ARRAY_SIZE(good_buckets); i++)
		CHECK(bundle_valid_bucket(good_buckets[i]), "%s", good_buckets[i]);
	for (size_t i = 0; i < ARRAY_SIZE(bad_buckets); i++)
		CHECK(!bundle_valid_bucket(bad_buckets[i]), "%s", bad_buckets[i]);
	CHECK(bundle_valid_object("image.manifest.xml"), "object");
	for (size_t i = 0; i < ARRAY_SIZE(bad_objects); i++)
		CHECK(!bundle_valid_object(bad_objects[i]), "%s", bad_objects[i]);
	for (size_t i = 0; i < ARRAY_SIZE(good_parts); i++)
		CHECK(bundle_valid_part_name(good_parts[i]), "%s", good_parts[i]);
	for (size_t i = 0; i < ARRAY_SIZE(bad_parts); i++)
		CHECK(!bundle_valid_part_name(bad_parts[i]), "%s", bad_parts[i]);
	CHECK(bundle_valid_arch("arm64") && !bundle_valid_arch("aarch64"), "arch");
}

static void test_bdm(void)
{
	struct bundle_bdm b[4];
	char err[BUNDLE_ERR_MAX];
	int n = bundle_bdm_parse("ami=sda1,root=/dev/sda1,ephemeral0=sdb,swap=sda3", b, 4, err);

	CHECK(n == 4, "%d %s", n, err);
	CHECK(n == 4 && !strcmp(b[1].virtual_name, "root") && !strcmp(b[1].device, "/dev/sda1"),
	      "root");
	CHECK(bundle_bdm_parse("ami=sda1,ami=sdb", b, 4, err) == -EINVAL, "twice");
	CHECK(bundle_bdm_parse("ami=sda1,", b, 4, err) == -EINVAL, "trailing comma");
	CHECK(bundle_bdm_parse("disk=sda1", b, 4, err) == -EINVAL, "virtual");
	CHECK(bundle_bdm_parse("ami=../x", b, 4, err) == -EINVAL, "device");
	CHECK(bundle_bdm_parse("ami=a,root=b,swap=c,ephemeral0=d,ephemeral1=e", b, 4, err) ==
		      -E2BIG, "too many");
}

static void write_keypair(const char *key, const char *cert)
{
	EVP_PKEY *k = EVP_RSA_gen(2048);
	X509 *x = X509_new();
	FILE *f;

	if (!k || !x)
		exit(1);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"unit", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_sign(x, k, EVP_sha256());
	f = fopen(key, "w");
	PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	f = fopen(cert, "w");
	PEM_write_X509(f, x);
	fclose(f);
	EVP_PKEY_free(k);
	X509_free(x);
}

static char *slurp(const char *path, size_t *len)
{
	void *b = NULL;

	if (file_read_all(AT_FDCWD, path, &b, len))
		exit(1);
	return b;
}

static void test_round_trip(void)
{
	char key[600], cert[600], key2[600], cert2[600], img[1200], out[600], ec2key[1000];
	char rel_key[256], rel_cert[256], ec2cert[1000], mname[BUNDLE_NAME_MAX + 1];
	char err[BUNDLE_ERR_MAX], *buf, *pem, *cpem, *k2;
	size_t len, pem_len, cpem_len, k2_len;
	struct bundle_manifest *m = NULL;
	size_t size = (12u << 20) + 12345; /* two parts */
	uint8_t *data = malloc(size);
	int dfd, fd, ret;
	struct bundle_bdm bdm[1] = {{"root", "/dev/xvda"}};
	struct bundle_params p = {0};

	snprintf(key, sizeof(key), "%s/k.pem", dir);
	snprintf(cert, sizeof(cert), "%s/c.pem", dir);
	snprintf(key2, sizeof(key2), "%s/k2.pem", dir);
	snprintf(cert2, sizeof(cert2), "%s/c2.pem", dir);
	snprintf(img, sizeof(img), "%s/disk", dir);
	snprintf(out, sizeof(out), "%s/out", dir);
	write_keypair(key, cert);
	write_keypair(key2, cert2);
	if (!data || rand_bytes(data, size) || mkdir(out, 0755))
		exit(1);
	fd = open(img, O_WRONLY | O_CREAT, 0644);
	if (fd < 0 || file_write_full(fd, data, size))
		exit(1);
	close(fd);
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	ret = bundle_region_keys(dfd, "eu-west-1", rel_key, rel_cert, err);
	CHECK(ret == 0, "region keys: %s", err);
	CHECK(bundle_region_keys(dfd, "../x", NULL, NULL, err) == -EINVAL, "bad region");
	snprintf(ec2key, sizeof(ec2key), "%s/%s", dir, rel_key);
	snprintf(ec2cert, sizeof(ec2cert), "%s/%s", dir, rel_cert);

	p.image_path = img;
	p.prefix = "unit";
	p.dest_dir = out;
	p.user_key = key;
	p.user_cert = cert;
	p.ec2_cert = ec2cert;
	p.account = "123456789012";
	p.arch = "x86_64";
	p.kernel_id = "aki-abcdef01";
	p.bdm = bdm;
	p.n_bdm = 1;
	ret = bundle_create(&p, mname, err);
	CHECK(ret == 0 && !strcmp(mname, "unit.manifest.xml"), "create: %d %s", ret, err);
	CHECK(bundle_create(&p, mname, err) == -EEXIST, "second create");

	snprintf(img, sizeof(img), "%s/unit.manifest.xml", out);
	buf = slurp(img, &len);
	ret = bundle_manifest_parse(buf, len, &m, err);
	CHECK(ret == 0, "parse: %s", err);
	if (ret)
		exit(1);
	CHECK(m->n_parts == 2 && !strcmp(m->parts[1].filename, "unit.part.1"), "%zu parts",
	      m->n_parts);
	CHECK(m->size == size && !strcmp(m->name, "unit") && !strcmp(m->user, "123456789012") &&
		      !strcmp(m->kernel_id, "aki-abcdef01") && m->n_bdm == 1,
	      "fields");
	pem = slurp(cert, &pem_len);
	cpem = slurp(cert2, &cpem_len);
	CHECK(bundle_verify_signature(m, pem, pem_len, err) == 0, "sig: %s", err);
	CHECK(bundle_verify_signature(m, cpem, cpem_len, err) == -EBADMSG, "other cert");
	close(dfd);
	dfd = open(out, O_RDONLY | O_DIRECTORY);
	CHECK(bundle_verify_parts(m, dfd, NULL, NULL, err) == 0, "parts: %s", err);

	for (int i = 0; i < 3; i++) {
		const char *kp = i == 0 ? key : i == 1 ? ec2key : key2;
		char *kpem;
		size_t kl;
		int mfd = memfd_create("unbundle", 0);
		struct stat st;

		kpem = slurp(kp, &kl);
		ret = bundle_unbundle(m, pem, pem_len, dfd, kpem, kl, mfd, NULL, NULL, err);
		fstat(mfd, &st);
		if (i < 2) {
			uint8_t *back = malloc(size);

			CHECK(ret == 0, "unbundle %d: %s", i, err);
			CHECK((size_t)st.st_size == size && back &&
				      pread(mfd, back, size, 0) == (ssize_t)size &&
				      !memcmp(back, data, size),
			      "bytes back %d", i);
			free(back);
		} else {
			CHECK(ret == -EKEYREJECTED && st.st_size == 0, "foreign key: %d", ret);
		}
		free(kpem);
		close(mfd);
	}

	/* a flipped byte in part 1: nothing written */
	fd = openat(dfd, "unit.part.1", O_RDWR);
	if (fd < 0 || pwrite(fd, "X", 1, 100) != 1)
		exit(1);
	close(fd);
	{
		int mfd = memfd_create("unbundle", 0);
		struct stat st;

		k2 = slurp(key, &k2_len);
		ret = bundle_unbundle(m, pem, pem_len, dfd, k2, k2_len, mfd, NULL, NULL, err);
		fstat(mfd, &st);
		CHECK(ret == -EBADMSG && st.st_size == 0, "tampered: %d", ret);
		CHECK(strstr(err, "unit.part.1"), "message names the part: %s", err);
		close(mfd);
		free(k2);
	}
	bundle_manifest_free(m);
	close(dfd);
	free(buf);
	free(pem);
	free(cpem);
	free(data);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/ebsim-unit-bundle-XXXXXX");
	if (!mkdtemp(dir))
		return 77;
	test_names();
	test_bdm();
	test_round_trip();
	file_remove_tree(AT_FDCWD, dir);
	if (failures)
		fprintf(stderr, "%d failure(s)\n", failures);
	return failures ? 1 : 0;
}

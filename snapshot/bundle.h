/* SPDX-License-Identifier: MIT */
/*
 * bundle.h - instance-store AMI bundles (ec2-ami-tools format, manifest version 2007-10-10).
 *
 * A bundle is PREFIX.manifest.xml plus PREFIX.part.NN files in one directory:
 *   image file --tar (one member)--> tar stream --gzip--> --AES-128-CBC(key, iv)--> split
 *   into BUNDLE_PART_SIZE (10 MiB) parts PREFIX.part.N, N zero-padded to the number of
 *   digits of the part count (as ec2-ami-tools' FileUtil.split: .part.0-.part.2 for three
 *   parts, .part.00-.part.11 for twelve). The tar member and <image><name> are PREFIX.
 * The manifest (libxml2-written) holds the SHA-1 of the tar stream, of every part, the
 * AES key and IV (as lower-case hex strings) each wrapped with RSA PKCS#1 v1.5 under the
 * user's certificate and under the region's EC2 certificate, and an RSA-SHA1 signature
 * (user's private key) over the serialised <machine_configuration> element immediately
 * followed by the serialised <image> element, as ec2-ami-tools computes it.
 *
 * Trust: bundle_manifest_parse only checks shape; bundle_verify_signature ties the manifest
 * to a certificate; bundle_verify_parts ties the part files to the (signed) manifest;
 * bundle_unbundle does all three before writing a byte to its output.
 *
 * Errors: functions return 0 (or >= 0) on success and -errno on failure, and fill err
 * (when not NULL) with one human-readable sentence. Classes used:
 *   -EINVAL   malformed input (manifest shape, parameter, name);
 *   -EBADMSG  integrity failure (signature, part digest, tar digest, image size, decrypt);
 *   -ENOENT   a file the bundle needs is missing;  -EEXIST  an output already exists;
 *   -EKEYREJECTED  the private key matches neither wrapped copy of the AES key;
 *   -E2BIG    a hard limit (manifest size, part count, image size) is exceeded;
 *   -ENOSYS   not implemented.
 * Thread safety: no global state besides OpenSSL/libxml2's own; functions are reentrant.
 */
#ifndef EBSIM_BUNDLE_H
#define EBSIM_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BUNDLE_MANIFEST_VERSION "2007-10-10"
#define BUNDLE_PART_SIZE (10u * 1024 * 1024) /* ec2-bundle-image's CHUNK_SIZE */
#define BUNDLE_MAX_PARTS 10000		    /* part.NN..part.9999 */
#define BUNDLE_MANIFEST_MAX (4u * 1024 * 1024) /* bytes accepted by the parser */
#define BUNDLE_MAX_BDM 32
#define BUNDLE_NAME_MAX 255
#define BUNDLE_SHA1_LEN 20
#define BUNDLE_ERR_MAX 256

/* Progress callback: done out of total bytes of the current step (step is a short English
 * word: "bundle", "verify", "unbundle"). Return non-zero to cancel (-ECANCELED). */
typedef int (*bundle_progress_fn)(void *arg, const char *step, uint64_t done, uint64_t total);

/* One <block_device_mapping><mapping>: virtual is "ami", "root", "swap" or "ephemeralN";
 * device is a device name like "sda1" or "/dev/sda1". */
struct bundle_bdm {
	char virtual_name[32];
	char device[64];
};

/* What bundle_create needs. Paths are opened by the library; PEM files are read whole. */
struct bundle_params {
	const char *image_path; /* the image file (or an ebsim volume's FUSE file) */
	const char *image_name; /* default of prefix; NULL = basename(image_path) */
	const char *prefix;	/* bundle prefix = tar member name = <image><name>; NULL =
				 * image_name. Must pass bundle_valid_prefix */
	const char *dest_dir;	/* where manifest and parts go (must exist) */
	const char *user_key;	/* path: user's RSA private key (PEM) - signs */
	const char *user_cert;	/* path: user's X.509 certificate (PEM) - wraps key/iv */
	const char *ec2_cert;	/* path: region's EC2 X.509 certificate (PEM) - wraps key/iv */
	const char *account;	/* 12-digit account id: <user> */
	const char *arch;	/* "i386", "x86_64" or "arm64" */
	const char *kernel_id;	/* "aki-..." or NULL */
	const char *ramdisk_id; /* "ari-..." or NULL */
	const struct bundle_bdm *bdm; /* NULL/0 = the default ami=sda1, root=/dev/sda1 */
	size_t n_bdm;
	bundle_progress_fn progress;
	void *progress_arg;
};

/* Bundle p->image_path into p->dest_dir. Nothing named PREFIX.* may exist there (-EEXIST);
 * on failure every file it created is removed. manifest_name receives
 * "PREFIX.manifest.xml" (buffer of BUNDLE_NAME_MAX + 1). */
int bundle_create(const struct bundle_params *p, char *manifest_name, char *err);

/* ---- manifests ----------------------------------------------------------------------- */

struct bundle_part {
	char filename[BUNDLE_NAME_MAX + 1]; /* one path component, bundle_valid_part_name */
	uint8_t sha1[BUNDLE_SHA1_LEN];
};

struct bundle_manifest {
	char version[16];	    /* "2007-10-10" */
	char bundler_name[64];	    /* <bundler><name> */
	char bundler_version[32];
	char bundler_release[32];
	char arch[16];		    /* <machine_configuration><architecture> */
	char kernel_id[32];	    /* "" when absent */
	char ramdisk_id[32];
	struct bundle_bdm bdm[BUNDLE_MAX_BDM];
	size_t n_bdm;
	char name[BUNDLE_NAME_MAX + 1]; /* <image><name>: the tar member name */
	char user[16];		    /* <image><user>: account id */
	char type[16];		    /* <image><type>: "machine" */
	uint64_t size;		    /* <image><size>: image bytes */
	uint64_t bundled_size;	    /* <image><bundled_size>: encrypted bytes (sum of parts) */
	uint8_t tar_sha1[BUNDLE_SHA1_LEN]; /* <image><digest algorithm="SHA1"> */
	/* <ec2_encrypted_key> etc., hex-decoded RSA ciphertexts */
	uint8_t *ec2_enc_key, *user_enc_key, *ec2_enc_iv, *user_enc_iv;
	size_t ec2_enc_key_len, user_enc_key_len, ec2_enc_iv_len, user_enc_iv_len;
	struct bundle_part *parts; /* in index order 0..n_parts-1 */
	size_t n_parts;
	uint8_t *signature; /* hex-decoded <signature> */
	size_t signature_len;
	/* the exact bytes the signature covers: serialised <machine_configuration> then
	 * <image> */
	char *signed_data;
	size_t signed_len;
};

/* Parse a manifest from memory (at most BUNDLE_MANIFEST_MAX bytes). No DTD, entity
 * expansion or network access; element shape, counts, hex fields, part names and index
 * order are checked. Does NOT verify the signature. *out is freed with
 * bundle_manifest_free. */
int bundle_manifest_parse(const char *buf, size_t len, struct bundle_manifest **out, char *err);
/* Read dirfd/name (at most BUNDLE_MANIFEST_MAX bytes, O_NOFOLLOW) and parse it. */
int bundle_manifest_load(int dirfd, const char *name, struct bundle_manifest **out, char *err);
void bundle_manifest_free(struct bundle_manifest *m);

/* Verify m's RSA-SHA1 signature over m->signed_data with the public key of the X.509
 * certificate in cert_pem (PEM text, cert_len bytes). 0 or -EBADMSG / -EINVAL. */
int bundle_verify_signature(const struct bundle_manifest *m, const char *cert_pem,
			    size_t cert_len, char *err);

/* Check every part in srcdirfd against m: each file exists as a regular file (no
 * symlinks), the sizes add up to m->bundled_size, every SHA-1 matches, and no other file
 * PREFIX.part.* (same prefix as the parts) is present (extra part). */
int bundle_verify_parts(const struct bundle_manifest *m, int srcdirfd,
			bundle_progress_fn progress, void *arg, char *err);

/* Verify the signature against cert_pem, verify every part (bundle_verify_parts), then
 * decrypt with key_pem (the user's OR the region EC2 private key: whichever wrapped copy
 * it opens), gunzip, untar the single member and write the image to out_fd, checking the
 * tar stream's SHA-1 and the image size. Nothing is written to out_fd before the signature
 * and every part digest have verified; on failure after that, out_fd holds partial data
 * the caller must discard (the tool writes a temp file and renames on success). */
int bundle_unbundle(const struct bundle_manifest *m, const char *cert_pem, size_t cert_len,
		    int srcdirfd, const char *key_pem, size_t key_len, int out_fd,
		    bundle_progress_fn progress, void *arg, char *err);

/* Does key_pem (the region's EC2 private key) open the EC2-wrapped copies of the bundle's
 * key and IV? 0, or -EKEYREJECTED / -EINVAL. Nothing is decrypted beyond those 32 bytes. */
int bundle_check_ec2_key(const struct bundle_manifest *m, const char *key_pem, size_t key_len);

/* ---- names, keys ------------------------------------------------------------------- */

/* S3 bucket rules: 3-63 chars of [a-z0-9.-], first and last alphanumeric, no "..", not
 * an IPv4 address. */
bool bundle_valid_bucket(const char *s);
/* Object name: one path component of [A-Za-z0-9._-], not starting with '.', 1-255 chars. */
bool bundle_valid_object(const char *s);
/* Bundle prefix: a valid object name short enough that PREFIX.manifest.xml and
 * PREFIX.part.NNNN are valid object names too. */
bool bundle_valid_prefix(const char *s);
/* Part file name: a valid object name containing ".part." followed by digits only. */
bool bundle_valid_part_name(const char *s);
/* Architecture accepted in a manifest: "i386", "x86_64", "arm64". */
bool bundle_valid_arch(const char *s);

/* Ensure home_dirfd/regions/<region>/ec2-key.pem (0600, RSA-2048) and ec2-cert.pem (0644,
 * self-signed, CN=ec2-<region>) exist, creating them atomically if missing (temp files,
 * then link(); racing creators agree on one pair). The region name is validated. If
 * key_path/cert_path are not NULL they receive the paths relative to home_dirfd
 * (buffers of 256 bytes). */
int bundle_region_keys(int home_dirfd, const char *region, char *key_path, char *cert_path,
		       char *err);

/* Parse "ami=sda1,root=/dev/sda1,ephemeral0=sdb" (the ec2-bundle-image syntax) into
 * out[max]; returns the count or -EINVAL / -E2BIG. */
int bundle_bdm_parse(const char *s, struct bundle_bdm *out, size_t max, char *err);

#endif /* EBSIM_BUNDLE_H */

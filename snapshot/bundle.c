/* SPDX-License-Identifier: MIT */
/* bundle.c - instance-store AMI bundles (stub; see bundle.h). */
#include <errno.h>
#include <stdio.h>

#include "snapshot/bundle.h"

static int nosys(char *err)
{
	if (err)
		snprintf(err, BUNDLE_ERR_MAX, "not implemented");
	return -ENOSYS;
}

int bundle_create(const struct bundle_params *p, char *manifest_name, char *err)
{
	(void)p, (void)manifest_name;
	return nosys(err);
}
int bundle_manifest_parse(const char *buf, size_t len, struct bundle_manifest **out, char *err)
{
	(void)buf, (void)len, (void)out;
	return nosys(err);
}
int bundle_manifest_load(int dirfd, const char *name, struct bundle_manifest **out, char *err)
{
	(void)dirfd, (void)name, (void)out;
	return nosys(err);
}
void bundle_manifest_free(struct bundle_manifest *m)
{
	(void)m;
}
int bundle_verify_signature(const struct bundle_manifest *m, const char *cert_pem,
			    size_t cert_len, char *err)
{
	(void)m, (void)cert_pem, (void)cert_len;
	return nosys(err);
}
int bundle_verify_parts(const struct bundle_manifest *m, int srcdirfd,
			bundle_progress_fn progress, void *arg, char *err)
{
	(void)m, (void)srcdirfd, (void)progress, (void)arg;
	return nosys(err);
}
int bundle_unbundle(const struct bundle_manifest *m, const char *cert_pem, size_t cert_len,
		    int srcdirfd, const char *key_pem, size_t key_len, int out_fd,
		    bundle_progress_fn progress, void *arg, char *err)
{
	(void)m, (void)cert_pem, (void)cert_len, (void)srcdirfd, (void)key_pem, (void)key_len;
	(void)out_fd, (void)progress, (void)arg;
	return nosys(err);
}
bool bundle_valid_bucket(const char *s) { (void)s; return false; }
bool bundle_valid_object(const char *s) { (void)s; return false; }
bool bundle_valid_prefix(const char *s) { (void)s; return false; }
bool bundle_valid_part_name(const char *s) { (void)s; return false; }
bool bundle_valid_arch(const char *s) { (void)s; return false; }
int bundle_region_keys(int home_dirfd, const char *region, char *key_path, char *cert_path,
		       char *err)
{
	(void)home_dirfd, (void)region, (void)key_path, (void)cert_path;
	return nosys(err);
}
int bundle_bdm_parse(const char *s, struct bundle_bdm *out, size_t max, char *err)
{
	(void)s, (void)out, (void)max;
	return nosys(err);
}

/* SPDX-License-Identifier: MIT */
/*
 * itypes.h - the built-in table of EC2 instance types (part of persistence/'s API).
 */
#ifndef EBSIM_ITYPES_H
#define EBSIM_ITYPES_H

#include <stdbool.h>

struct itype {
	const char *name;
	const char *arch; /* x86_64 | arm64 */
	bool pv, hvm;	  /* supported virtualization types */
	int vcpus;
	int mem_mib;
	int store_count;    /* instance-store volumes */
	int store_gib;	    /* size of each, GiB (EC2's GB figure, as GiB) */
	const char *store_kind; /* "hdd", "ssd", "nvme-ssd" or NULL */
};

/* NULL when the name is not a known type. */
const struct itype *itype_find(const char *name);
/* Call fn for each known type, in table order. */
void itype_each(void (*fn)(void *arg, const struct itype *t), void *arg);

#endif

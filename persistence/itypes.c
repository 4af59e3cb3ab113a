/* SPDX-License-Identifier: MIT */
/*
 * itypes.c - EC2 instance types: architecture, virtualization types, instance store.
 *
 * Design notes
 * ------------
 * Figures come from Amazon's EC2 documentation: the "Amazon EC2 instance types" pages
 * (current generation: vCPUs, memory, instance store volumes) and "Previous generation
 * instances" (C1, C3, M1, M2, M3, T1), and the "Linux AMI virtualization types" page:
 * paravirtual is supported only on the previous-generation families C1, C3, M1, M2, M3
 * and T1 (T1, M1, C1 and M2 are PV-only; C3 and M3 take both); every current-generation
 * type is HVM-only. Instance store sizes are EC2's per-volume figures; ebsimd creates them
 * as sparse files and can scale them down with --instance-store-scale.
 */
#include "persistence/itypes.h"

#include <stddef.h>
#include <string.h>

static const struct itype itypes[] = {
	/* previous generation */
	{"t1.micro", "x86_64", true, false, 1, 627, 0, 0, NULL},
	{"m1.small", "x86_64", true, false, 1, 1740, 1, 160, "hdd"},
	{"m1.medium", "x86_64", true, false, 1, 3840, 1, 410, "hdd"},
	{"m1.large", "x86_64", true, false, 2, 7680, 2, 420, "hdd"},
	{"m1.xlarge", "x86_64", true, false, 4, 15360, 4, 420, "hdd"},
	{"c1.medium", "x86_64", true, false, 2, 1740, 1, 350, "hdd"},
	{"c1.xlarge", "x86_64", true, false, 8, 7168, 4, 420, "hdd"},
	{"m2.xlarge", "x86_64", true, false, 2, 17510, 1, 420, "hdd"},
	{"m2.2xlarge", "x86_64", true, false, 4, 35020, 1, 850, "hdd"},
	{"m3.medium", "x86_64", true, true, 1, 3840, 1, 4, "ssd"},
	{"m3.large", "x86_64", true, true, 2, 7680, 1, 32, "ssd"},
	{"m3.xlarge", "x86_64", true, true, 4, 15360, 2, 40, "ssd"},
	{"c3.large", "x86_64", true, true, 2, 3840, 2, 16, "ssd"},
	{"c3.xlarge", "x86_64", true, true, 4, 7680, 2, 40, "ssd"},
	/* current generation, x86_64 */
	{"t2.micro", "x86_64", false, true, 1, 1024, 0, 0, NULL},
	{"t3.micro", "x86_64", false, true, 2, 1024, 0, 0, NULL},
	{"t3.small", "x86_64", false, true, 2, 2048, 0, 0, NULL},
	{"t3.medium", "x86_64", false, true, 2, 4096, 0, 0, NULL},
	{"m5.large", "x86_64", false, true, 2, 8192, 0, 0, NULL},
	{"m5.xlarge", "x86_64", false, true, 4, 16384, 0, 0, NULL},
	{"m5d.large", "x86_64", false, true, 2, 8192, 1, 75, "nvme-ssd"},
	{"m5d.xlarge", "x86_64", false, true, 4, 16384, 1, 150, "nvme-ssd"},
	{"c5.large", "x86_64", false, true, 2, 4096, 0, 0, NULL},
	{"c5d.large", "x86_64", false, true, 2, 4096, 1, 50, "nvme-ssd"},
	{"r5.large", "x86_64", false, true, 2, 16384, 0, 0, NULL},
	{"i3.large", "x86_64", false, true, 2, 15616, 1, 475, "nvme-ssd"},
	{"i3.xlarge", "x86_64", false, true, 4, 31232, 1, 950, "nvme-ssd"},
	/* current generation, arm64 (Graviton2) */
	{"t4g.micro", "arm64", false, true, 2, 1024, 0, 0, NULL},
	{"m6g.large", "arm64", false, true, 2, 8192, 0, 0, NULL},
	{"m6gd.large", "arm64", false, true, 2, 8192, 1, 118, "nvme-ssd"},
	{"c6gd.large", "arm64", false, true, 2, 4096, 1, 118, "nvme-ssd"},
};

const struct itype *itype_find(const char *name)
{
	for (size_t i = 0; name && i < sizeof(itypes) / sizeof(itypes[0]); i++)
		if (!strcmp(itypes[i].name, name))
			return &itypes[i];
	return NULL;
}

void itype_each(void (*fn)(void *arg, const struct itype *t), void *arg)
{
	for (size_t i = 0; i < sizeof(itypes) / sizeof(itypes[0]); i++)
		fn(arg, &itypes[i]);
}

/* SPDX-License-Identifier: MIT */
/* ebsim-ami - placeholder until the AMI tools land (issue 5). */
#include <stdio.h>
int main(void)
{
	fprintf(stderr, "ebsim-ami: not built yet\n");
	return 1;
}

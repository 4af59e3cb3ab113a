/* SPDX-License-Identifier: MIT */
/* ctl_i.h - ebsimd's control socket (ctl.c), private to daemon/. */
#ifndef EBSIM_CTL_I_H
#define EBSIM_CTL_I_H

#include "daemon/daemon_i.h"

/* Create, bind (0600) and listen on <home>/ebsimd.sock. */
int ctl_listen(struct daemon *d, int *out);
/* Accept one connection and serve its one request. */
void ctl_serve_one(struct daemon *d, int lfd);
/* Serve one request given as text (also the fuzzing entry point); never returns NULL. */
json_object *ctl_handle(struct daemon *d, const char *text, size_t len);

#endif

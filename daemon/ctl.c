/* SPDX-License-Identifier: MIT */
/*
 * ctl.c - the control socket: accept one connection, read one JSON request line, dispatch,
 * write one JSON reply line, close (protocol in common/ctl_proto.h).
 *
 * Design notes
 * ------------
 * Requests are served one at a time on the daemon's main thread. A client gets
 * CTL_TIMEOUT_S to send its request, so a stuck client cannot wedge the daemon for long.
 * The socket is created with umask 077 and chmod 0600 before listen(): only root connects.
 */
#include "daemon/ctl_i.h"
#include "common/ctl_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_TIMEOUT_S 10

int ctl_listen(struct daemon *d, int *out)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	mode_t old;
	int fd, ret;

	if (snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", d->home, CTL_SOCK_NAME) >=
	    (int)sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(sa.sun_path); /* a stale socket from a crash; we hold the home's lock */
	old = umask(077);
	ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (ret < 0 || chmod(sa.sun_path, 0600) < 0 || listen(fd, 64) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	*out = fd;
	return 0;
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read up to the first '\n' (or EOF). Returns a malloc'd NUL-terminated string or NULL. */
static char *read_line(int fd, size_t *lenp)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);

	while (buf) {
		ssize_t n;
		if (len + 1 >= cap) {
			if (cap >= CTL_MAX_MSG) {
				free(buf);
				*lenp = CTL_MAX_MSG;
				return NULL;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		char *nl = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
		if (nl) {
			len = (size_t)(nl - buf);
			break;
		}
	}
	if (!buf)
		return NULL;
	buf[len] = 0;
	*lenp = len;
	return buf;
}

/* Serve a request given as text; returns the reply object (never NULL). */
json_object *ctl_handle(struct daemon *d, const char *text, size_t len)
{
	struct api_req r = {.d = d};
	json_object *req = NULL, *reply = json_object_new_object(), *v;
	json_tokener *tok = json_tokener_new();
	int ret = -1;

	if (tok && len <= CTL_MAX_MSG) {
		req = json_tokener_parse_ex(tok, text, (int)len);
		if (req && json_tokener_get_parse_end(tok) != len) {
			json_object_put(req);
			req = NULL;
		}
	}
	json_tokener_free(tok);
	if (!req || !json_object_is_type(req, json_type_object)) {
		api_error(&r, "InvalidRequest", "The request is not a JSON object");
		goto out;
	}
	if (!json_object_object_get_ex(req, "Action", &v) || !json_object_is_type(v, json_type_string)) {
		api_error(&r, "MissingAction", "The request must contain the parameter Action");
		goto out;
	}
	r.action = json_object_get_string(v);
	if (json_object_object_get_ex(req, "Account", &v) && json_object_is_type(v, json_type_string))
		r.account = json_object_get_string(v);
	if (json_object_object_get_ex(req, "Region", &v) && json_object_is_type(v, json_type_string))
		r.region = json_object_get_string(v);
	if (json_object_object_get_ex(req, "Params", &v)) {
		if (!json_object_is_type(v, json_type_object)) {
			api_error(&r, "InvalidRequest", "Params must be a JSON object");
			goto out;
		}
		r.params = v;
	} else {
		r.params = json_object_new_object();
		json_object_object_add(req, "Params", r.params);
	}
	pthread_mutex_lock(&d->lock);
	jobs_reap(d);
	ret = api_dispatch(&r);
	pthread_mutex_unlock(&d->lock);
out:
	if (ret == 0 && r.result) {
		json_object_object_add(reply, "Result", r.result);
	} else {
		json_object *e = json_object_new_object();
		if (!r.code[0])
			api_error(&r, "InternalError", "The action failed without a reason");
		json_object_object_add(e, "Code", json_object_new_string(r.code));
		json_object_object_add(e, "Message", json_object_new_string(r.message));
		json_object_object_add(reply, "Error", e);
		if (r.result)
			json_object_put(r.result);
	}
	if (r.action)
		log_info("%s account=%s region=%s -> %s", r.action, r.account ? r.account : "-",
			 r.region ? r.region : "-", ret == 0 ? "ok" : r.code);
	json_object_put(req);
	return reply;
}

void ctl_serve_one(struct daemon *d, int lfd)
{
	struct timeval tv = {.tv_sec = CTL_TIMEOUT_S};
	json_object *reply;
	const char *out;
	size_t len;
	char *line;
	int fd;

	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	line = read_line(fd, &len);
	reply = ctl_handle(d, line ? line : "", line ? len : CTL_MAX_MSG + 1);
	crash_point("before-reply");
	out = json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN |
							    JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!send_all(fd, out, strlen(out)))
		send_all(fd, "\n", 1);
	json_object_put(reply);
	free(line);
	close(fd);
}

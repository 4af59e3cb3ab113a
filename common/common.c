/* SPDX-License-Identifier: MIT */
/* common.c - logging, IDs, time stamps and careful file helpers (see common.h). */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static enum log_level log_level = LOG_INFO;
static char log_prefix[32] = "ebsim";
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level l)
{
	log_level = l;
}

void log_set_prefix(const char *prefix)
{
	snprintf(log_prefix, sizeof(log_prefix), "%s", prefix);
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	char ts[32];
	va_list ap;

	if (l > log_level)
		return;
	time_iso8601(ts);
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s %s[%d] %s: ", ts, log_prefix, (int)getpid(), names[l]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
}

int rand_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = getrandom(p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int run_isolated(int (*fn)(void *arg), void *arg)
{
	pid_t pid = fork();
	int st, ret;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close_range(3, ~0U, 0);
		ret = fn(arg);
		_exit(ret < 0 ? (-ret) & 0xff : 0);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? -WEXITSTATUS(st) : -EIO;
}

void secure_zero(void *p, size_t len)
{
	explicit_bzero(p, len);
}

int id_new(const char *prefix, char out[ID_MAX])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t r[ID_HEX_DIGITS];
	size_t n = strlen(prefix);
	int ret;

	if (n + 1 + ID_HEX_DIGITS + 1 > ID_MAX)
		return -EINVAL;
	ret = rand_bytes(r, sizeof(r));
	if (ret)
		return ret;
	memcpy(out, prefix, n);
	out[n++] = '-';
	for (int i = 0; i < ID_HEX_DIGITS; i++)
		out[n++] = hex[r[i] & 15];
	out[n] = '\0';
	return 0;
}

bool id_valid(const char *prefix, const char *s)
{
	size_t n = strlen(prefix);

	if (!s || strncmp(s, prefix, n) != 0 || s[n] != '-')
		return false;
	s += n + 1;
	for (int i = 0; i < ID_HEX_DIGITS; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return s[ID_HEX_DIGITS] == '\0';
}

void time_iso8601(char out[32])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);

	snprintf(out + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
}

uint64_t time_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int file_write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int file_write_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode)
{
	char tmp[256];
	int fd, ret;

	if (snprintf(tmp, sizeof(tmp), ".%s.tmp", name) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	ret = file_write_full(fd, buf, len);
	if (!ret && fchmod(fd, mode) < 0)
		ret = -errno;
	if (!ret && fsync(fd) < 0)
		ret = -errno;
	close(fd);
	if (!ret && renameat(dirfd, tmp, dirfd, name) < 0)
		ret = -errno;
	if (ret) {
		unlinkat(dirfd, tmp, 0);
		return ret;
	}
	if (fsync(dirfd) < 0)
		return -errno;
	return 0;
}

int file_read_all(int dirfd, const char *name, void **bufp, size_t *lenp)
{
	struct stat st;
	uint8_t *buf;
	size_t got = 0;
	int fd, ret = 0;

	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
		ret = -EINVAL;
		goto out_close;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			free(buf);
			goto out_close;
		}
		got += (size_t)n;
	}
	buf[got] = 0;
	*bufp = buf;
	*lenp = got;
out_close:
	close(fd);
	return ret;
}

int file_remove_tree(int dirfd, const char *name)
{
	struct dirent *de;
	DIR *d;
	int fd, ret = 0;

	if (unlinkat(dirfd, name, 0) == 0)
		return 0;
	if (errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int r = file_remove_tree(fd, de->d_name);
		if (r && !ret)
			ret = r;
	}
	closedir(d);
	if (!ret && unlinkat(dirfd, name, AT_REMOVEDIR) < 0)
		ret = -errno;
	if (!ret)
		fsync(dirfd);
	return ret;
}

#ifdef EBSIM_CRASH_POINTS
#include <signal.h>
#include <stdatomic.h>

void crash_point(const char *name)
{
	static atomic_int hits;
	const char *at = getenv("EBSIM_CRASH_AT"), *after = getenv("EBSIM_CRASH_AFTER");

	if (!at || strcmp(at, name))
		return;
	if (atomic_fetch_add(&hits, 1) + 1 >= (after ? atoi(after) : 1)) {
		log_warn("crash point %s reached: SIGKILL", name);
		kill(getpid(), SIGKILL);
	}
}
#endif

/* SPDX-License-Identifier: MIT */
/*
 * common.h - small helpers shared by every ebsim module: logging, resource IDs, time stamps,
 * safe file creation under a directory fd.
 *
 * IDs are EC2-shaped: a prefix ("vol", "snap", "ami", "i", ...), a dash and 17 lower-case
 * hex digits. id_valid() is the single gate every ID passes before it is used to name
 * anything on disk, so a hostile ID ("vol-../../etc") never reaches the file system.
 */
#ifndef EBSIM_COMMON_H
#define EBSIM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* --- logging ------------------------------------------------------------------------ */
enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };
void log_set_level(enum log_level l);
void log_set_prefix(const char *prefix);
void log_msg(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* --- IDs ------------------------------------------------------------------------------ */
#define ID_HEX_DIGITS 17
#define ID_MAX 32 /* longest prefix "snap" + '-' + 17 + NUL fits easily */

/* Write a fresh random ID "<prefix>-<17 hex>" into out (ID_MAX bytes). 0 or -errno. */
int id_new(const char *prefix, char out[ID_MAX]);
/* True when s is exactly "<prefix>-" followed by 17 lower-case hex digits. */
bool id_valid(const char *prefix, const char *s);

/* --- time ----------------------------------------------------------------------------- */
/* ISO 8601 UTC with milliseconds, as EC2 prints it: 2026-11-28T17:44:59.000Z */
void time_iso8601(char out[32]);
/* Monotonic nanoseconds. */
uint64_t time_mono_ns(void);

/* --- files ---------------------------------------------------------------------------- */
/* Write buf to dirfd/name atomically: temp file in the same directory, fsync, rename,
 * fsync the directory. mode applies to the new file. 0 or -errno. */
int file_write_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode);
/* write(2) all of buf, retrying on EINTR and short writes. 0 or -errno. */
int file_write_full(int fd, const void *buf, size_t len);
/* Read all of dirfd/name (O_NOFOLLOW) into a malloc'd buffer (NUL-terminated as a courtesy). */
int file_read_all(int dirfd, const char *name, void **buf, size_t *len);
/* Remove dirfd/name and everything below it (no symlinks followed). 0 or -errno. */
int file_remove_tree(int dirfd, const char *name);
/* fill buf with cryptographically random bytes. 0 or -errno. */
int rand_bytes(void *buf, size_t len);
/* Overwrite memory that held secrets, in a way the compiler keeps. */
void secure_zero(void *p, size_t len);

/* --- processes ------------------------------------------------------------------------ */
/* Run fn(arg) in a child process that keeps none of the caller's files but 0-2, and wait
 * for it; fn's result (0 or -errno) is returned. For mount(2), umount2, syncfs and FIFREEZE
 * on file systems that sit on ebsimd's own FUSE files: if ebsimd is killed (SIGKILL) while
 * such a call waits for a FUSE reply, its threads die and /dev/fuse is closed (the child
 * never held it), so the kernel aborts the connection and the call fails in the child,
 * instead of leaving an unkillable daemon that answers nothing. fn may make system calls
 * only (no locks, no malloc, no logging). */
int run_isolated(int (*fn)(void *arg), void *arg);

/* --- test-only crash points ------------------------------------------------------------ */
/*
 * Built only with -DEBSIM_CRASH_POINTS (make CRASH=1): crash_point("name") kills the
 * process with SIGKILL on its Nth hit when EBSIM_CRASH_AT=name and EBSIM_CRASH_AFTER=N
 * (default 1) are set in the environment. Names in use: after-data-write,
 * after-data-fsync, after-map-persist, in-catalog-txn, before-reply.
 */
#ifdef EBSIM_CRASH_POINTS
void crash_point(const char *name);
#else
#define crash_point(name) ((void)0)
#endif

#endif

/* SPDX-License-Identifier: MIT */
/*
 * ebsimd.c - the ebsim daemon: one per home directory. Owns the catalog, the volume files,
 * the FUSE mount, the I/O engine and the control socket.
 *
 * Design notes
 * ------------
 * Home layout: catalog.db (+ WAL), volumes/<vol-id>/, keys/master.key (0600, dir 0700),
 * mnt/ (the FUSE mount), ebsimd.sock (0600), ebsimd.pid, ebsimd.lock, ebsimd.log.
 *
 * Start-up: take an exclusive flock on ebsimd.lock (a second daemon refuses), then fork;
 * the parent waits on a pipe until the child reports "ready" (FUSE mounted, volumes
 * served, socket listening, pid file written) or an error, and exits accordingly. A stale
 * FUSE mount left by a crashed daemon is detached first (volfs_clear_stale).
 *
 * Shutdown (SIGTERM, SIGINT, or `ebsimd --stop`, which sends SIGTERM and waits for the
 * lock to be released): stop accepting requests, unmount FUSE, then close every volume,
 * which drains its I/O, flushes and marks it clean.
 */
#include "daemon/ctl_i.h"
#include "common/ctl_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define VERSION "0.1.0"
#define EBSIM_DEFAULT_CACHE "/var/cache/ebsim"

static void usage(FILE *f)
{
	fprintf(f,
		"NAME\n"
		"    ebsimd - the ebsim daemon: EC2-like EBS volumes as real block devices\n\n"
		"SYNOPSIS\n"
		"    ebsimd [--home DIR] [--io-engine io_uring|libaio|psync] [--foreground]\n"
		"           [--fuse-transport dev|io_uring] [--log-level error|warning|info|debug]\n"
		"    ebsimd [--home DIR] --stop\n\n"
		"DESCRIPTION\n"
		"    Serves the volumes of one ebsim home. Each volume appears as a file of its\n"
		"    size under DIR/mnt/ (a FUSE mount), which losetup, qemu or fio can use\n"
		"    directly. The ebsim CLI talks to the daemon through DIR/ebsimd.sock.\n\n"
		"    Without --foreground, ebsimd returns once it is ready: FUSE is mounted at\n"
		"    DIR/mnt, every volume in the catalog is served, the socket listens and\n"
		"    DIR/ebsimd.pid is written. Logs go to DIR/ebsimd.log.\n\n"
		"OPTIONS\n"
		"    --home DIR        the home directory (default: $EBSIM_HOME, else %s)\n"
		"    --io-engine NAME  io_uring (default), libaio or psync\n"
		"    --fuse-transport T\n"
		"                      how the kernel hands FUSE requests to the daemon: dev\n"
		"                      (default: read and write /dev/fuse) or io_uring (FUSE over\n"
		"                      io_uring, Linux 6.14+: requests and replies travel as\n"
		"                      io_uring commands, a batch per system call). io_uring turns\n"
		"                      on the fuse module's enable_uring parameter if it is off,\n"
		"                      and falls back to dev, with a warning in the log, when the\n"
		"                      kernel cannot do it\n"
		"    --foreground      stay attached; log to standard error\n"
		"    --stop            stop the daemon serving DIR: every volume is flushed and\n"
		"                      the FUSE mount is removed\n"
		"    --log-level L     error, warning, info (default) or debug\n"
		"    --instance-store-scale F\n"
		"                      scale instance-store volumes to F (0 < F <= 1) of the EC2\n"
		"                      size of their instance type (they are sparse in any case)\n"
		"    --no-base-images  do not offer the base AMIs (ebsim-base-busybox-*, owned by\n"
		"                      the amazon account): no image file is built or imported\n"
		"    --cache-dir DIR   where the base AMIs' image file is built once per host and\n"
		"                      kept (default %s); every home imports from it\n"
		"    --help, --version\n\n"
		"EXIT STATUS\n"
		"    0 ready (or stopped); 1 failure, with the reason on standard error.\n",
		EBSIM_DEFAULT_HOME, EBSIM_DEFAULT_CACHE);
}

static int mkdir_mode(int dirfd, const char *name, mode_t mode)
{
	struct stat st;

	if (mkdirat(dirfd, name, mode) < 0 && errno != EEXIST)
		return -errno;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	return fchmodat(dirfd, name, mode, 0) < 0 ? -errno : 0;
}

/* Load keys/master.key, creating it (0600 in a 0700 directory) on first start. */
static int load_master_key(struct daemon *d)
{
	int kfd, ret;
	void *buf;
	size_t len;

	ret = mkdir_mode(d->home_fd, "keys", 0700);
	if (ret)
		return ret;
	kfd = openat(d->home_fd, "keys", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (kfd < 0)
		return -errno;
	ret = file_read_all(kfd, "master.key", &buf, &len);
	if (ret == -ENOENT) {
		uint8_t key[VOL_MASTER_KEY_LEN];
		ret = rand_bytes(key, sizeof(key));
		if (!ret)
			ret = file_write_atomic(kfd, "master.key", key, sizeof(key), 0600);
		if (!ret)
			memcpy(d->master_key, key, sizeof(key));
		secure_zero(key, sizeof(key));
	} else if (!ret) {
		if (len == VOL_MASTER_KEY_LEN)
			memcpy(d->master_key, buf, len);
		else
			ret = -EUCLEAN;
		secure_zero(buf, len);
		free(buf);
		if (!ret && fchmodat(kfd, "master.key", 0600, 0) < 0)
			ret = -errno;
	}
	close(kfd);
	return ret;
}

static int read_pid(int home_fd)
{
	void *buf;
	size_t len;
	int pid = 0;

	if (file_read_all(home_fd, "ebsimd.pid", &buf, &len) == 0) {
		pid = atoi(buf);
		free(buf);
	}
	return pid;
}

static int do_stop(const char *home)
{
	int hfd, lfd, pid;

	hfd = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	lfd = hfd >= 0 ? openat(hfd, "ebsimd.lock", O_RDWR | O_CLOEXEC | O_NOFOLLOW) : -1;
	if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) == 0) {
		fprintf(stderr, "ebsimd: no daemon is running on %s\n", home);
		return 0;
	}
	pid = read_pid(hfd);
	if (pid <= 1 || kill(pid, SIGTERM) < 0) {
		fprintf(stderr, "ebsimd: cannot signal the daemon on %s (pid %d): %s\n", home, pid,
			strerror(errno));
		return 1;
	}
	/* the lock is released when the daemon has finished shutting down */
	for (int i = 0; i < 1200; i++) {
		if (flock(lfd, LOCK_EX | LOCK_NB) == 0) {
			fprintf(stderr, "ebsimd: stopped the daemon on %s (pid %d)\n", home, pid);
			return 0;
		}
		usleep(50000);
	}
	fprintf(stderr, "ebsimd: the daemon on %s (pid %d) did not stop within 60 s\n", home, pid);
	return 1;
}

static void shutdown_daemon(struct daemon *d)
{
	jobs_stop(d);
	if (d->fs && d->cat)
		instances_shutdown(d);
	volfs_unmount(d->fs);
	d->fs = NULL;
	while (d->vols) {
		struct dvol *dv = d->vols;
		d->vols = dv->next;
		int ret = vol_close(dv->vol);
		if (ret)
			log_err("flushing %s at shutdown: %s", dv->id, strerror(-ret));
		manifest_free(dv->base);
		free(dv);
	}
	blk_engine_close(d->eng);
	while (d->stores) {
		struct region_store *rs = d->stores;
		d->stores = rs->next;
		store_close(rs->store);
		free(rs);
	}
	cat_close(d->cat);
	secure_zero(d->master_key, sizeof(d->master_key));
}

/* Everything between the fork and "ready". Returns 0 or -errno with a message logged. */
static int start(struct daemon *d, const char *engine, enum volfs_transport transport,
		 int *lfd)
{
	char path[4200];
	int ret;

	/* a crashed daemon's mount answers ENOTCONN to everything: clear it first */
	snprintf(path, sizeof(path), "%s/mnt", d->home);
	ret = volfs_clear_stale(path);
	if (ret == 1)
		log_warn("cleared a stale FUSE mount at %s left by a previous daemon", path);
	else if (ret < 0) {
		log_err("%s is mounted and in use: %s", path, strerror(-ret));
		return ret;
	}
	ret = mkdir_mode(d->home_fd, "volumes", 0700);
	if (!ret)
		ret = mkdir_mode(d->home_fd, "mnt", 0755);
	if (ret) {
		log_err("cannot prepare %s: %s", d->home, strerror(-ret));
		return ret;
	}
	d->vols_fd = openat(d->home_fd, "volumes", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->vols_fd < 0)
		return -errno;
	ret = mkdir_mode(d->home_fd, "regions", 0700);
	if (ret)
		return ret;
	d->regions_fd = openat(d->home_fd, "regions", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->regions_fd < 0)
		return -errno;
	ret = mkdir_mode(d->home_fd, "instance-store", 0700);
	if (!ret)
		ret = mkdir_mode(d->home_fd, "instances", 0755);
	if (ret)
		return ret;
	d->eph_fd = openat(d->home_fd, "instance-store", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	d->inst_fd = openat(d->home_fd, "instances", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->eph_fd < 0 || d->inst_fd < 0)
		return -errno;
	ret = load_master_key(d);
	if (ret) {
		log_err("cannot load %s/keys/master.key: %s", d->home, strerror(-ret));
		return ret;
	}
	snprintf(path, sizeof(path), "%s/catalog.db", d->home);
	ret = cat_open(path, &d->cat);
	if (ret) {
		log_err("refusing to start: the catalog %s is damaged or unreadable; nothing was "
			"changed (move it aside to start afresh, or restore it)",
			path);
		return ret;
	}
	ret = blk_engine_open(engine, 256, &d->eng);
	if (ret) {
		log_err("cannot start the %s I/O engine: %s", engine, strerror(-ret));
		return ret;
	}
	snprintf(path, sizeof(path), "%s/mnt", d->home);
	ret = volfs_mount(path, transport, &d->fs);
	if (ret) {
		log_err("cannot mount FUSE at %s: %s", path, strerror(-ret));
		return ret;
	}
	ret = snapshots_recover(d);
	if (ret)
		log_err("cannot recover snapshot states: %s", strerror(-ret));
	ret = volumes_recover(d);
	if (ret) {
		log_err("refusing to start: some volumes cannot be served (see above); nothing was "
			"deleted");
		return ret;
	}
	ret = instances_recover(d);
	if (ret)
		log_err("cannot recover instance states: %s", strerror(-ret));
	base_init(d); /* failures are logged: the daemon then offers no base images */
	ret = ctl_listen(d, lfd);
	if (ret) {
		log_err("cannot listen on %s/%s: %s", d->home, CTL_SOCK_NAME, strerror(-ret));
		return ret;
	}
	char pid[32];
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	ret = file_write_atomic(d->home_fd, "ebsimd.pid", pid, strlen(pid), 0644);
	if (ret)
		log_err("cannot write the pid file: %s", strerror(-ret));
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"home", required_argument, NULL, 'h'},
		{"io-engine", required_argument, NULL, 'e'},
		{"fuse-transport", required_argument, NULL, 'T'},
		{"foreground", no_argument, NULL, 'f'},
		{"stop", no_argument, NULL, 's'},
		{"log-level", required_argument, NULL, 'l'},
		{"instance-store-scale", required_argument, NULL, 'S'},
		{"no-base-images", no_argument, NULL, 'B'},
		{"cache-dir", required_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'H'},
		{"version", no_argument, NULL, 'V'},
		{0},
	};
	const char *home = getenv("EBSIM_HOME"), *engine = "io_uring";
	enum volfs_transport transport = VOLFS_DEV_FUSE;
	bool foreground = false, stop = false;
	struct daemon d = {.home_fd = -1, .vols_fd = -1, .regions_fd = -1, .eph_fd = -1,
			   .inst_fd = -1, .store_scale = 1.0, .lock = PTHREAD_MUTEX_INITIALIZER};
	int c, lockfd, lfd = -1, pipefd[2] = {-1, -1}, ret;
	sigset_t mask;

	if (!home || !*home)
		home = EBSIM_DEFAULT_HOME;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'h': home = optarg; break;
		case 'e': engine = optarg; break;
		case 'T':
			if (!strcmp(optarg, "dev")) {
				transport = VOLFS_DEV_FUSE;
			} else if (!strcmp(optarg, "io_uring")) {
				transport = VOLFS_IO_URING;
			} else {
				fprintf(stderr, "ebsimd: unknown FUSE transport '%s' (dev or io_uring)\n",
					optarg);
				return 1;
			}
			break;
		case 'f': foreground = true; break;
		case 's': stop = true; break;
		case 'l':
			if (!strcmp(optarg, "error")) log_set_level(LOG_ERR);
			else if (!strcmp(optarg, "warning")) log_set_level(LOG_WARN);
			else if (!strcmp(optarg, "info")) log_set_level(LOG_INFO);
			else if (!strcmp(optarg, "debug")) log_set_level(LOG_DEBUG);
			else {
				fprintf(stderr, "ebsimd: unknown log level '%s'\n", optarg);
				return 1;
			}
			break;
		case 'S': {
			char *end;
			d.store_scale = strtod(optarg, &end);
			if (*end || d.store_scale <= 0 || d.store_scale > 1) {
				fprintf(stderr, "ebsimd: --instance-store-scale takes a number in (0, 1]\n");
				return 1;
			}
			break;
		}
		case 'B': d.no_base_images = true; break;
		case 'C':
			if (!optarg[0] || strlen(optarg) >= sizeof(d.cache_dir) - 64) {
				fprintf(stderr, "ebsimd: --cache-dir takes a directory path\n");
				return 1;
			}
			snprintf(d.cache_dir, sizeof(d.cache_dir), "%s", optarg);
			break;
		case 'H': usage(stdout); return 0;
		case 'V': printf("ebsimd %s\n", VERSION); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ebsimd: unexpected argument '%s'\n", argv[optind]);
		return 1;
	}
	log_set_prefix("ebsimd");
	bool known = false;
	for (const char *const *n = blk_engine_names; *n; n++)
		known |= !strcmp(*n, engine);
	if (!known) {
		fprintf(stderr, "ebsimd: unknown I/O engine '%s' (io_uring, libaio or psync)\n",
			engine);
		return 1;
	}
	if (stop)
		return do_stop(home);
	if (!d.cache_dir[0])
		snprintf(d.cache_dir, sizeof(d.cache_dir), "%s", EBSIM_DEFAULT_CACHE);
	if (geteuid() != 0) {
		fprintf(stderr, "ebsimd: must run as root (it mounts FUSE and manages loop devices)\n");
		return 1;
	}
	if (mkdir(home, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "ebsimd: cannot create %s: %s\n", home, strerror(errno));
		return 1;
	}
	if (!realpath(home, d.home)) {
		fprintf(stderr, "ebsimd: %s: %s\n", home, strerror(errno));
		return 1;
	}
	d.home_fd = open(d.home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	lockfd = d.home_fd >= 0 ? openat(d.home_fd, "ebsimd.lock",
					 O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)
				: -1;
	if (lockfd < 0) {
		fprintf(stderr, "ebsimd: cannot open %s/ebsimd.lock: %s\n", d.home, strerror(errno));
		return 1;
	}
	if (flock(lockfd, LOCK_EX | LOCK_NB) < 0) {
		fprintf(stderr,
			"ebsimd: another ebsimd (pid %d) is already serving %s; stop it first with "
			"'ebsimd --home %s --stop'\n",
			read_pid(d.home_fd), d.home, d.home);
		return 1;
	}
	if (!foreground) {
		char logpath[4200];
		pid_t pid;

		if (pipe2(pipefd, O_CLOEXEC) < 0)
			return 1;
		pid = fork();
		if (pid < 0)
			return 1;
		if (pid > 0) {
			char buf[8] = {0};
			close(pipefd[1]);
			if (read(pipefd[0], buf, 1) == 1 && buf[0] == 'R')
				return 0;
			fprintf(stderr, "ebsimd: failed to start; see %s/ebsimd.log\n", d.home);
			return 1;
		}
		close(pipefd[0]);
		setsid();
		snprintf(logpath, sizeof(logpath), "%s/ebsimd.log", d.home);
		int nul = open("/dev/null", O_RDWR);
		int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			close(nul);
		}
		if (logfd >= 0) {
			/* failures before "ready" also reach the user's terminal through the
			 * parent, which points at the log */
			dup2(logfd, 2);
			close(logfd);
		}
	}
	/* Signals are handled through a signalfd in the main loop: block them in every
	 * thread before any thread starts. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	umask(077);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

	/* I/O buffers of up to 1 MiB come and go at a high rate: keep them in the heap
	 * instead of an mmap/munmap (and page faults) per request. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 512 << 20);
	log_info("starting on %s with the %s engine, FUSE transport %s", d.home, engine,
		 transport == VOLFS_IO_URING ? "io_uring" : "dev");
	ret = start(&d, engine, transport, &lfd);
	if (ret || sfd < 0) {
		shutdown_daemon(&d);
		return 1;
	}
	log_info("ready: pid %d, FUSE at %s/mnt, socket %s/%s", (int)getpid(), d.home, d.home,
		 CTL_SOCK_NAME);
	if (pipefd[1] >= 0) {
		(void)!write(pipefd[1], "R", 1);
		close(pipefd[1]);
	}
	for (;;) {
		struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGHUP)
				continue;
			log_info("signal %u: shutting down", si.ssi_signo);
			break;
		}
		if (p[0].revents)
			ctl_serve_one(&d, lfd);
	}
	close(lfd);
	char sock[4200];
	snprintf(sock, sizeof(sock), "%s/%s", d.home, CTL_SOCK_NAME);
	unlink(sock);
	shutdown_daemon(&d);
	unlinkat(d.home_fd, "ebsimd.pid", 0);
	log_info("stopped");
	return 0;
}

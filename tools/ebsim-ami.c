/* SPDX-License-Identifier: MIT */
/*
 * ebsim-ami - the local AMI tools (the counterpart of Amazon's ec2-ami-tools).
 *
 * Design notes
 * ------------
 * Verbs: bundle-image, bundle-vol, verify-bundle, unbundle, upload-bundle, build-base.
 * The bundle format lives in snapshot/bundle.h; this file parses options, finds files in the
 * ebsim home, talks to ebsimd when it must (bundle-vol asks DescribeVolumes /
 * DescribeInstances, build-base sends BuildBaseImages) and writes outputs atomically:
 *  - unbundle writes the image into an O_TMPFILE in DESTDIR and links it into place only
 *    after bundle_unbundle succeeded, so a failure leaves no file at all;
 *  - upload-bundle copies every object to H/regions/<region>/buckets/<bucket>/ as a temp
 *    file, fsync, rename; the manifest goes last, so a reader that sees the manifest sees
 *    every part. The account's signing certificate H/accounts/<id>/signing-cert.pem is
 *    registered on first upload (trust on first use: link(), EEXIST = someone else won,
 *    then we compare) and every later upload must verify against it.
 * Exit codes: 0 success, 1 failure (message on stderr), 252 usage error, 254 the daemon
 * answered with an error (printed EC2-style), 255 the daemon cannot be reached.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/common.h"
#include "common/ctl_proto.h"
#include "snapshot/bundle.h"

#define EXIT_FAIL 1

struct ami {
	const char *home, *region, *account;
	int home_fd;
	bool tty;
	int last_pct;
	const char *last_step;
};

static const char ami_help[] =
    "NAME\n"
    "       ebsim-ami - bundle, verify, unbundle and upload instance-store AMIs\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami [--home DIR] [--region R] [--account ID] COMMAND [OPTIONS]\n"
    "       ebsim-ami COMMAND --help\n"
    "\n"
    "DESCRIPTION\n"
    "       The local counterpart of Amazon's ec2-ami-tools. A bundle is PREFIX.manifest.xml\n"
    "       plus PREFIX.part.N files: the image tarred, gzipped, encrypted with AES-128-CBC\n"
    "       under a random key, cut into 10 MiB parts; the manifest (format 2007-10-10)\n"
    "       holds every part's SHA-1, the key wrapped for the user and for the region's EC2\n"
    "       key pair, and the user's RSA-SHA1 signature.\n"
    "\n"
    "COMMANDS\n"
    "       bundle-image   bundle an image file (ec2-bundle-image)\n"
    "       bundle-vol     bundle the bytes of an ebsim volume or instance root volume\n"
    "                      (ec2-bundle-vol)\n"
    "       verify-bundle  check a bundle's signature and every part's digest\n"
    "       unbundle       verify, then decrypt a bundle back into its image (ec2-unbundle)\n"
    "       upload-bundle  verify, then store a bundle in a bucket of the region\n"
    "                      (ec2-upload-bundle)\n"
    "       build-base     ask ebsimd to build the base AMIs (owned by 'amazon')\n"
    "\n"
    "GLOBAL OPTIONS\n"
    "       --home DIR     the ebsim home (daemon state, socket, region keys, buckets).\n"
    "                      Default: $EBSIM_HOME, else " EBSIM_DEFAULT_HOME ".\n"
    "       --region R     the region (its EC2 key pair, its buckets). Default:\n"
    "                      $EBSIM_REGION, else " EBSIM_DEFAULT_REGION ".\n"
    "       --account ID   the 12-digit account acting. Default: $EBSIM_ACCOUNT, else\n"
    "                      " EBSIM_DEFAULT_ACCOUNT ".\n"
    "       --help         this page, or the page of the command it follows.\n"
    "\n"
    "EXIT STATUS\n"
    "       0 success; 1 the command failed (the reason is on standard error: a bad\n"
    "       signature, a part that does not match, a missing file...); 252 usage error;\n"
    "       254 ebsimd answered with an error (printed as 'An error occurred (Code) when\n"
    "       calling the Action operation: ...'); 255 ebsimd cannot be reached.\n";

static const char help_bundle_image[] =
    "NAME\n"
    "       ebsim-ami bundle-image - bundle an image file into an instance-store AMI bundle\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami bundle-image -i IMAGE -k KEY.pem -c CERT.pem -u ACCOUNT\n"
    "                 -r i386|x86_64|arm64 [-p PREFIX] [-d DIR] [--ec2cert CERT.pem]\n"
    "                 [--block-device-mapping VIRTUAL=DEVICE,...] [--kernel aki-ID]\n"
    "                 [--ramdisk ari-ID]\n"
    "\n"
    "DESCRIPTION\n"
    "       Tars IMAGE (one member named PREFIX), gzips it, encrypts it with AES-128-CBC\n"
    "       under a random key and IV, and splits the result into 10 MiB parts\n"
    "       DIR/PREFIX.part.N (N zero-padded to the digits of the part count, as\n"
    "       ec2-bundle-image does). Writes DIR/PREFIX.manifest.xml, signed with KEY.pem.\n"
    "       Nothing is left behind on failure; an existing manifest is never overwritten.\n"
    "\n"
    "OPTIONS\n"
    "       -i, --image IMAGE        the image file to bundle (required).\n"
    "       -k, --privatekey KEY     the user's RSA private key, PEM; signs. Default\n"
    "                                $EC2_PRIVATE_KEY.\n"
    "       -c, --cert CERT          the user's X.509 certificate, PEM; the key is\n"
    "                                wrapped for it so the user can unbundle. Default\n"
    "                                $EC2_CERT.\n"
    "       -u, --user ACCOUNT       the 12-digit account that owns the bundle\n"
    "                                (required).\n"
    "       -r, --arch ARCH          i386, x86_64 or arm64 (required).\n"
    "       -p, --prefix PREFIX      bundle name; default the image's file name.\n"
    "                                [A-Za-z0-9._-], not starting with '.'.\n"
    "       -d, --destination DIR    where the bundle goes; default /tmp.\n"
    "       --ec2cert CERT           the EC2 certificate the key is also wrapped for;\n"
    "                                default HOME/regions/REGION/ec2-cert.pem (created\n"
    "                                with the region's key pair if missing).\n"
    "       -B, --block-device-mapping MAP\n"
    "                                VIRTUAL=DEVICE pairs separated by commas; VIRTUAL\n"
    "                                is ami, root, swap or ephemeralN. Default\n"
    "                                ami=sda1,root=/dev/sda1.\n"
    "       --kernel aki-ID          default kernel recorded in the manifest.\n"
    "       --ramdisk ari-ID         default ramdisk recorded in the manifest.\n"
    "\n"
    "EXAMPLE\n"
    "       ebsim-ami bundle-image -i disk.img -k pk.pem -c cert.pem -u 123456789012 \\\n"
    "                 -r x86_64 -p myami -d /tmp/bundle\n";

static const char help_bundle_vol[] =
    "NAME\n"
    "       ebsim-ami bundle-vol - bundle the bytes of an ebsim volume\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami bundle-vol (--volume-id vol-ID | --instance-id i-ID) -k KEY.pem\n"
    "                 -c CERT.pem [-u ACCOUNT] [-r ARCH] [-p PREFIX] [-d DIR] [--ec2cert CERT]\n"
    "                 [--block-device-mapping MAP] [--kernel aki-ID] [--ramdisk ari-ID]\n"
    "\n"
    "DESCRIPTION\n"
    "       The local form of ec2-bundle-vol: instead of copying a running system it\n"
    "       bundles a whole ebsim volume, read through the daemon's FUSE file\n"
    "       HOME/mnt/vol-ID. ebsimd is asked first (DescribeVolumes, or DescribeInstances\n"
    "       for the instance's root volume) so that the volume must exist and belong to\n"
    "       --account. -u must name the same account. Then works as bundle-image; the\n"
    "       default prefix is 'image', as ec2-bundle-vol's.\n"
    "\n"
    "OPTIONS\n"
    "       --volume-id vol-ID       the volume to bundle; --volume also takes its FUSE\n"
    "                                file HOME/mnt/vol-ID.\n"
    "       --instance-id i-ID       bundle this instance's root volume.\n"
    "       -u, --user ACCOUNT       default: --account.\n"
    "       -r, --arch ARCH          default: the host's architecture.\n"
    "       Other options are those of bundle-image (without -i); -k and -c default\n"
    "       to $EC2_PRIVATE_KEY and $EC2_CERT.\n";

static const char help_verify[] =
    "NAME\n"
    "       ebsim-ami verify-bundle - check a bundle's signature and every part\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami verify-bundle -m MANIFEST [-c CERT.pem] [-s SRCDIR]\n"
    "\n"
    "DESCRIPTION\n"
    "       Parses MANIFEST (strictly: no DTD, entities or unknown elements), checks its\n"
    "       RSA-SHA1 signature against CERT.pem, then every part in SRCDIR: present,\n"
    "       a regular file, right size, SHA-1 as listed, none missing or extra. Prints\n"
    "       'Bundle verified: N parts' and exits 0, else names the first problem and\n"
    "       exits 1. Reads only.\n"
    "\n"
    "OPTIONS\n"
    "       -m, --manifest MANIFEST  the bundle's manifest file (required).\n"
    "       -c, --cert CERT          the signer's certificate; default the certificate\n"
    "                                registered for the manifest's account\n"
    "                                (HOME/accounts/ID/signing-cert.pem).\n"
    "       -s, --source DIR         where the parts are; default the manifest's dir.\n";

static const char help_unbundle[] =
    "NAME\n"
    "       ebsim-ami unbundle - recreate an image from its bundle\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami unbundle -m MANIFEST -k KEY.pem [-c CERT.pem] [-s SRCDIR]\n"
    "                 [-d DESTDIR]\n"
    "\n"
    "DESCRIPTION\n"
    "       Verifies everything verify-bundle does, and only then decrypts with KEY.pem\n"
    "       (the user's private key, or the region's EC2 private key), gunzips and untars\n"
    "       into DESTDIR/NAME (NAME = the manifest's image name), checking the SHA-1 of\n"
    "       the tar stream and the image size. The image is written to an anonymous file\n"
    "       that is linked into place only when every check passed: on failure nothing\n"
    "       appears in DESTDIR. An existing DESTDIR/NAME is not overwritten.\n"
    "\n"
    "OPTIONS\n"
    "       -m, --manifest MANIFEST  the bundle's manifest file (required).\n"
    "       -k, --privatekey KEY     the user's or the EC2 private key, PEM (required).\n"
    "       -c, --cert CERT          the signer's certificate; default the certificate\n"
    "                                registered for the manifest's account.\n"
    "       -s, --source DIR         where the parts are; default the manifest's dir.\n"
    "       -d, --destination DIR    where the image goes; default '.'.\n";

static const char help_upload[] =
    "NAME\n"
    "       ebsim-ami upload-bundle - store a bundle in a bucket of the region\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami upload-bundle -b BUCKET -m MANIFEST [-c CERT.pem]\n"
    "\n"
    "DESCRIPTION\n"
    "       The region's object store is HOME/regions/REGION/buckets/BUCKET/ (the S3\n"
    "       stand-in that register-image reads). The manifest's <user> must be --account.\n"
    "       The first upload of an account registers CERT.pem as its signing certificate\n"
    "       (HOME/accounts/ID/signing-cert.pem, like uploading it to IAM); later uploads\n"
    "       must verify against that certificate, and a different -c is refused. The\n"
    "       bundle is verified completely (verify-bundle) before anything is copied; the\n"
    "       parts are stored first and the manifest last, each atomically. Bucket names\n"
    "       follow S3's rules (3-63 characters of a-z 0-9 . -, starting and ending with a\n"
    "       letter or digit, no '..', not an IP address).\n"
    "\n"
    "OPTIONS\n"
    "       -b, --bucket BUCKET      the bucket (created if missing) (required).\n"
    "       -m, --manifest MANIFEST  the bundle's manifest file (required).\n"
    "       -c, --cert CERT          the account's signing certificate; required on the\n"
    "                                first upload of the account.\n";

static const char help_build_base[] =
    "NAME\n"
    "       ebsim-ami build-base - build the base AMIs\n"
    "\n"
    "SYNOPSIS\n"
    "       ebsim-ami build-base\n"
    "\n"
    "DESCRIPTION\n"
    "       Sends the BuildBaseImages action to ebsimd, which builds the base images\n"
    "       owned by the 'amazon' account (" EBSIM_AMAZON_ACCOUNT "), and prints its JSON\n"
    "       reply. A service error is printed EC2-style and exits 254; an unreachable\n"
    "       daemon exits 255.\n";

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...)
{
	va_list ap;

	fputs("ebsim-ami: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_FAIL;
}

static int usage(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage(const char *verb, const char *fmt, ...)
{
	va_list ap;

	fputs("ebsim-ami: usage error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nSee: ebsim-ami %s%s--help\n", verb ? verb : "", verb ? " " : "");
	return EXIT_USAGE;
}

static int progress(void *arg, const char *step, uint64_t done, uint64_t total)
{
	struct ami *a = arg;
	int pct = total ? (int)(done * 100 / total) : 100;

	if (!a->tty)
		return 0;
	if (pct == a->last_pct && a->last_step == step)
		return 0;
	a->last_pct = pct;
	a->last_step = step;
	fprintf(stderr, "\r%-10s %3d%% (%llu of %llu MiB)", step, pct,
		(unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
	if (done >= total)
		fputc('\n', stderr);
	return 0;
}

static void progress_end(struct ami *a)
{
	if (a->tty && a->last_pct >= 0 && a->last_pct < 100)
		fputc('\n', stderr);
	a->last_pct = -1;
}

/* ---- daemon client -------------------------------------------------------------------- */

/* Send {Action, Account, Region, Params} and read one reply line. Returns 0 with *result,
 * or an exit code having printed the reason. */
static int ctl_call(struct ami *a, const char *action, struct json_object *params,
		    struct json_object **result)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct json_object *req = json_object_new_object(), *reply, *err, *res;
	const char *line;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd, rc = EXIT_NODAEMON;

	*result = NULL;
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", a->home, CTL_SOCK_NAME) >=
	    sizeof(sa.sun_path)) {
		json_object_put(params);
		json_object_put(req);
		return die("the home path %s is too long for a socket", a->home);
	}
	json_object_object_add(req, "Action", json_object_new_string(action));
	json_object_object_add(req, "Account", json_object_new_string(a->account));
	json_object_object_add(req, "Region", json_object_new_string(a->region));
	json_object_object_add(req, "Params", params);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "ebsim-ami: cannot reach ebsimd at %s (%s).\n", sa.sun_path,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		json_object_put(req);
		return EXIT_NODAEMON;
	}
	line = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	if (file_write_full(fd, line, strlen(line)) || file_write_full(fd, "\n", 1)) {
		fprintf(stderr, "ebsim-ami: cannot send to ebsimd: %s\n", strerror(errno));
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (cap - len < 4096) {
			char *nb;

			if (cap >= CTL_MAX_MSG * 4)
				break;
			cap = cap ? cap * 2 : 65536;
			nb = realloc(buf, cap);
			if (!nb)
				break;
			buf = nb;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (memchr(buf + len - n, '\n', (size_t)n))
			break;
	}
	reply = buf ? json_tokener_parse((buf[len] = '\0', buf)) : NULL;
	if (!reply) {
		fprintf(stderr, "ebsim-ami: malformed reply from ebsimd at %s.\n", sa.sun_path);
		goto out;
	}
	if (json_object_object_get_ex(reply, "Error", &err)) {
		struct json_object *code = NULL, *msg = NULL;

		json_object_object_get_ex(err, "Code", &code);
		json_object_object_get_ex(err, "Message", &msg);
		fprintf(stderr, "\nAn error occurred (%s) when calling the %s operation: %s\n",
			code ? json_object_get_string(code) : "InternalError", action,
			msg ? json_object_get_string(msg) : "");
		rc = EXIT_SERVICE;
	} else if (json_object_object_get_ex(reply, "Result", &res)) {
		*result = json_object_get(res);
		rc = 0;
	} else {
		fprintf(stderr, "ebsim-ami: malformed reply from ebsimd (no Result).\n");
	}
	json_object_put(reply);
out:
	free(buf);
	close(fd);
	json_object_put(req);
	return rc;
}

/* ---- shared option handling ----------------------------------------------------------- */

enum {
	OPT_EC2CERT = 1000,
	OPT_KERNEL,
	OPT_RAMDISK,
	OPT_VOLUME,
	OPT_INSTANCE,
	OPT_HOME,
	OPT_REGION,
	OPT_ACCOUNT,
	OPT_HELP,
};

#define GLOBAL_OPTS                                                                         \
	{"home", required_argument, NULL, OPT_HOME},                                        \
	    {"region", required_argument, NULL, OPT_REGION},                                \
	    {"account", required_argument, NULL, OPT_ACCOUNT},                              \
	    {"help", no_argument, NULL, OPT_HELP}

/* Global options accepted after the verb too; 1 = handled, 2 = help, 0 = not global. */
static int global_opt(struct ami *a, int c)
{
	switch (c) {
	case OPT_HOME:
		a->home = optarg;
		return 1;
	case OPT_REGION:
		a->region = optarg;
		return 1;
	case OPT_ACCOUNT:
		a->account = optarg;
		return 1;
	case OPT_HELP:
		return 2;
	}
	return 0;
}

static bool valid_account(const char *s)
{
	return strlen(s) == 12 && strspn(s, "0123456789") == 12;
}

static int open_home(struct ami *a)
{
	if (!valid_account(a->account))
		return usage(NULL, "--account '%s' is not a 12-digit account id", a->account);
	a->home_fd = open(a->home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->home_fd < 0)
		return die("cannot open the ebsim home %s: %s", a->home, strerror(errno));
	return 0;
}

static int read_pem(const char *path, char **buf, size_t *len)
{
	void *b;
	int ret = file_read_all(AT_FDCWD, path, &b, len);

	if (ret)
		return die("cannot read %s: %s", path, strerror(-ret));
	*buf = b;
	return 0;
}

static const char *env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

static const char *host_arch(void)
{
#if defined(__x86_64__)
	return "x86_64";
#elif defined(__aarch64__)
	return "arm64";
#elif defined(__i386__)
	return "i386";
#else
	return NULL;
#endif
}

/* ---- bundle-image / bundle-vol -------------------------------------------------------- */

static int bundle_common(struct ami *a, const char *verb, int argc, char **argv, bool vol)
{
	static const struct option opts[] = {
	    {"image", required_argument, NULL, 'i'},
	    {"privatekey", required_argument, NULL, 'k'},
	    {"cert", required_argument, NULL, 'c'},
	    {"user", required_argument, NULL, 'u'},
	    {"arch", required_argument, NULL, 'r'},
	    {"prefix", required_argument, NULL, 'p'},
	    {"destination", required_argument, NULL, 'd'},
	    {"block-device-mapping", required_argument, NULL, 'B'},
	    {"ec2cert", required_argument, NULL, OPT_EC2CERT},
	    {"kernel", required_argument, NULL, OPT_KERNEL},
	    {"ramdisk", required_argument, NULL, OPT_RAMDISK},
	    {"volume-id", required_argument, NULL, OPT_VOLUME},
	    {"volume", required_argument, NULL, OPT_VOLUME},
	    {"instance-id", required_argument, NULL, OPT_INSTANCE},
	    GLOBAL_OPTS,
	    {NULL, 0, NULL, 0}};
	struct bundle_params p = {.dest_dir = "/tmp", .progress = progress, .progress_arg = a};
	struct bundle_bdm bdm[BUNDLE_MAX_BDM];
	const char *volume = NULL, *instance = NULL;
	char err[BUNDLE_ERR_MAX] = "", ec2cert[300], image[4400], mname[BUNDLE_NAME_MAX + 1];
	const char *help = vol ? help_bundle_vol : help_bundle_image;
	int c, rc;

	while ((c = getopt_long(argc, argv, "+i:k:c:u:r:p:d:B:", opts, NULL)) != -1) {
		switch (global_opt(a, c)) {
		case 1:
			continue;
		case 2:
			fputs(help, stdout);
			return 0;
		}
		switch (c) {
		case 'i':
			if (vol)
				return usage(verb, "bundle-vol takes --volume-id or --instance-id, "
					     "not -i");
			p.image_path = optarg;
			break;
		case 'k':
			p.user_key = optarg;
			break;
		case 'c':
			p.user_cert = optarg;
			break;
		case 'u':
			p.account = optarg;
			break;
		case 'r':
			p.arch = optarg;
			break;
		case 'p':
			p.prefix = optarg;
			break;
		case 'd':
			p.dest_dir = optarg;
			break;
		case 'B':
			rc = bundle_bdm_parse(optarg, bdm, ARRAY_SIZE(bdm), err);
			if (rc < 0)
				return usage(verb, "--block-device-mapping: %s", err);
			p.bdm = bdm;
			p.n_bdm = (size_t)rc;
			break;
		case OPT_EC2CERT:
			p.ec2_cert = optarg;
			break;
		case OPT_KERNEL:
			p.kernel_id = optarg;
			break;
		case OPT_RAMDISK:
			p.ramdisk_id = optarg;
			break;
		case OPT_VOLUME:
		case OPT_INSTANCE:
			if (!vol)
				return usage(verb, "bundle-image takes -i IMAGE");
			*(c == OPT_VOLUME ? &volume : &instance) = optarg;
			break;
		default:
			return usage(verb, "unknown option or missing value");
		}
	}
	if (optind < argc)
		return usage(verb, "unexpected argument '%s'", argv[optind]);
	/* the EC2 tools' environment defaults; bundle-vol also defaults -u and -r to the
	 * acting account and the host's architecture, as ec2-bundle-vol does for -r */
	if (!p.user_key)
		p.user_key = env_or("EC2_PRIVATE_KEY", NULL);
	if (!p.user_cert)
		p.user_cert = env_or("EC2_CERT", NULL);
	if (vol && !p.account)
		p.account = a->account;
	if (vol && !p.arch)
		p.arch = host_arch();
	if (volume && strchr(volume, '/')) {
		/* a volume's FUSE file HOME/mnt/vol-...: its id is its name */
		const char *b = strrchr(volume, '/') + 1;

		if (!id_valid("vol", b))
			return usage(verb, "--volume %s is not a volume id or HOME/mnt/vol-ID", volume);
		volume = b;
	}
	if (vol && !!volume == !!instance)
		return usage(verb, "give exactly one of --volume-id and --instance-id");
	if (!vol && !p.image_path)
		return usage(verb, "-i IMAGE is required");
	if (!p.user_key || !p.user_cert || !p.account || !p.arch)
		return usage(verb, "-k, -c, -u and -r are required (-k and -c default to "
			     "$EC2_PRIVATE_KEY and $EC2_CERT)");
	if (!valid_account(p.account))
		return usage(verb, "-u '%s' is not a 12-digit account id", p.account);
	if (!bundle_valid_arch(p.arch))
		return usage(verb, "-r '%s' is not i386, x86_64 or arm64", p.arch);
	if ((rc = open_home(a)))
		return rc;
	if (!p.ec2_cert) {
		char rel[256];

		if (bundle_region_keys(a->home_fd, a->region, NULL, rel, err))
			return die("the region's EC2 certificate: %s", err);
		snprintf(ec2cert, sizeof(ec2cert), "%s/%.256s", a->home, rel);
		p.ec2_cert = ec2cert;
	}
	if (vol) {
		struct json_object *params = json_object_new_object(), *res, *arr, *x;
		const char *vid = NULL;

		if (strcmp(p.account, a->account))
			return die("-u %s is not the acting account %s: a volume can be bundled "
				   "only by its owner", p.account, a->account);
		if (volume) {
			arr = json_object_new_array();
			json_object_array_add(arr, json_object_new_string(volume));
			json_object_object_add(params, "VolumeIds", arr);
			rc = ctl_call(a, "DescribeVolumes", params, &res);
			if (rc)
				return rc;
			if (json_object_object_get_ex(res, "Volumes", &arr) &&
			    json_object_array_length(arr) == 1 &&
			    json_object_object_get_ex(json_object_array_get_idx(arr, 0), "VolumeId",
						      &x) &&
			    !strcmp(json_object_get_string(x), volume))
				vid = volume;
		} else {
			struct json_object *inst = NULL, *root = NULL, *bdms = NULL;

			arr = json_object_new_array();
			json_object_array_add(arr, json_object_new_string(instance));
			json_object_object_add(params, "InstanceIds", arr);
			rc = ctl_call(a, "DescribeInstances", params, &res);
			if (rc)
				return rc;
			if (json_object_object_get_ex(res, "Reservations", &arr) &&
			    json_object_array_length(arr) == 1 &&
			    json_object_object_get_ex(json_object_array_get_idx(arr, 0), "Instances",
						      &x) &&
			    json_object_array_length(x) == 1)
				inst = json_object_array_get_idx(x, 0);
			if (inst && json_object_object_get_ex(inst, "RootDeviceName", &root) &&
			    json_object_object_get_ex(inst, "BlockDeviceMappings", &bdms)) {
				for (size_t i = 0; i < json_object_array_length(bdms); i++) {
					struct json_object *m = json_object_array_get_idx(bdms, i), *d,
							   *e, *v;

					if (json_object_object_get_ex(m, "DeviceName", &d) &&
					    !strcmp(json_object_get_string(d),
						    json_object_get_string(root)) &&
					    json_object_object_get_ex(m, "Ebs", &e) &&
					    json_object_object_get_ex(e, "VolumeId", &v))
						vid = json_object_get_string(v);
				}
			}
			if (!vid) {
				json_object_put(res);
				return die("instance %s has no EBS root volume to bundle", instance);
			}
		}
		if (!vid || !id_valid("vol", vid)) {
			json_object_put(res);
			return die("volume %s was not found for account %s", volume, a->account);
		}
		snprintf(image, sizeof(image), "%s/mnt/%s", a->home, vid);
		json_object_put(res);
		p.image_path = image;
		if (!p.prefix)
			p.prefix = "image";
	}
	if (bundle_create(&p, mname, err)) {
		progress_end(a);
		return die("%s", err);
	}
	progress_end(a);
	printf("Bundle manifest is %s/%s\n", p.dest_dir, mname);
	return 0;
}

/* ---- verify / unbundle ---------------------------------------------------------------- */

struct loaded {
	struct bundle_manifest *m;
	int srcfd;
	char *cert;
	size_t cert_len;
};

static void loaded_free(struct loaded *l)
{
	bundle_manifest_free(l->m);
	if (l->srcfd >= 0)
		close(l->srcfd);
	free(l->cert);
}

/* Load the manifest, the source dir and the certificate (given, or the account's). */
static int load_bundle(struct ami *a, const char *manifest, const char *src, const char *cert,
		       struct loaded *l)
{
	char err[BUNDLE_ERR_MAX], dir[4096], path[300];
	const char *slash = strrchr(manifest, '/');
	int ret;

	l->srcfd = -1;
	if (slash)
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - manifest + 1), manifest);
	else
		snprintf(dir, sizeof(dir), ".");
	ret = bundle_manifest_load(AT_FDCWD, manifest, &l->m, err);
	if (ret)
		return die("%s", err);
	l->srcfd = open(src ? src : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->srcfd < 0)
		return die("cannot open the parts directory %s: %s", src ? src : dir,
			   strerror(errno));
	if (!cert) {
		void *b;

		if (a->home_fd < 0 && (ret = open_home(a)))
			return ret;
		snprintf(path, sizeof(path), "accounts/%s/signing-cert.pem", l->m->user);
		ret = file_read_all(a->home_fd, path, &b, &l->cert_len);
		if (ret)
			return die("no -c given and account %s has no registered signing "
				   "certificate (%s/%s: %s)", l->m->user, a->home, path,
				   strerror(-ret));
		l->cert = b;
		return 0;
	}
	return read_pem(cert, &l->cert, &l->cert_len);
}

static int cmd_verify(struct ami *a, const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {{"manifest", required_argument, NULL, 'm'},
					     {"cert", required_argument, NULL, 'c'},
					     {"source", required_argument, NULL, 's'},
					     GLOBAL_OPTS,
					     {NULL, 0, NULL, 0}};
	const char *manifest = NULL, *cert = NULL, *src = NULL;
	struct loaded l = {0};
	char err[BUNDLE_ERR_MAX];
	int c, rc;

	while ((c = getopt_long(argc, argv, "+m:c:s:", opts, NULL)) != -1) {
		switch (global_opt(a, c)) {
		case 1:
			continue;
		case 2:
			fputs(help_verify, stdout);
			return 0;
		}
		switch (c) {
		case 'm':
			manifest = optarg;
			break;
		case 'c':
			cert = optarg;
			break;
		case 's':
			src = optarg;
			break;
		default:
			return usage(verb, "unknown option or missing value");
		}
	}
	if (!manifest || optind < argc)
		return usage(verb, "-m MANIFEST is required");
	rc = load_bundle(a, manifest, src, cert, &l);
	if (!rc) {
		if (bundle_verify_signature(l.m, l.cert, l.cert_len, err) ||
		    bundle_verify_parts(l.m, l.srcfd, progress, a, err)) {
			progress_end(a);
			rc = die("%s", err);
		} else {
			progress_end(a);
			printf("Bundle verified: %s, %zu parts, %llu bytes, signed by account %s\n",
			       l.m->name, l.m->n_parts, (unsigned long long)l.m->size, l.m->user);
		}
	}
	loaded_free(&l);
	return rc;
}

static int cmd_unbundle(struct ami *a, const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {{"manifest", required_argument, NULL, 'm'},
					     {"privatekey", required_argument, NULL, 'k'},
					     {"cert", required_argument, NULL, 'c'},
					     {"source", required_argument, NULL, 's'},
					     {"destination", required_argument, NULL, 'd'},
					     GLOBAL_OPTS,
					     {NULL, 0, NULL, 0}};
	const char *manifest = NULL, *cert = NULL, *src = NULL, *dest = ".", *keyf = NULL;
	struct loaded l = {0};
	char err[BUNDLE_ERR_MAX], *key = NULL, proc[64];
	size_t key_len = 0;
	int c, rc, dfd = -1, ofd = -1;

	while ((c = getopt_long(argc, argv, "+m:k:c:s:d:", opts, NULL)) != -1) {
		switch (global_opt(a, c)) {
		case 1:
			continue;
		case 2:
			fputs(help_unbundle, stdout);
			return 0;
		}
		switch (c) {
		case 'm':
			manifest = optarg;
			break;
		case 'k':
			keyf = optarg;
			break;
		case 'c':
			cert = optarg;
			break;
		case 's':
			src = optarg;
			break;
		case 'd':
			dest = optarg;
			break;
		default:
			return usage(verb, "unknown option or missing value");
		}
	}
	if (!manifest || !keyf || optind < argc)
		return usage(verb, "-m MANIFEST and -k KEY are required");
	rc = load_bundle(a, manifest, src, cert, &l);
	if (rc)
		goto out;
	if ((rc = read_pem(keyf, &key, &key_len)))
		goto out;
	dfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		rc = die("cannot open destination %s: %s", dest, strerror(errno));
		goto out;
	}
	if (faccessat(dfd, l.m->name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		rc = die("%s/%s already exists", dest, l.m->name);
		goto out;
	}
	ofd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
	if (ofd < 0) {
		rc = die("cannot create a file in %s: %s", dest, strerror(errno));
		goto out;
	}
	if (bundle_unbundle(l.m, l.cert, l.cert_len, l.srcfd, key, key_len, ofd, progress, a,
			    err)) {
		progress_end(a);
		rc = die("%s", err);
		goto out;
	}
	progress_end(a);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", ofd);
	if (fsync(ofd) < 0 || linkat(AT_FDCWD, proc, dfd, l.m->name, AT_SYMLINK_FOLLOW) < 0) {
		rc = die("cannot create %s/%s: %s", dest, l.m->name, strerror(errno));
		goto out;
	}
	fsync(dfd);
	printf("Unbundled %s to %s/%s\n", manifest, dest, l.m->name);
out:
	if (ofd >= 0)
		close(ofd);
	if (dfd >= 0)
		close(dfd);
	if (key) {
		secure_zero(key, key_len);
		free(key);
	}
	loaded_free(&l);
	return rc;
}

/* ---- upload-bundle -------------------------------------------------------------------- */

static int mkdir_p_at(int dirfd, const char *path, mode_t mode)
{
	char buf[512];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || !*p) {
			char saved = *p;

			*p = '\0';
			if (mkdirat(dirfd, buf, mode) < 0 && errno != EEXIST)
				return -errno;
			*p = saved;
			if (!saved)
				return 0;
		}
	}
}

/* Copy srcdir/name to dstdir/name: temp file, fsync, rename. */
static int copy_object(int srcfd, int dstfd, const char *name)
{
	char tmp[300], buf[1 << 16];
	int in = openat(srcfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), out, ret = 0;

	if (in < 0)
		return -errno;
	snprintf(tmp, sizeof(tmp), ".%.255s.tmp", name);
	out = openat(dstfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		ret = -errno;
		close(in);
		return ret;
	}
	for (;;) {
		ssize_t n = read(in, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			break;
		}
		if (n == 0)
			break;
		if (file_write_full(out, buf, (size_t)n)) {
			ret = -errno ? -errno : -EIO;
			break;
		}
	}
	if (!ret && fsync(out) < 0)
		ret = -errno;
	close(out);
	close(in);
	if (!ret && renameat(dstfd, tmp, dstfd, name) < 0)
		ret = -errno;
	if (ret)
		unlinkat(dstfd, tmp, 0);
	return ret;
}

/* A re-upload replaces a bundle of the same prefix: parts PREFIX.part.N that the new
 * manifest does not list would be "extra parts" to every verifier, so they go first. */
static int remove_stale_parts(const struct bundle_manifest *m, int bfd)
{
	const char *p0 = m->parts[0].filename, *dot = strrchr(p0, '.') - 5;
	size_t plen = (size_t)(dot - p0) + 6; /* "PREFIX.part." */
	int dfd = openat(bfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;
	int ret = 0;

	if (!d) {
		ret = -errno;
		if (dfd >= 0)
			close(dfd);
		return ret;
	}
	while ((de = readdir(d))) {
		bool listed = false;

		if (strncmp(de->d_name, p0, plen) || !de->d_name[plen] ||
		    strspn(de->d_name + plen, "0123456789") != strlen(de->d_name + plen))
			continue;
		for (size_t i = 0; i < m->n_parts && !listed; i++)
			listed = !strcmp(m->parts[i].filename, de->d_name);
		if (!listed && unlinkat(bfd, de->d_name, 0) < 0 && errno != ENOENT)
			ret = -errno;
	}
	closedir(d);
	return ret;
}

static int cmd_upload(struct ami *a, const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {{"bucket", required_argument, NULL, 'b'},
					     {"manifest", required_argument, NULL, 'm'},
					     {"cert", required_argument, NULL, 'c'},
					     GLOBAL_OPTS,
					     {NULL, 0, NULL, 0}};
	const char *bucket = NULL, *manifest = NULL, *cert = NULL, *mbase;
	struct loaded l = {0};
	char err[BUNDLE_ERR_MAX], acct_dir[64], acct_cert[128], bdir[256];
	void *reg = NULL;
	size_t reg_len = 0;
	int c, rc, bfd = -1, mdirfd = -1;

	while ((c = getopt_long(argc, argv, "+b:m:c:", opts, NULL)) != -1) {
		switch (global_opt(a, c)) {
		case 1:
			continue;
		case 2:
			fputs(help_upload, stdout);
			return 0;
		}
		switch (c) {
		case 'b':
			bucket = optarg;
			break;
		case 'm':
			manifest = optarg;
			break;
		case 'c':
			cert = optarg;
			break;
		default:
			return usage(verb, "unknown option or missing value");
		}
	}
	if (!bucket || !manifest || optind < argc)
		return usage(verb, "-b BUCKET and -m MANIFEST are required");
	if (!bundle_valid_bucket(bucket))
		return die("InvalidBucketName: '%s' is not a valid bucket name (3-63 characters "
			   "of a-z 0-9 . -, starting and ending with a letter or digit)", bucket);
	mbase = strrchr(manifest, '/');
	mbase = mbase ? mbase + 1 : manifest;
	if (!bundle_valid_object(mbase))
		return die("InvalidObjectName: '%s' is not a valid object name", mbase);
	if ((rc = open_home(a)))
		return rc;
	snprintf(acct_dir, sizeof(acct_dir), "accounts/%s", a->account);
	snprintf(acct_cert, sizeof(acct_cert), "%s/signing-cert.pem", acct_dir);
	rc = file_read_all(a->home_fd, acct_cert, &reg, &reg_len);
	if (rc && rc != -ENOENT)
		return die("cannot read %s/%s: %s", a->home, acct_cert, strerror(-rc));
	if (rc == -ENOENT && !cert)
		return die("account %s has no signing certificate yet: give -c CERT.pem on its "
			   "first upload", a->account);
	/* without -c, load_bundle reads the registered certificate of the manifest's user */
	rc = load_bundle(a, manifest, NULL, cert, &l);
	if (rc)
		goto out;
	if (strcmp(l.m->user, a->account)) {
		rc = die("the bundle belongs to account %s, not to %s", l.m->user, a->account);
		goto out;
	}
	if (reg && (reg_len != l.cert_len || memcmp(reg, l.cert, reg_len))) {
		rc = die("a different signing certificate is already registered for account %s "
			 "(%s/%s); the bundle must be signed with it", a->account, a->home,
			 acct_cert);
		goto out;
	}
	if (bundle_verify_signature(l.m, l.cert, l.cert_len, err) ||
	    bundle_verify_parts(l.m, l.srcfd, progress, a, err)) {
		progress_end(a);
		rc = die("%s", err);
		goto out;
	}
	progress_end(a);
	for (size_t i = 0; i < l.m->n_parts; i++)
		if (!bundle_valid_object(l.m->parts[i].filename)) {
			rc = die("InvalidObjectName: part '%s'", l.m->parts[i].filename);
			goto out;
		}
	if (!reg) {
		/* first use: register the certificate (link: a racing upload may win) */
		if ((rc = mkdir_p_at(a->home_fd, acct_dir, 0700))) {
			rc = die("cannot create %s/%s: %s", a->home, acct_dir, strerror(-rc));
			goto out;
		}
		{
			int adfd = openat(a->home_fd, acct_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			char tname[64];
			int tfd;

			snprintf(tname, sizeof(tname), ".signing-cert.%d.tmp", (int)getpid());
			tfd = adfd < 0 ? -1
				       : openat(adfd, tname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
						0644);
			if (tfd < 0 || file_write_full(tfd, l.cert, l.cert_len) || fsync(tfd) < 0 ||
			    (linkat(adfd, tname, adfd, "signing-cert.pem", 0) < 0 &&
			     errno != EEXIST)) {
				rc = die("cannot register the signing certificate: %s",
					 strerror(errno));
				if (tfd >= 0)
					close(tfd);
				if (adfd >= 0) {
					unlinkat(adfd, tname, 0);
					close(adfd);
				}
				goto out;
			}
			close(tfd);
			unlinkat(adfd, tname, 0);
			fsync(adfd);
			close(adfd);
		}
		rc = file_read_all(a->home_fd, acct_cert, &reg, &reg_len);
		if (rc || reg_len != l.cert_len || memcmp(reg, l.cert, reg_len)) {
			rc = die("a different signing certificate was registered for account %s "
				 "meanwhile", a->account);
			goto out;
		}
		printf("Registered %s as the signing certificate of account %s\n", cert,
		       a->account);
	}
	snprintf(bdir, sizeof(bdir), "regions/%s/buckets/%s", a->region, bucket);
	if (strspn(a->region, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(a->region) ||
	    !*a->region) {
		rc = die("region '%s' is not valid", a->region);
		goto out;
	}
	if ((rc = mkdir_p_at(a->home_fd, bdir, 0700))) {
		rc = die("cannot create bucket %s: %s", bucket, strerror(-rc));
		goto out;
	}
	bfd = openat(a->home_fd, bdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	mdirfd = l.srcfd;
	if (bfd < 0) {
		rc = die("cannot open bucket %s: %s", bucket, strerror(errno));
		goto out;
	}
	if ((rc = remove_stale_parts(l.m, bfd))) {
		rc = die("cannot clean bucket %s: %s", bucket, strerror(-rc));
		goto out;
	}
	for (size_t i = 0; i < l.m->n_parts; i++) {
		rc = copy_object(mdirfd, bfd, l.m->parts[i].filename);
		if (rc) {
			rc = die("cannot store %s: %s", l.m->parts[i].filename, strerror(-rc));
			goto out;
		}
	}
	/* what landed in the bucket is what was verified (a part may change meanwhile) */
	if (bundle_verify_parts(l.m, bfd, NULL, NULL, err)) {
		rc = die("after copying into bucket %s: %s", bucket, err);
		goto out;
	}
	rc = copy_object(mdirfd, bfd, mbase);
	if (rc) {
		rc = die("cannot store %s: %s", mbase, strerror(-rc));
		goto out;
	}
	fsync(bfd);
	printf("Uploaded %s and %zu parts to bucket %s (region %s)\n", mbase, l.m->n_parts, bucket,
	       a->region);
	rc = 0;
out:
	if (bfd >= 0)
		close(bfd);
	free(reg);
	loaded_free(&l);
	return rc;
}

/* ---- build-base ----------------------------------------------------------------------- */

static int cmd_build_base(struct ami *a, const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {GLOBAL_OPTS, {NULL, 0, NULL, 0}};
	struct json_object *res;
	int c, rc;

	while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
		switch (global_opt(a, c)) {
		case 1:
			continue;
		case 2:
			fputs(help_build_base, stdout);
			return 0;
		}
		return usage(verb, "unknown option");
	}
	if (optind < argc)
		return usage(verb, "unexpected argument '%s'", argv[optind]);
	if (!valid_account(a->account))
		return usage(NULL, "--account '%s' is not a 12-digit account id", a->account);
	rc = ctl_call(a, "BuildBaseImages", json_object_new_object(), &res);
	if (rc)
		return rc;
	printf("%s\n", json_object_to_json_string_ext(res, JSON_C_TO_STRING_PRETTY |
							       JSON_C_TO_STRING_SPACED |
							       JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(res);
	return 0;
}

/* ---- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct ami a = {.home_fd = -1, .last_pct = -1};
	const char *verb;
	int i, rc;

	a.home = env_or("EBSIM_HOME", EBSIM_DEFAULT_HOME);
	a.region = env_or("EBSIM_REGION", EBSIM_DEFAULT_REGION);
	a.account = env_or("EBSIM_ACCOUNT", EBSIM_DEFAULT_ACCOUNT);
	a.tty = isatty(2);
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		const char **dst = NULL;

		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(ami_help, stdout);
			return 0;
		}
		if (!strcmp(argv[i], "--home"))
			dst = &a.home;
		else if (!strcmp(argv[i], "--region"))
			dst = &a.region;
		else if (!strcmp(argv[i], "--account"))
			dst = &a.account;
		if (!dst)
			return usage(NULL, "unknown option '%s'", argv[i]);
		if (i + 1 == argc)
			return usage(NULL, "%s needs a value", argv[i]);
		*dst = argv[++i];
	}
	if (i == argc) {
		fputs(ami_help, stderr);
		return EXIT_USAGE;
	}
	verb = argv[i];
	argc -= i;
	argv += i;
	optind = 1;
	if (!strcmp(verb, "bundle-image"))
		rc = bundle_common(&a, verb, argc, argv, false);
	else if (!strcmp(verb, "bundle-vol"))
		rc = bundle_common(&a, verb, argc, argv, true);
	else if (!strcmp(verb, "verify-bundle"))
		rc = cmd_verify(&a, verb, argc, argv);
	else if (!strcmp(verb, "unbundle"))
		rc = cmd_unbundle(&a, verb, argc, argv);
	else if (!strcmp(verb, "upload-bundle"))
		rc = cmd_upload(&a, verb, argc, argv);
	else if (!strcmp(verb, "build-base"))
		rc = cmd_build_base(&a, verb, argc, argv);
	else if (!strcmp(verb, "help"))
		rc = (fputs(ami_help, stdout), 0);
	else
		rc = usage(NULL, "unknown command '%s'", verb);
	if (a.home_fd >= 0)
		close(a.home_fd);
	return rc;
}

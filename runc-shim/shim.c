/*
 * loom-runc-shim: owns one build step's container from start to end.
 *
 * The daemon prepares a bundle (config.json) and starts this program; it then
 *   - resolves mount sources that live inside directories a container may write (cache mounts,
 *     selectors) with openat2(RESOLVE_IN_ROOT), and bind-mounts the resolved inode (through its
 *     fd) on a staging path in the bundle that the config names: a symlink swapped in later
 *     cannot redirect the mount to the host. (runc cannot bind /proc/<pid>/fd/<n> itself: it
 *     mounts from a new mount namespace, and the kernel refuses sources from another one.)
 *   - runs `runc run` in the foreground with its own stdio: stdout and stderr stay apart, or,
 *     when the config asks for a terminal and our stdio is one (node-pty), runc relays it;
 *   - forwards INT, HUP, QUIT, USR1, USR2 to runc (which forwards them to the process);
 *   - on SIGTERM (the daemon cancelling) or when the daemon dies (PDEATHSIG), kills the container
 *     with `runc kill <id> KILL`, retried until runc returns;
 *   - reaps every child (it is a child subreaper), runs `runc delete --force` if runc left state,
 *   - removes the mount stubs runc created (empty files and directories) without following any
 *     symlink, so a step that swapped a stub's parent for a symlink cannot make it touch the host;
 *   - unmounts the staging mounts;
 *   - writes the outcome to the --status file: `exit N` or `error MESSAGE` (or `nosrc ERRNO
 *     ROOT<TAB>SUB` for a mount source that is not there).
 *
 * With --userns PIN (a step for a foreign platform on a host without binfmt_misc handlers), a
 * child first makes a user namespace that maps every id to itself, mounts a binfmt_misc instance
 * of its own there (kernels since 6.7 give each user namespace one; nothing reaches the host's
 * table) and writes the --binfmt registrations into it; PIN (an empty file the config names as the
 * user namespace) is bound on /proc/<child>/ns/user. The child holds the instance (its detached
 * mount) until the shim ends, so every exec in the container, children included, goes through
 * QEMU. A network namespace the host's user namespace owns (the bridge's) cannot be joined from
 * there: with --netns PATH the config names no network namespace and runc starts in PATH.
 * `--probe-binfmt` only tries the namespace and exits 0, or 1 with the reason on stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 256
#define KILL_RETRY_MS 50
#define KILL_FORCE_MS 5000

struct srcmount {
	const char *target; /* staging path the config names */
	const char *root;
	const char *sub;
	int mounted;
};

static const char *runc_bin = "runc";
static const char *runc_root;
static const char *id;
static const char *bundle;
static const char *status_file;
static const char *stub_root;
static struct srcmount srcmounts[MAX_ITEMS];
static int n_srcmounts;
static const char *stubs[MAX_ITEMS];
static int n_stubs;
static const char *userns_pin;
static const char *netns_path;
static int userns_pinned;
static const char *binfmts[MAX_ITEMS];
static int n_binfmts;
static int holder_fd = -1; /* closing it ends the namespace holder */

static void write_status(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	if (!status_file)
		return;
	int fd = open(status_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	ssize_t w = write(fd, buf, (size_t)n);
	(void)w;
	close(fd);
}

static void unstage_mounts(void);
static void unpin_userns(void);

static void fail(const char *fmt, ...)
{
	char buf[3800];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	write_status("error %s\n", buf);
	fprintf(stderr, "loom-runc-shim: %s\n", buf);
	unstage_mounts();
	unpin_userns();
	exit(125);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs runc with `args` (NULL-terminated, after the global flags); returns the child's pid. */
static pid_t spawn_runc(const char *const *args, int quiet, const sigset_t *origmask, int netns_fd)
{
	const char *argv[36];
	/* runc's own log goes to a file beside its state directory, as upstream's executor has it: a
	 * failure then reaches stderr (the step's output) as the bare message, not as a log line (runc
	 * writes the plain text only when its log is not stderr). */
	static char log_path[4096];
	if (!log_path[0]) {
		const char *slash = strrchr(runc_root, '/');
		int dir_len = slash ? (int)(slash - runc_root) : 1;
		snprintf(log_path, sizeof(log_path), "%.*s/runc-log.json", dir_len, slash ? runc_root : ".");
	}
	int n = 0;
	argv[n++] = runc_bin;
	argv[n++] = "--root";
	argv[n++] = runc_root;
	argv[n++] = "--log";
	argv[n++] = log_path;
	argv[n++] = "--log-format";
	argv[n++] = "json";
	for (int i = 0; args[i] && n < 35; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, origmask, NULL);
		signal(SIGPIPE, SIG_DFL);
		/* runc must not outlive the shim (the daemon may SIGKILL it). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* The container shares this network namespace (the config names none). */
		if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0) {
			fprintf(stderr, "loom-runc-shim: join the network namespace: %s\n", strerror(errno));
			_exit(125);
		}
		if (quiet) {
			int nul = open("/dev/null", O_RDWR);
			if (nul >= 0) {
				dup2(nul, 0);
				dup2(nul, 1);
				dup2(nul, 2);
			}
		}
		execvp(runc_bin, (char *const *)argv);
		fprintf(stderr, "loom-runc-shim: exec %s: %s\n", runc_bin, strerror(errno));
		_exit(127);
	}
	return pid;
}

/* Opens `sub` inside `root` as if root were "/", never leaving it, as an O_PATH fd. */
static int open_in_root(const char *root, const char *sub)
{
	int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0)
		fail("mount source %s: %s", root, strerror(errno));
	struct open_how how;
	memset(&how, 0, sizeof(how));
	how.flags = O_PATH | O_CLOEXEC;
	how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
	long fd = syscall(SYS_openat2, rfd, sub, &how, sizeof(how));
	if (fd < 0 && errno == EXDEV) {
		/* A mount point inside the source (rare): allow crossing it, still confined to root. */
		how.resolve &= ~(unsigned long long)RESOLVE_NO_XDEV;
		fd = syscall(SYS_openat2, rfd, sub, &how, sizeof(how));
	}
	if (fd < 0 && (errno == ENOENT || errno == ENOTDIR)) {
		/* Not there: the daemon words it as runc's mount error (`nosrc ERRNO ROOT<TAB>SUB`). */
		write_status("nosrc %d %s\t%s\n", errno, root, sub);
		unstage_mounts();
		unpin_userns();
		exit(125);
	}
	if (fd < 0)
		fail("mount source %s in %s: %s", sub, root, strerror(errno));
	close(rfd);
	return (int)fd;
}

/*
 * Removes one mount stub (a path relative to the rootfs) if it is still an empty directory or an
 * empty non-directory. Every parent is opened with O_NOFOLLOW: a component that is now a symlink
 * (or anything but a directory) stops the walk, so nothing outside the rootfs is ever touched.
 * The parent's times are restored, for reproducible layers.
 */
static void remove_stub(int rootfd, const char *rel)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s", rel) >= (int)sizeof(path))
		return;
	char *comps[512];
	int nc = 0;
	for (char *save = NULL, *c = strtok_r(path, "/", &save); c && nc < 512; c = strtok_r(NULL, "/", &save)) {
		if (strcmp(c, ".") == 0 || strcmp(c, "") == 0)
			continue;
		if (strcmp(c, "..") == 0)
			return; /* the daemon sends clean paths; refuse anything else */
		comps[nc++] = c;
	}
	if (nc == 0)
		return;
	int dfd = dup(rootfd);
	if (dfd < 0)
		return;
	for (int i = 0; i < nc - 1; i++) {
		int next = openat(dfd, comps[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(dfd);
		if (next < 0)
			return;
		dfd = next;
	}
	const char *last = comps[nc - 1];
	struct stat st, pst;
	if (fstatat(dfd, last, &st, AT_SYMLINK_NOFOLLOW) < 0 || fstat(dfd, &pst) < 0) {
		close(dfd);
		return;
	}
	int rmflags = 0;
	if (S_ISDIR(st.st_mode)) {
		int cfd = openat(dfd, last, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0) {
			close(dfd);
			return;
		}
		DIR *d = fdopendir(cfd);
		if (!d) {
			close(cfd);
			close(dfd);
			return;
		}
		int empty = 1;
		struct dirent *e;
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
				empty = 0;
				break;
			}
		}
		closedir(d);
		if (!empty) {
			close(dfd);
			return;
		}
		rmflags = AT_REMOVEDIR;
	} else if (st.st_size != 0) {
		close(dfd);
		return;
	}
	if (unlinkat(dfd, last, rmflags) == 0) {
		struct timespec times[2] = {pst.st_atim, pst.st_mtim};
		futimens(dfd, times);
	}
	close(dfd);
}

static void remove_stubs(void)
{
	if (!stub_root || n_stubs == 0)
		return;
	int rootfd = open(stub_root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rootfd < 0)
		return;
	for (int i = 0; i < n_stubs; i++)
		remove_stub(rootfd, stubs[i]);
	close(rootfd);
}

/*
 * Binds SUB (resolved inside ROOT, never leaving it) on the staging path TARGET, which the shim
 * creates as a directory or an empty file to match. The bind is made through the resolved fd, so
 * what is mounted is exactly what was resolved.
 */
static void stage_mount(struct srcmount *m)
{
	int fd = open_in_root(m->root, m->sub);
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail("mount source %s in %s: %s", m->sub, m->root, strerror(errno));
	if (S_ISDIR(st.st_mode)) {
		if (mkdir(m->target, 0700) < 0 && errno != EEXIST)
			fail("staging %s: %s", m->target, strerror(errno));
	} else {
		int t = open(m->target, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (t < 0)
			fail("staging %s: %s", m->target, strerror(errno));
		close(t);
	}
	char src[64];
	snprintf(src, sizeof(src), "/proc/self/fd/%d", fd);
	if (mount(src, m->target, NULL, MS_BIND | MS_REC, NULL) < 0)
		fail("mount source %s in %s: bind: %s", m->sub, m->root, strerror(errno));
	/* Private: nothing mounted later below the source shows up in the container, nor leaks back. */
	mount(NULL, m->target, NULL, MS_PRIVATE | MS_REC, NULL);
	m->mounted = 1;
	close(fd);
}

static void unstage_mounts(void)
{
	for (int i = n_srcmounts - 1; i >= 0; i--) {
		if (srcmounts[i].mounted)
			umount2(srcmounts[i].target, MNT_DETACH);
		srcmounts[i].mounted = 0;
	}
}

/* The new mount API, by number: older C libraries have no wrappers (the numbers are the same on
 * every architecture). */
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#define LOOM_FSOPEN_CLOEXEC 0x1
#define LOOM_FSCONFIG_CMD_CREATE 6
#define LOOM_FSMOUNT_CLOEXEC 0x1

static int write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, data, strlen(data));
	int e = errno;
	close(fd);
	errno = e;
	return n == (ssize_t)strlen(data) ? 0 : -1;
}

/* In the holder child: reports `0` or `errno what` on `rep` and exits on failure. */
static void holder_report(int rep, int err, const char *what)
{
	char buf[512];
	int n = err ? snprintf(buf, sizeof(buf), "%d %s", err, what) : snprintf(buf, sizeof(buf), "0");
	ssize_t w = write(rep, buf, (size_t)n);
	(void)w;
	if (err)
		_exit(1);
}

/* Reads one report of the holder: 0, or -1 with `what: strerror` in `why`. */
static int holder_ok(int fd, char *why, size_t whylen)
{
	char buf[512];
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	if (n > 0 && buf[0] == '0')
		return 0;
	char *sp = strchr(buf, ' ');
	if (n > 0 && sp)
		snprintf(why, whylen, "%s: %s", sp + 1, strerror(atoi(buf)));
	else
		snprintf(why, whylen, "namespace holder died");
	return -1;
}

/*
 * Starts the namespace holder: a child in a new user namespace (every uid and gid mapped to
 * itself, written by us: only a process privileged outside may write such a map) and a new mount
 * namespace, holding a binfmt_misc instance with `binfmts` registered. Returns its pid; on failure
 * returns -1 with the reason in `why`.
 */
static pid_t start_holder(char *why, size_t whylen)
{
	int up[2], down[2], hold[2];
	if (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0 || pipe2(hold, O_CLOEXEC) < 0) {
		snprintf(why, whylen, "pipe: %s", strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(why, whylen, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(up[0]);
		close(down[1]);
		close(hold[1]);
		/* Not the daemon's pipes: they must close when the shim ends. */
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
		}
		if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
			holder_report(up[1], errno, "unshare a user namespace");
		holder_report(up[1], 0, "");
		char c;
		if (read(down[0], &c, 1) != 1)
			_exit(1);
		if (c != 'm')
			_exit(1);
		long fs = syscall(SYS_fsopen, "binfmt_misc", LOOM_FSOPEN_CLOEXEC);
		if (fs < 0)
			holder_report(up[1], errno, "open a binfmt_misc instance in a user namespace (needs Linux 6.7 or later)");
		if (syscall(SYS_fsconfig, (int)fs, LOOM_FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
			holder_report(up[1], errno, "create a binfmt_misc instance in a user namespace (needs Linux 6.7 or later)");
		long mnt = syscall(SYS_fsmount, (int)fs, LOOM_FSMOUNT_CLOEXEC, 0);
		if (mnt < 0)
			holder_report(up[1], errno, "mount a binfmt_misc instance in a user namespace");
		for (int i = 0; i < n_binfmts; i++) {
			int r = openat((int)mnt, "register", O_WRONLY | O_CLOEXEC);
			if (r < 0 || write(r, binfmts[i], strlen(binfmts[i])) != (ssize_t)strlen(binfmts[i])) {
				char what[300];
				snprintf(what, sizeof(what), "register binfmt_misc handler %.200s", binfmts[i]);
				holder_report(up[1], errno, what);
			}
			close(r);
		}
		holder_report(up[1], 0, "");
		close(up[1]);
		/* Hold the instance (the mount fd) until the shim closes its end or dies. */
		while (read(hold[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(up[1]);
	close(down[0]);
	close(hold[0]);
	if (holder_ok(up[0], why, whylen) < 0)
		goto failed;
	for (int i = 0; i < 2; i++) {
		char map[64];
		snprintf(map, sizeof(map), "/proc/%d/%s", (int)pid, i == 0 ? "uid_map" : "gid_map");
		if (write_file(map, "0 0 4294967295") < 0) {
			snprintf(why, whylen, "write %s: %s", map, strerror(errno));
			goto failed;
		}
	}
	if (write(down[1], "m", 1) != 1) {
		snprintf(why, whylen, "namespace holder died");
		goto failed;
	}
	if (holder_ok(up[0], why, whylen) < 0)
		goto failed;
	close(up[0]);
	close(down[1]);
	holder_fd = hold[1];
	return pid;
failed:
	close(up[0]);
	close(down[1]);
	close(hold[1]);
	kill(pid, SIGKILL);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return -1;
}

/* Binds the holder's user namespace on the pin file the config names. */
static void pin_userns(pid_t holder)
{
	char src[64];
	snprintf(src, sizeof(src), "/proc/%d/ns/user", (int)holder);
	if (mount(src, userns_pin, NULL, MS_BIND, NULL) < 0)
		fail("bind the step's user namespace on %s: %s", userns_pin, strerror(errno));
	userns_pinned = 1;
}

static void unpin_userns(void)
{
	if (userns_pinned)
		umount2(userns_pin, MNT_DETACH);
	userns_pinned = 0;
	if (holder_fd >= 0)
		close(holder_fd);
	holder_fd = -1;
}

static int probe_binfmt(void)
{
	char why[1024];
	pid_t h = start_holder(why, sizeof(why));
	if (h < 0) {
		fprintf(stderr, "%s\n", why);
		return 1;
	}
	close(holder_fd);
	while (waitpid(h, NULL, 0) < 0 && errno == EINTR)
		;
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loom-runc-shim --root DIR --id ID --bundle DIR --status FILE [--runc PATH]\n"
		"         [--src STAGING=ROOT:SUBPATH]... [--stub-root DIR --stub REL...]\n"
		"         [--userns PIN --binfmt REGISTRATION... [--netns PATH]]\n"
		"       loom-runc-shim --mount-helper | --probe-binfmt\n");
	exit(125);
}

/*
 * --mount-helper: a long-lived mount(2)/umount2(2) server for the daemon's overlay snapshotter, so
 * a mount costs a syscall rather than an exec of mount(8). Requests are lines on stdin, fields
 * separated by tabs (the daemon refuses paths holding a tab or newline):
 *   M <n> <target> <fstype> <source> <ro 0|1> <data>
 *   U <n> <target> <detach 0|1>
 * Each gets one line on stdout: `<n> 0` or `<n> <errno> <message>`. Relative paths in the data
 * (overlay lowerdir=...) resolve against the helper's working directory, which the daemon sets.
 * It exits when stdin closes or the daemon dies.
 */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == '\t') {
			*p = 0;
			f[n++] = p + 1;
		}
	}
	return n;
}

static void reply(const char *n, int err)
{
	char buf[512];
	int len = err ? snprintf(buf, sizeof(buf), "%s %d %s\n", n, err, strerror(err)) : snprintf(buf, sizeof(buf), "%s 0\n", n);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(buf))
		len = sizeof(buf) - 1;
	for (int off = 0; off < len;) {
		ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(len - off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(1);
		off += (int)w;
	}
}

static int mount_helper(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_IGN);
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	while ((len = getline(&line, &cap, stdin)) > 0) {
		if (line[len - 1] == '\n')
			line[--len] = 0;
		char *f[8];
		int nf = split_fields(line, f, 8);
		if (nf == 7 && strcmp(f[0], "M") == 0) {
			unsigned long flags = strcmp(f[5], "1") == 0 ? MS_RDONLY : 0;
			int rc = mount(f[4], f[2], f[3], flags, f[6][0] ? f[6] : NULL);
			reply(f[1], rc == 0 ? 0 : errno);
		} else if (nf == 4 && strcmp(f[0], "U") == 0) {
			int rc = umount2(f[2], strcmp(f[3], "1") == 0 ? MNT_DETACH : 0);
			reply(f[1], rc == 0 ? 0 : errno);
		} else if (nf >= 2) {
			reply(f[1], EINVAL);
		}
	}
	free(line);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--mount-helper") == 0)
		return mount_helper();
	if (argc == 2 && strcmp(argv[1], "--probe-binfmt") == 0)
		return probe_binfmt();
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			usage();
		} else if (strcmp(a, "--runc") == 0) {
			runc_bin = v, i++;
		} else if (strcmp(a, "--root") == 0) {
			runc_root = v, i++;
		} else if (strcmp(a, "--id") == 0) {
			id = v, i++;
		} else if (strcmp(a, "--bundle") == 0) {
			bundle = v, i++;
		} else if (strcmp(a, "--status") == 0) {
			status_file = v, i++;
		} else if (strcmp(a, "--stub-root") == 0) {
			stub_root = v, i++;
		} else if (strcmp(a, "--stub") == 0) {
			if (n_stubs >= MAX_ITEMS)
				usage();
			stubs[n_stubs++] = v, i++;
		} else if (strcmp(a, "--userns") == 0) {
			userns_pin = v, i++;
		} else if (strcmp(a, "--netns") == 0) {
			netns_path = v, i++;
		} else if (strcmp(a, "--binfmt") == 0) {
			if (n_binfmts >= MAX_ITEMS)
				usage();
			binfmts[n_binfmts++] = v, i++;
		} else if (strcmp(a, "--src") == 0) {
			/* STAGING=ROOT:SUB; STAGING and ROOT are loom's own absolute paths, without '=' or ':'. */
			char *spec = strdup(v), *eq = spec ? strchr(spec, '=') : NULL, *colon;
			if (!eq || n_srcmounts >= MAX_ITEMS)
				usage();
			*eq = 0;
			colon = strchr(eq + 1, ':');
			if (!colon)
				usage();
			*colon = 0;
			srcmounts[n_srcmounts].target = spec;
			srcmounts[n_srcmounts].root = eq + 1;
			srcmounts[n_srcmounts].sub = colon + 1;
			n_srcmounts++;
			i++;
		} else {
			usage();
		}
	}
	if (!runc_root || !id || !bundle || !status_file)
		usage();

	pid_t parent = getppid();
	/* The daemon dying counts as a cancel: the container must not outlive it. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		fail("the daemon exited before the container started");
	/* Orphans of the container's runtime come to us, so nothing is left unreaped. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);

	sigset_t mask, origmask;
	sigemptyset(&mask);
	int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&mask, sigs[i]);
	sigprocmask(SIG_BLOCK, &mask, &origmask);
	signal(SIGPIPE, SIG_IGN);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		fail("signalfd: %s", strerror(errno));

	for (int i = 0; i < n_srcmounts; i++)
		stage_mount(&srcmounts[i]);
	if (userns_pin) {
		char why[1024];
		pid_t h = start_holder(why, sizeof(why));
		if (h < 0)
			fail("user namespace for QEMU: %s", why);
		pin_userns(h);
	}
	/* A namespace the host's user namespace owns cannot be joined from the step's: runc starts in it. */
	int netns_fd = -1;
	if (netns_path && (netns_fd = open(netns_path, O_RDONLY | O_CLOEXEC)) < 0)
		fail("network namespace %s: %s", netns_path, strerror(errno));

	/* With a terminal in the config, runc in the foreground relays it to our stdio (node-pty's). */
	const char *run_args[] = {"run", "--bundle", bundle, id, NULL};
	pid_t runc = spawn_runc(run_args, 0, &origmask, netns_fd);

	int runc_done = 0, runc_status = 0, killing = 0;
	long long kill_started = 0, last_kill = 0;
	pid_t killer = 0;

	while (!runc_done) {
		struct pollfd pfd = {.fd = sfd, .events = POLLIN};
		int r = poll(&pfd, 1, killing ? KILL_RETRY_MS : -1);
		if (r < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (r > 0) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
				int sig = (int)si.ssi_signo;
				if (sig == SIGCHLD) {
					int st;
					pid_t p;
					while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
						if (p == runc) {
							runc_done = 1;
							runc_status = st;
						} else if (p == killer) {
							killer = 0;
						}
					}
				} else if (sig == SIGTERM) {
					if (!killing) {
						killing = 1;
						kill_started = now_ms();
					}
				} else if (!runc_done) {
					/* runc forwards these to the process (SIGWINCH: it resizes the terminal). */
					kill(runc, sig);
				}
			}
		}
		if (killing && !runc_done) {
			long long t = now_ms();
			if (t - kill_started >= KILL_FORCE_MS) {
				/* runc itself hangs: take it down; `runc delete --force` finishes the job. */
				kill(runc, SIGKILL);
			} else if (!killer && t - last_kill >= KILL_RETRY_MS) {
				const char *kill_args[] = {"kill", id, "KILL", NULL};
				killer = spawn_runc(kill_args, 1, &origmask, -1);
				last_kill = t;
			}
		}
	}

	/* `runc run` removes its container when the process ends; anything else leaves state behind. */
	char state[4096];
	struct stat st;
	snprintf(state, sizeof(state), "%s/%s", runc_root, id);
	if (stat(state, &st) == 0) {
		const char *del_args[] = {"delete", "--force", id, NULL};
		pid_t d = spawn_runc(del_args, 1, &origmask, -1);
		int dst;
		while (waitpid(d, &dst, 0) < 0 && errno == EINTR)
			;
	}
	unstage_mounts();
	unpin_userns();
	remove_stubs();
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;

	int code;
	if (WIFEXITED(runc_status))
		code = WEXITSTATUS(runc_status);
	else if (WIFSIGNALED(runc_status))
		code = 128 + WTERMSIG(runc_status);
	else
		code = 255;
	write_status("exit %d\n", code);
	return code;
}

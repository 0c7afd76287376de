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
 *   - writes the outcome to the --status file: `exit N` or `error MESSAGE`.
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
	exit(125);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs runc with `args` (NULL-terminated, after the global flags); returns the child's pid. */
static pid_t spawn_runc(const char *const *args, int quiet, const sigset_t *origmask)
{
	const char *argv[32];
	int n = 0;
	argv[n++] = runc_bin;
	argv[n++] = "--root";
	argv[n++] = runc_root;
	for (int i = 0; args[i] && n < 31; i++)
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

static void usage(void)
{
	fprintf(stderr,
		"usage: loom-runc-shim --root DIR --id ID --bundle DIR --status FILE [--runc PATH]\n"
		"         [--src STAGING=ROOT:SUBPATH]... [--stub-root DIR --stub REL...]\n");
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

	/* With a terminal in the config, runc in the foreground relays it to our stdio (node-pty's). */
	const char *run_args[] = {"run", "--bundle", bundle, id, NULL};
	pid_t runc = spawn_runc(run_args, 0, &origmask);

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
				killer = spawn_runc(kill_args, 1, &origmask);
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
		pid_t d = spawn_runc(del_args, 1, &origmask);
		int dst;
		while (waitpid(d, &dst, 0) < 0 && errno == EINTR)
			;
	}
	unstage_mounts();
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

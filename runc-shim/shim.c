/*
 * loom-runc-shim: owns one build step's container from start to end.
 *
 * The daemon prepares a bundle (config.json, or config.json.in with @LOOM_SHIM_PID@ placeholders)
 * and starts this program; it then
 *   - opens mount sources that live inside directories a container may write (cache mounts,
 *     selectors) with openat2(RESOLVE_IN_ROOT) and keeps them as fds, so the bind mounts runc
 *     makes name exactly the inodes resolved here (a symlink swapped in later cannot redirect
 *     them to the host): the config names them as /proc/<shim pid>/fd/<n>;
 *   - runs `runc run` in the foreground with its own stdio (stdout and stderr stay apart), or,
 *     with --tty, receives the container's pty master through a console socket and relays it to
 *     its own stdio (a terminal node-pty made), resizes included;
 *   - forwards INT, HUP, QUIT, USR1, USR2 to runc (which forwards them to the process);
 *   - on SIGTERM (the daemon cancelling) or when the daemon dies (PDEATHSIG), kills the container
 *     with `runc kill <id> KILL`, retried until runc returns;
 *   - reaps every child (it is a child subreaper), runs `runc delete --force` if runc left state,
 *   - removes the mount stubs runc created (empty files and directories) without following any
 *     symlink, so a step that swapped a stub's parent for a symlink cannot make it touch the host;
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
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 256
#define KILL_RETRY_MS 50
#define KILL_FORCE_MS 5000

struct fdmount {
	int fd;
	const char *root;
	const char *sub;
};

static const char *runc_bin = "runc";
static const char *runc_root;
static const char *id;
static const char *bundle;
static const char *status_file;
static const char *stub_root;
static int use_template;
static int use_tty;
static struct fdmount fdmounts[MAX_ITEMS];
static int n_fdmounts;
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

static void fail(const char *fmt, ...)
{
	char buf[3800];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	write_status("error %s\n", buf);
	fprintf(stderr, "loom-runc-shim: %s\n", buf);
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

static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail("stat %s: %s", path, strerror(errno));
	size_t cap = (size_t)st.st_size + 1, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		fail("out of memory");
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				fail("out of memory");
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fail("read %s: %s", path, strerror(errno));
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	*len = n;
	return buf;
}

/* config.json.in -> config.json with every @LOOM_SHIM_PID@ replaced by our pid. */
static void write_config_from_template(void)
{
	static const char token[] = "@LOOM_SHIM_PID@";
	size_t tl = sizeof(token) - 1, len;
	char *in = read_file("config.json.in", &len);
	char pid[32];
	int pl = snprintf(pid, sizeof(pid), "%d", (int)getpid());
	FILE *out = fopen("config.json", "we");
	if (!out)
		fail("create config.json: %s", strerror(errno));
	size_t i = 0;
	while (i < len) {
		if (len - i >= tl && memcmp(in + i, token, tl) == 0) {
			fwrite(pid, 1, (size_t)pl, out);
			i += tl;
		} else {
			fputc(in[i], out);
			i++;
		}
	}
	if (fclose(out) != 0)
		fail("write config.json: %s", strerror(errno));
	free(in);
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

static int recv_fd(int sock)
{
	char data[256];
	struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg;
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = u.buf;
	msg.msg_controllen = sizeof(u.buf);
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) < 0)
		return -1;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static void copy_winsize(int master)
{
	struct winsize ws;
	if (master >= 0 && ioctl(0, TIOCGWINSZ, &ws) == 0)
		ioctl(master, TIOCSWINSZ, &ws);
}

/* Writes all of buf, waiting for the fd to drain (our stdio may be non-blocking). */
static int write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd p = {.fd = fd, .events = POLLOUT};
				poll(&p, 1, 1000);
				continue;
			}
			return -1;
		}
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loom-runc-shim --root DIR --id ID --bundle DIR --status FILE [--runc PATH]\n"
		"         [--template] [--fd N=ROOT:SUBPATH]... [--tty] [--stub-root DIR --stub REL...]\n");
	exit(125);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--template") == 0) {
			use_template = 1;
		} else if (strcmp(a, "--tty") == 0) {
			use_tty = 1;
		} else if (!v) {
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
		} else if (strcmp(a, "--fd") == 0) {
			/* N=ROOT:SUB; ROOT is absolute and holds no ':' (loom's own state paths). */
			char *spec = strdup(v), *eq = strchr(spec, '='), *colon;
			if (!eq || n_fdmounts >= MAX_ITEMS)
				usage();
			*eq = 0;
			colon = strchr(eq + 1, ':');
			if (!colon)
				usage();
			*colon = 0;
			fdmounts[n_fdmounts].fd = atoi(spec);
			fdmounts[n_fdmounts].root = eq + 1;
			fdmounts[n_fdmounts].sub = colon + 1;
			if (fdmounts[n_fdmounts].fd < 3)
				usage();
			n_fdmounts++;
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

	if (chdir(bundle) < 0)
		fail("bundle %s: %s", bundle, strerror(errno));

	for (int i = 0; i < n_fdmounts; i++) {
		int fd = open_in_root(fdmounts[i].root, fdmounts[i].sub);
		if (fd != fdmounts[i].fd) {
			if (dup3(fd, fdmounts[i].fd, O_CLOEXEC) < 0)
				fail("dup3: %s", strerror(errno));
			close(fd);
		}
	}
	if (use_template)
		write_config_from_template();

	int csock = -1;
	if (use_tty) {
		csock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		struct sockaddr_un sa;
		memset(&sa, 0, sizeof(sa));
		sa.sun_family = AF_UNIX;
		strcpy(sa.sun_path, "console.sock"); /* relative: we run in the bundle */
		unlink("console.sock");
		if (csock < 0 || bind(csock, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(csock, 1) < 0)
			fail("console socket: %s", strerror(errno));
	}

	const char *run_args[] = {"run", "--bundle", bundle, NULL, NULL, id, NULL};
	if (use_tty) {
		run_args[3] = "--console-socket";
		run_args[4] = "console.sock";
	} else {
		run_args[3] = id;
		run_args[4] = NULL;
	}
	pid_t runc = spawn_runc(run_args, 0, &origmask);

	int runc_done = 0, runc_status = 0, killing = 0, master = -1, stdin_open = use_tty;
	long long kill_started = 0, last_kill = 0;
	pid_t killer = 0;
	char buf[32768];

	while (!runc_done || master >= 0) {
		struct pollfd pfd[4];
		int np = 0;
		pfd[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		int ci = -1, mi = -1, ii = -1;
		if (csock >= 0 && master < 0 && !runc_done) {
			ci = np;
			pfd[np++] = (struct pollfd){.fd = csock, .events = POLLIN};
		}
		if (master >= 0) {
			mi = np;
			pfd[np++] = (struct pollfd){.fd = master, .events = POLLIN};
			if (stdin_open) {
				ii = np;
				pfd[np++] = (struct pollfd){.fd = 0, .events = POLLIN};
			}
		}
		int timeout = killing ? KILL_RETRY_MS : -1;
		if (runc_done && master >= 0)
			timeout = 100; /* drain what the process wrote last, then stop */
		int r = poll(pfd, (nfds_t)np, timeout);
		if (r < 0 && errno != EINTR)
			fail("poll: %s", strerror(errno));
		if (r == 0 && runc_done && master >= 0) {
			close(master);
			master = -1;
			continue;
		}
		if (r > 0 && (pfd[0].revents & POLLIN)) {
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
				} else if (sig == SIGWINCH) {
					copy_winsize(master);
				} else if (!runc_done) {
					kill(runc, sig);
				}
			}
		}
		if (ci >= 0 && r > 0 && (pfd[ci].revents & POLLIN)) {
			int conn = accept4(csock, NULL, NULL, SOCK_CLOEXEC);
			if (conn >= 0) {
				master = recv_fd(conn);
				close(conn);
				if (master >= 0) {
					copy_winsize(master);
					close(csock);
					csock = -1;
				}
			}
		}
		if (mi >= 0 && r > 0 && (pfd[mi].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(master, buf, sizeof(buf));
			if (n > 0) {
				write_all(1, buf, (size_t)n);
			} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
				/* EIO: every holder of the pty's other side is gone. */
				close(master);
				master = -1;
			}
		}
		if (ii >= 0 && master >= 0 && r > 0 && (pfd[ii].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(0, buf, sizeof(buf));
			if (n > 0)
				write_all(master, buf, (size_t)n);
			else if (n == 0 || (errno != EINTR && errno != EAGAIN))
				stdin_open = 0;
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
	remove_stubs();
	if (use_tty)
		unlink("console.sock");
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

/*
 * A fork server for qemu-img and qemu-io, preloaded into the real binary
 * (LD_PRELOAD) by src/qemu/shell.ts. The technique is AFL's: the dynamic
 * loader's relocations and the binary's constructors run once, in this
 * server, and each command is a fork() of it that calls the binary's own
 * main() with the command's arguments. A command thus runs Debian's (or the
 * user's) qemu-img code, start to finish, as a process of its own; what it
 * skips is exec(2), mapping ~20 shared libraries and resolving ~4,000 symbol
 * relocations, which is most of the ~3 ms of CPU a tiny qemu-img command
 * costs (perf: ld.so 30 %, kernel exec/mmap/page faults 55 %).
 *
 * QEMU itself supports this: its RCU code re-creates its call_rcu thread and
 * registry in a forked child (util/rcu.c, pthread_atfork handlers active
 * unless qemu_init disables them, which the tools never call), since
 * qemu-nbd --fork and qemu-img's own callers fork it.
 *
 * Protocol (fd 0 in, fd 1 out; fields NUL-terminated):
 *   "C" BASE N ARG1 .. ARGN   start a command: argv is the server's own
 *                             argv (the binary, or an interpreter and a
 *                             script) followed by the N arguments; stdout and
 *                             stderr go to BASE.out and BASE.err, stdin is
 *                             /dev/null, and its PID is written to BASE.pid
 *                             once it leads its own process group
 *   "R" ID                    wait for every command started since the last
 *                             "R", writing each exit status (128 + signal for
 *                             a signalled one) to BASE.rc as soon as it is
 *                             reaped, then print "D ID\n"
 * These are the files and the line the bash runner (shell.ts) produces, so
 * Node treats both alike: it signals a command's group while BASE.rc is
 * absent. The server prints "QH-FS 1\n" when it is ready; a binary the
 * preload did not reach (static, or the library missing) never does, and
 * shell.ts runs that tool through bash instead.
 *
 * The watchdog (fd 3, a pipe only Node writes to) is bash's: when it ends,
 * every command not yet reaped is sent TERM, KILL after 2 s (sooner once
 * none is left), and once the server itself has exited (it writes the last
 * status files) its files and, when empty, the directory are removed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void), void (*)(void), void *);

static main_fn real_main;
static int own_argc;
static char **own_argv;

#define MAX_ARGS 4096
#define MAX_BATCH 256
#define KILL_AFTER_S 2

/* Reads one NUL-terminated field from fd 0 through a buffer of our own (no stdio: a forked
 * command must not inherit buffered protocol bytes). Returns NULL at end of input. */
static char inbuf[65536];
static size_t in_pos, in_len;
static char *field(void) {
  size_t cap = 256, n = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  for (;;) {
    if (in_pos == in_len) {
      ssize_t r = read(0, inbuf, sizeof inbuf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        free(out);
        return NULL;
      }
      in_pos = 0;
      in_len = (size_t)r;
    }
    char c = inbuf[in_pos++];
    if (n + 1 >= cap) {
      char *bigger = realloc(out, cap *= 2);
      if (!bigger) {
        free(out);
        return NULL;
      }
      out = bigger;
    }
    if (c == '\0') {
      out[n] = '\0';
      return out;
    }
    out[n++] = c;
  }
}

static void write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

/* Writes "N\n" to BASE + ext, as bash's `echo N >file` does (and no more atomically: Node reads a .rc
 * file's mere existence as "reaped", which is true from the moment it is created). */
static void put_number(const char *base, const char *ext, long v) {
  char path[4096], text[32];
  snprintf(path, sizeof path, "%s%s", base, ext);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  int n = snprintf(text, sizeof text, "%ld\n", v);
  write_all(fd, text, (size_t)n);
  close(fd);
}

static void redirect(const char *base, const char *ext, int target, int flags) {
  char path[4096];
  snprintf(path, sizeof path, "%s%s", base, ext);
  int fd = open(path, flags, 0644);
  if (fd < 0) _exit(1); /* as bash does when a redirection fails */
  if (fd != target) {
    dup2(fd, target);
    close(fd);
  }
}

/* Closes every descriptor from lowfd up: one close_range(2) where the kernel has it (5.9), else one
 * close(2) per slot below 1024, which perf showed as 1 % of a campaign's CPU (a thousand calls a command). */
static void close_from(int lowfd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0) return;
#endif
  for (int fd = lowfd; fd < 1024; fd++) close(fd);
}

static void run_child(const char *base, int argc, char **args) {
  setpgid(0, 0);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull < 0) _exit(1);
  dup2(devnull, 0);
  if (devnull != 0) close(devnull);
  redirect(base, ".out", 1, O_WRONLY | O_CREAT | O_TRUNC);
  redirect(base, ".err", 2, O_WRONLY | O_CREAT | O_TRUNC);
  /* Nothing of the protocol, the lifeline or Node's pipes stays open in the command. */
  close_from(3);
  char **argv = calloc((size_t)(own_argc + argc + 1), sizeof *argv);
  if (!argv) _exit(1);
  for (int i = 0; i < own_argc; i++) argv[i] = own_argv[i];
  for (int i = 0; i < argc; i++) argv[own_argc + i] = args[i];
  argv[own_argc + argc] = NULL;
  exit(real_main(own_argc + argc, argv, environ));
}

/* TERM (or KILL) the group of every command of `prefix` whose PID file has no status file beside it. */
static int stop_unreaped(const char *dir, const char *name_prefix, int sig) {
  int found = 0;
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  size_t np = strlen(name_prefix);
  while ((e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    if (strncmp(e->d_name, name_prefix, np) != 0 || n < 4 || strcmp(e->d_name + n - 4, ".pid") != 0) continue;
    char pidf[8192], rcf[8192];
    snprintf(pidf, sizeof pidf, "%s/%s", dir, e->d_name);
    snprintf(rcf, sizeof rcf, "%s/%.*s.rc", dir, (int)(n - 4), e->d_name);
    if (access(rcf, F_OK) == 0) continue;
    FILE *f = fopen(pidf, "r");
    long pid = 0;
    if (f) {
      if (fscanf(f, "%ld", &pid) != 1) pid = 0;
      fclose(f);
    }
    if (pid > 0 && kill((pid_t)-pid, sig) == 0) found = 1;
  }
  closedir(d);
  return found;
}

static void remove_own_files(const char *dir, const char *name_prefix) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  size_t np = strlen(name_prefix);
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, name_prefix, np) != 0) continue;
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static void watchdog(const char *prefix, int server_gone) {
  char dir[4096], name_prefix[4096];
  const char *slash = strrchr(prefix, '/');
  if (!slash) _exit(0);
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - prefix), prefix);
  snprintf(name_prefix, sizeof name_prefix, "%s-", slash + 1);
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) {
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    if (devnull > 2) close(devnull);
  }
  char c;
  for (;;) {
    ssize_t r = read(3, &c, 1);
    if (r > 0 || (r < 0 && errno == EINTR)) continue;
    break;
  }
  if (stop_unreaped(dir, name_prefix, SIGTERM)) {
    /* The grace, cut short once no group is left to signal (signal 0 only asks whether one is). */
    for (int t = 0; t < KILL_AFTER_S * 10 && stop_unreaped(dir, name_prefix, 0); t++) usleep(100000);
    stop_unreaped(dir, name_prefix, SIGKILL);
  }
  /* The server writes a status file as it reaps each command, which can come after the commands' groups
   * are gone: the files go once it has exited (its end of server_gone then closes), within the grace. */
  struct pollfd pfd = {.fd = server_gone, .events = POLLIN};
  for (int left = KILL_AFTER_S * 1000; left > 0;) {
    int r = poll(&pfd, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || read(server_gone, &c, 1) <= 0) break;
  }
  remove_own_files(dir, name_prefix);
  _exit(0);
}

struct started {
  pid_t pid;
  char *base;
};

static int serve(void) {
  const char *prefix = getenv("QH_FS_PREFIX");
  if (!prefix) return 2;
  char *own_prefix = strdup(prefix);
  /* What the commands inherit is the environment bash would have given them. */
  unsetenv("QH_FS_PREFIX");
  const char *was = getenv("QH_FS_PRELOAD_WAS");
  if (was) {
    setenv("LD_PRELOAD", was, 1);
    unsetenv("QH_FS_PRELOAD_WAS");
  } else {
    unsetenv("LD_PRELOAD");
  }
  int gone[2];
  if (pipe(gone) != 0) return 2;
  pid_t w = fork();
  if (w == 0) {
    close(gone[1]);
    watchdog(own_prefix, gone[0]);
  }
  /* Only this process holds the write end (commands close every fd above 2), so it ends when we do. */
  close(gone[0]);
  close(3);
  write_all(1, "QH-FS 1\n", 8);
  struct started batch[MAX_BATCH];
  int pending = 0;
  for (;;) {
    char *kind = field();
    if (!kind) return 0;
    if (strcmp(kind, "C") == 0) {
      char *base = field();
      char *count = field();
      if (!base || !count) return 3;
      long n = strtol(count, NULL, 10);
      if (n < 0 || n > MAX_ARGS || pending >= MAX_BATCH) return 3;
      char **args = calloc((size_t)n + 1, sizeof *args);
      if (!args) return 3;
      for (long i = 0; i < n; i++)
        if (!(args[i] = field())) return 3;
      pid_t pid = fork();
      if (pid == 0) run_child(base, (int)n, args);
      for (long i = 0; i < n; i++) free(args[i]);
      free(args);
      free(count);
      if (pid < 0) {
        /* No process: its status says so at once, as bash's failed fork would. */
        put_number(base, ".rc", 254);
        free(base);
      } else {
        /* Also here, so the group exists before Node can read the PID (bash's job control does both). */
        setpgid(pid, pid);
        put_number(base, ".pid", pid);
        batch[pending].pid = pid;
        batch[pending].base = base;
        pending++;
      }
    } else if (strcmp(kind, "R") == 0) {
      char *id = field();
      if (!id) return 3;
      while (pending > 0) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
          if (errno == EINTR) continue;
          break; /* nothing left to wait for: the missing status files read as lost */
        }
        for (int i = 0; i < pending; i++) {
          if (batch[i].pid != p) continue;
          put_number(batch[i].base, ".rc", WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st));
          free(batch[i].base);
          batch[i] = batch[--pending];
          break;
        }
      }
      char line[64];
      int n = snprintf(line, sizeof line, "D %s\n", id);
      write_all(1, line, (size_t)n);
      free(id);
    } else {
      return 3;
    }
    free(kind);
  }
}

static int start_main(int argc, char **argv, char **envp) {
  if (!getenv("QH_FS_PREFIX")) return real_main(argc, argv, envp);
  own_argc = argc;
  own_argv = argv;
  exit(serve());
}

/* glibc calls this with the binary's main: keep it, and start ours instead. */
int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void), void (*fini)(void), void (*rtld_fini)(void),
                      void *stack_end) {
  start_fn next = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
  if (!next) _exit(127);
  real_main = main;
  return next(start_main, argc, argv, init, fini, rtld_fini, stack_end);
}

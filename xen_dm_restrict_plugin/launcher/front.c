/*
 * xen-dm-restrict-launch, compiled front: the device-model launcher's
 * hot path without a Python start-up.
 *
 * It decides nothing.  It hands its exact argv to the launcher service
 * (xen-dm-restrict-launch-service, a Python process that is already
 * running), which checks it with the launcher's own code
 * (xen_dm_restrict_plugin.launcher.launch.plan: core/dm_argv.py and
 * core/libxl_argv.py), prepares the chroot, the cgroup and the tap
 * devices, and answers with a plan: what to exec, which descriptors to
 * keep or place, the namespaces, rlimits, signals, cgroup and the
 * compiled seccomp filter.  The front then applies exactly that plan:
 *
 *   - cgroup v2: clone3(CLONE_INTO_CGROUP) starts QEMU in its group
 *     (no migration of a running process, which costs an RCU grace
 *     period); the front stays QEMU's parent, passes signals on and
 *     exits with QEMU's status, since libxl waits on the front's pid;
 *   - cgroup v1 or none: the front joins the groups (cgroup.procs) and
 *     execs QEMU itself, keeping the pid, as the Python launcher does.
 *
 * When the service cannot be reached (not running, not installed), the
 * front execs the Python launcher XDR_FALLBACK with the same argv, which
 * checks and applies everything itself: slower, never less strict.
 *
 * "--help" and libvirt's "-help" probe are answered without the
 * service or QEMU: XDR_HELP and XDR_HELP_ARGS are the Python launcher's
 * HELP and HELP_ARGS.
 *
 * Built by "xen-dm-restrict install-launcher" with the system compiler:
 *   cc -O2 -DXDR_FALLBACK='"PATH.py"' -include generated.h -o PATH front.c
 * (generated.h defines XDR_HELP and XDR_HELP_ARGS)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <sched.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef XDR_FALLBACK
#error "XDR_FALLBACK (the Python launcher's path) must be defined"
#endif
#if !defined(XDR_HELP) || !defined(XDR_HELP_ARGS)
#error "XDR_HELP and XDR_HELP_ARGS (launcher/usage.py) must be defined"
#endif
#ifndef XDR_SOCKET
#define XDR_SOCKET "/run/xen-dm-restrict/launcher.sock"
#endif
#define SOCKET_ENV "XEN_DM_RESTRICT_LAUNCHER_SOCKET"
#define PROG "xen-dm-restrict-launch"

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* The plan's records: tag (1 byte), length (4 bytes, little endian),
 * value.  Keep in step with launcher.plan_wire. */
enum {
    T_EXIT = 1,      /* u32: exit now with this status (refused, error) */
    T_MESSAGE = 2,   /* text written to stderr (QEMU's log) */
    T_ARG = 3,       /* argv[i] of the exec, argv[0] is the binary */
    T_KEEP = 4,      /* u32: a descriptor QEMU inherits */
    T_TAP = 5,       /* u32: where the next received descriptor goes */
    T_UNSHARE = 6,   /* u32: CLONE_NEW* flags */
    T_RLIMIT = 7,    /* u32 resource, u64 value (soft = hard) */
    T_CGROUP2 = 8,   /* cgroup v2 directory: clone3 into it */
    T_CGROUP1 = 9,   /* cgroup v1 directory: join it */
    T_SECCOMP = 10,  /* struct sock_filter[]: loaded before the exec */
    T_SIG_IGN = 11,  /* u32: signal ignored in QEMU */
    T_SIG_DFL = 12,  /* u32: signal given its default action */
    T_CLOSE_FDS = 13 /* close every descriptor not kept */
};

#define MAX_REPLY (1 << 20)
#define MAX_ITEMS 4096
#define MAX_FDS 64

struct plan {
    int exit_status;
    const char *message;
    size_t message_len;
    char *argv[MAX_ITEMS + 1];
    int argc;
    int keep[MAX_ITEMS];
    int nkeep;
    int tap_target[MAX_FDS];
    int ntap;
    int fds[MAX_FDS];
    int nfds;
    uint32_t unshare_flags;
    struct { uint32_t resource; uint64_t value; } rlimits[32];
    int nrlimits;
    const char *cgroup2;
    const char *cgroup1[16];
    int ncgroup1;
    const struct sock_filter *filter;
    size_t filter_len;
    int sig_ign[64], nsig_ign, sig_dfl[64], nsig_dfl;
    int close_fds;
};

static void die(int status, const char *what)
{
    dprintf(2, "%s: error: %s: %s\n", PROG, what, strerror(errno));
    _exit(status);
}

static void fallback(char **argv)
{
    argv[0] = (char *)XDR_FALLBACK;
    execv(XDR_FALLBACK, argv);
    die(1, "cannot execute the Python launcher " XDR_FALLBACK);
}

/* Write all of buf to fd; nonzero when it was written. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t done = write(fd, buf, len);

        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return 0;
        buf += done;
        len -= (size_t)done;
    }
    return 1;
}

/* libvirt's probe of the emulator ("-help", twice per start) or a
 * person's "--help": answered here, with the Python launcher's HELP and
 * HELP_ARGS (launcher/usage.py), compiled in. */
static int is_help(const char *arg)
{
    static const char *const help_args[] = { XDR_HELP_ARGS };
    size_t i;

    for (i = 0; i < sizeof(help_args) / sizeof(help_args[0]); i++)
        if (strcmp(arg, help_args[i]) == 0)
            return 1;
    return 0;
}

static uint32_t u32(const unsigned char *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Connect to the service; -1 when it cannot be reached. */
static int connect_service(void)
{
    const char *path = getenv(SOCKET_ENV);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int fd;

    if (!path || !*path)
        path = XDR_SOCKET;
    if (strlen(path) >= sizeof(addr.sun_path))
        return -1;
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    /* Only root's service decides for root. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        cred.uid != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void ask(int sock, int argc, char **argv, unsigned char *reply,
                size_t *reply_len, struct plan *plan)
{
    size_t size = 4, off;
    char *request;
    int i;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    } control;
    struct iovec iov;
    struct msghdr msg = { 0 };
    struct cmsghdr *cmsg;
    ssize_t got;

    for (i = 1; i < argc; i++)
        size += strlen(argv[i]) + 1;
    request = malloc(size);
    if (!request)
        die(1, "malloc");
    memcpy(request, "XDR1", 4);
    off = 4;
    for (i = 1; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        memcpy(request + off, argv[i], n);
        off += n;
    }
    if (send(sock, request, size, MSG_NOSIGNAL) != (ssize_t)size)
        die(1, "cannot send the command line to the launcher service");
    free(request);

    iov.iov_base = reply;
    iov.iov_len = MAX_REPLY;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    do {
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got <= 0)
        die(1, "no answer from the launcher service");
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        errno = EMSGSIZE;
        die(1, "the launcher service's answer");
    }
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET &&
            cmsg->cmsg_type == SCM_RIGHTS) {
            int n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(plan->fds + plan->nfds, CMSG_DATA(cmsg),
                   n * sizeof(int));
            plan->nfds += n;
        }
    }
    *reply_len = got;
}

static void parse(unsigned char *reply, size_t len, struct plan *plan)
{
    size_t off = 0;

    while (off < len) {
        unsigned char tag;
        uint32_t n;
        unsigned char *value;

        if (len - off < 5)
            goto bad;
        tag = reply[off];
        n = u32(reply + off + 1);
        off += 5;
        if (n > len - off)
            goto bad;
        value = reply + off;
        off += n;
        switch (tag) {
        case T_EXIT:
            if (n != 4) goto bad;
            plan->exit_status = (int)u32(value);
            break;
        case T_MESSAGE:
            plan->message = (const char *)value;
            plan->message_len = n;
            break;
        case T_ARG:
            /* Every string value is sent NUL-terminated. */
            if (!n || value[n - 1] || plan->argc >= MAX_ITEMS) goto bad;
            plan->argv[plan->argc++] = (char *)value;
            break;
        case T_KEEP:
            if (n != 4 || plan->nkeep >= MAX_ITEMS) goto bad;
            plan->keep[plan->nkeep++] = (int)u32(value);
            break;
        case T_TAP:
            if (n != 4 || plan->ntap >= MAX_FDS) goto bad;
            plan->tap_target[plan->ntap++] = (int)u32(value);
            break;
        case T_UNSHARE:
            if (n != 4) goto bad;
            plan->unshare_flags = u32(value);
            break;
        case T_RLIMIT:
            if (n != 12 || plan->nrlimits >= 32) goto bad;
            plan->rlimits[plan->nrlimits].resource = u32(value);
            plan->rlimits[plan->nrlimits].value =
                u32(value + 4) | (uint64_t)u32(value + 8) << 32;
            plan->nrlimits++;
            break;
        case T_CGROUP2:
            if (!n || value[n - 1]) goto bad;
            plan->cgroup2 = (const char *)value;
            break;
        case T_CGROUP1:
            if (!n || value[n - 1] || plan->ncgroup1 >= 16) goto bad;
            plan->cgroup1[plan->ncgroup1++] = (const char *)value;
            break;
        case T_SECCOMP:
            if (!n || n % sizeof(struct sock_filter)) goto bad;
            plan->filter = (const struct sock_filter *)value;
            plan->filter_len = n / sizeof(struct sock_filter);
            break;
        case T_SIG_IGN:
            if (n != 4 || plan->nsig_ign >= 64) goto bad;
            plan->sig_ign[plan->nsig_ign++] = (int)u32(value);
            break;
        case T_SIG_DFL:
            if (n != 4 || plan->nsig_dfl >= 64) goto bad;
            plan->sig_dfl[plan->nsig_dfl++] = (int)u32(value);
            break;
        case T_CLOSE_FDS:
            plan->close_fds = 1;
            break;
        default:
            goto bad;
        }
    }
    if (plan->ntap != plan->nfds)
        goto bad;
    if (!plan->exit_status && plan->argc == 0)
        goto bad;
    return;
bad:
    errno = EPROTO;
    die(1, "malformed answer from the launcher service");
}

static int kept(const struct plan *plan, int fd)
{
    int i;

    if (fd <= 2)
        return 1;
    for (i = 0; i < plan->nkeep; i++)
        if (plan->keep[i] == fd)
            return 1;
    for (i = 0; i < plan->ntap; i++)
        if (plan->tap_target[i] == fd)
            return 1;
    return 0;
}

/* Put every received tap descriptor at the number QEMU's argv names. */
static void place_taps(struct plan *plan)
{
    int i, high = 3;

    for (i = 0; i < plan->ntap; i++)
        if (plan->tap_target[i] >= high)
            high = plan->tap_target[i] + 1;
    for (i = 0; i < plan->nfds; i++) {
        int moved = fcntl(plan->fds[i], F_DUPFD_CLOEXEC, high);
        if (moved < 0)
            die(1, "cannot place a tap descriptor");
        close(plan->fds[i]);
        plan->fds[i] = moved;
    }
    for (i = 0; i < plan->ntap; i++) {
        if (dup2(plan->fds[i], plan->tap_target[i]) < 0)
            die(1, "cannot place a tap descriptor");
        close(plan->fds[i]);
    }
}

static void close_stray_fds(const struct plan *plan)
{
    int fd, low = 3, limit = 1 << 20;

    /* Close the gaps between kept descriptors, then everything above. */
    for (fd = 3; fd < limit; fd++) {
        if (!kept(plan, fd))
            continue;
        if (fd > low && syscall(SYS_close_range, low, fd - 1, 0) < 0)
            die(1, "close_range");
        low = fd + 1;
        if (low > 1 << 16)
            break;
        /* The kept numbers are few: jump to the next one. */
        {
            int next = limit, i;
            for (i = 0; i < plan->nkeep; i++)
                if (plan->keep[i] > fd && plan->keep[i] < next)
                    next = plan->keep[i];
            for (i = 0; i < plan->ntap; i++)
                if (plan->tap_target[i] > fd && plan->tap_target[i] < next)
                    next = plan->tap_target[i];
            fd = next - 1;
        }
    }
    if (syscall(SYS_close_range, low, ~0U, 0) < 0)
        die(1, "close_range");
}

static void join_v1(const struct plan *plan)
{
    char path[4096], pid[32];
    int i, len = snprintf(pid, sizeof(pid), "%d", getpid());

    for (i = 0; i < plan->ncgroup1; i++) {
        int fd;

        snprintf(path, sizeof(path), "%s/cgroup.procs", plan->cgroup1[i]);
        fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, len) != len)
            die(1, path);
        close(fd);
    }
}

/* In the process that becomes QEMU: everything the plan asks, exec. */
static void isolate_and_exec(const struct plan *plan)
{
    int i;

    if (plan->unshare_flags && unshare((int)plan->unshare_flags) < 0)
        die(1, "unshare");
    for (i = 0; i < plan->nrlimits; i++) {
        struct rlimit rl = { plan->rlimits[i].value,
                             plan->rlimits[i].value };
        if (setrlimit(plan->rlimits[i].resource, &rl) < 0)
            die(1, "setrlimit");
    }
    for (i = 0; i < plan->nsig_dfl; i++)
        signal(plan->sig_dfl[i], SIG_DFL);
    for (i = 0; i < plan->nsig_ign; i++)
        signal(plan->sig_ign[i], SIG_IGN);
    if (plan->close_fds)
        close_stray_fds(plan);
    if (plan->filter) {
        struct sock_fprog prog = { (unsigned short)plan->filter_len,
                                   (struct sock_filter *)plan->filter };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            die(1, "no_new_privs");
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                    SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
            die(1, "seccomp");
    }
    if (plan->message_len)
        dprintf(2, "%s: INFO xen_dm_restrict_plugin.launcher.launch: %.*s\n",
                PROG, (int)plan->message_len, plan->message);
    execv(plan->argv[0], plan->argv);
    dprintf(2, "%s: error: device model %s cannot be executed: %s\n",
            PROG, plan->argv[0], strerror(errno));
    _exit(1);
}

static const int relayed[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1,
                               SIGUSR2, SIGALRM, SIGCONT, SIGWINCH };

/* Stay QEMU's parent: pass signals on, exit as QEMU did. */
static void relay(pid_t child, const sigset_t *waited)
{
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(waited, &info), status;
        pid_t done;

        if (sig < 0)
            continue;
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        done = waitpid(child, &status, WNOHANG);
        if (done != child)
            continue;
        if (WIFEXITED(status))
            _exit(WEXITSTATUS(status));
        if (WIFSIGNALED(status)) {
            struct rlimit none = { 0, 0 };
            sigset_t all;

            sig = WTERMSIG(status);
            setrlimit(RLIMIT_CORE, &none);
            signal(sig, SIG_DFL);
            sigfillset(&all);
            sigprocmask(SIG_UNBLOCK, &all, NULL);
            kill(getpid(), sig);
        }
        _exit(128 + 127);
    }
}

static void start_in_cgroup(const struct plan *plan)
{
    struct clone_args args = { 0 };
    sigset_t waited, old;
    unsigned i;
    long pid;
    int group = open(plan->cgroup2, O_PATH | O_DIRECTORY | O_CLOEXEC |
                     O_NOFOLLOW);

    if (group < 0)
        die(1, plan->cgroup2);
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    for (i = 0; i < sizeof(relayed) / sizeof(relayed[0]); i++)
        sigaddset(&waited, relayed[i]);
    sigprocmask(SIG_BLOCK, &waited, &old);
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)group;
    pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0)
        die(1, "clone3 into the device model's cgroup");
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() == 1)
            _exit(1);
        isolate_and_exec(plan);
    }
    /* The parent keeps only stdio: the taps and QMP socket are QEMU's. */
    syscall(SYS_close_range, 3, ~0U, 0);
    relay((pid_t)pid, &waited);
}

int main(int argc, char **argv)
{
    static unsigned char reply[MAX_REPLY];
    static struct plan plan;
    size_t len = 0;
    int sock;

    if (argc == 2 && is_help(argv[1]))
        _exit(write_all(1, XDR_HELP, sizeof(XDR_HELP) - 1) ? 0 : 1);
    sock = connect_service();
    if (sock < 0)
        fallback(argv);
    ask(sock, argc, argv, reply, &len, &plan);
    close(sock);
    parse(reply, len, &plan);
    if (plan.exit_status) {
        if (plan.message_len)
            dprintf(2, "%s: %.*s\n", PROG, (int)plan.message_len,
                    plan.message);
        _exit(plan.exit_status);
    }
    plan.argv[plan.argc] = NULL;
    place_taps(&plan);
    if (plan.cgroup2)
        start_in_cgroup(&plan);
    join_v1(&plan);
    isolate_and_exec(&plan);
    return 1;
}

/*
 * libvirtd's libxl hook, compiled client: the hook without a Python
 * start-up on libvirtd's path.
 *
 * libvirtd runs the hook synchronously for every operation of every
 * domain.  An operation the hook does not act on (XDR_ACTED lists those
 * it does) exits 0 here at once, without reading the domain XML (libvirt
 * ignores a hook that leaves its stdin unread).  For the others this
 * client decides nothing: it hands its argv, environment, umask, nice
 * value, resource limits, working directory and standard descriptors
 * (SCM_RIGHTS) to the hook service (xen-dm-restrict-hook-service), whose
 * worker, a Python process started ahead with the hook's modules
 * imported, runs the hook's own code (xen_dm_restrict_plugin.cmd.
 * libvirt_hook) on those descriptors exactly as the Python hook would:
 * it reads the XML from libvirtd's pipe and writes its messages to
 * libvirtd's.  It answers with the hook's exit status, which this client
 * exits with.  The protocol is daemon_hook/service.py's.
 *
 * Trust: only a service running as root (SO_PEERCRED) is asked.  When no
 * such service answers within HOOK_TIMEOUT_MS (not running, stopped,
 * not installed, its queue full), or it says its code changed on disk
 * (XDHS), the client execs the Python hook itself (XDR_PYTHON with
 * XDR_PROGRAM): slower, never less strict.  Once a worker may have read
 * the request it never falls back (it may have read the XML and acted):
 * a worker that ends without an answer is an error (exit 1), and
 * libvirtd refuses the start.
 *
 * An operation the hook acts on only when the XML holds a text
 * (XDR_ONLY_WITH: operation, text, ...; daemon_hook/operations.py says
 * why) is read here first; without the text the client exits 0, with it
 * a sealed memfd holding the XML stands in for stdin.
 *
 * Built by "xen-dm-restrict install-hook" with the system compiler and a
 * generated header defining XDR_PYTHON, XDR_PROGRAM, XDR_SOCKET,
 * XDR_ACTED, XDR_ONLY_WITH and XDR_BUILD (the build id the service
 * checks).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(XDR_PYTHON) || !defined(XDR_PROGRAM) || !defined(XDR_ACTED) \
    || !defined(XDR_ONLY_WITH) || !defined(XDR_BUILD)
#error "XDR_PYTHON, XDR_PROGRAM, XDR_ACTED, XDR_ONLY_WITH and XDR_BUILD \
must be defined"
#endif
#ifndef XDR_SOCKET
#define XDR_SOCKET "/run/xen-dm-restrict/hook.sock"
#endif
#define SOCKET_ENV "XEN_DM_RESTRICT_HOOK_SOCKET"
#define PROG "xen-dm-restrict-libvirt-hook"
#define MAGIC "XDH2"
#define ACCEPTED "XDHA"
#define STALE "XDHS"
#define MAX_REQUEST (1 << 20)
#ifndef HOOK_TIMEOUT_MS
#define HOOK_TIMEOUT_MS 10000
#endif

extern char **environ;

static const char *const acted[] = { XDR_ACTED, NULL };
static const char *const only_with[] = { XDR_ONLY_WITH, NULL, NULL };

/* Whether entry, "OPERATION SUB-OPERATION", names this call (argc >= 4). */
static int names_call(const char *entry, char **argv)
{
    size_t len = strlen(argv[2]);

    return strncmp(entry, argv[2], len) == 0 && entry[len] == ' '
        && strcmp(entry + len + 1, argv[3]) == 0;
}

static int acted_on(int argc, char **argv)
{
    size_t i;

    if (argc < 4)
        return 1;  /* the Python hook says what is missing */
    for (i = 0; acted[i]; i++)
        if (names_call(acted[i], argv))
            return 1;
    return 0;
}

/* The text this call is acted on only with, or NULL (always). */
static const char *needed_text(int argc, char **argv)
{
    size_t i;

    if (argc < 4)
        return NULL;
    for (i = 0; only_with[i]; i += 2)
        if (names_call(only_with[i], argv))
            return only_with[i + 1];
    return NULL;
}

/*
 * Read stdin whole.  Without the text, in a UTF-8 document without an
 * XML declaration (as libvirtd writes them; any other encoding need not
 * hold the text as ASCII bytes, and is handed on), return -2: nothing to
 * hand on.  Otherwise return a sealed memfd at offset 0 holding what was
 * read, to stand in for stdin; -1 on an error (errno set; stdin is then
 * partly read and the call cannot be handed on).
 */
static int xml_if(const char *text)
{
    size_t len = 0, cap = 65536, done;
    char *buf = malloc(cap), *grown;
    ssize_t got;
    int fd = -1, saved;

    if (!buf)
        return -1;
    for (;;) {
        if (len == cap) {
            grown = cap < ((size_t)1 << 30) ? realloc(buf, cap * 2) : NULL;
            if (!grown) {
                free(buf);
                errno = ENOMEM;
                return -1;
            }
            buf = grown;
            cap *= 2;
        }
        got = read(0, buf + len, cap - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            saved = errno;
            free(buf);
            errno = saved;
            return -1;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    if (len > 1 && buf[0] == '<' && buf[1] != '?' && !memchr(buf, 0, len)
            && !memmem(buf, len, text, strlen(text))) {
        free(buf);
        return -2;
    }
    fd = memfd_create("xdr-hook-xml", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        goto fail;
    for (done = 0; done < len; done += (size_t)got) {
        got = write(fd, buf + done, len - done);
        if (got < 0 && errno == EINTR)
            got = 0;
        else if (got <= 0) {
            if (got == 0)
                errno = EIO;
            goto fail;
        }
    }
    if (lseek(fd, 0, SEEK_SET) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL
            | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
        goto fail;
    free(buf);
    return fd;
fail:
    saved = errno;
    if (fd >= 0)
        close(fd);
    free(buf);
    errno = saved;
    return -1;
}

static void fallback(char **argv, int argc)
{
    char **args = calloc((size_t)argc + 4, sizeof(char *));
    int i;

    if (!args) {
        dprintf(2, "%s: error: out of memory\n", PROG);
        _exit(1);
    }
    args[0] = (char *)XDR_PYTHON;
    args[1] = (char *)"-IS";
    args[2] = (char *)"-c";
    args[3] = (char *)XDR_PROGRAM;
    for (i = 1; i < argc; i++)
        args[3 + i] = argv[i];
    execv(XDR_PYTHON, args);
    dprintf(2, "%s: error: cannot execute %s: %s\n", PROG, XDR_PYTHON,
            strerror(errno));
    _exit(1);
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/*
 * Connect to root's hook service and wait for its word that a worker
 * holds the connection; -1 when that does not happen in time.
 */
static int connect_service(void)
{
    const char *path = getenv(SOCKET_ENV);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct ucred cred;
    socklen_t len = sizeof(cred);
    long long deadline = now_ms() + HOOK_TIMEOUT_MS;
    struct pollfd wait = { .events = POLLIN };
    char word[4];
    int fd, left, ready;

    if (!path || !*path)
        path = XDR_SOCKET;
    if (strlen(path) >= sizeof(addr.sun_path))
        return -1;
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    /* A unix socket's connect says EAGAIN while the queue is full. */
    while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        if ((errno != EAGAIN && errno != EINTR) || now_ms() >= deadline) {
            close(fd);
            return -1;
        }
        usleep(1000);
    }
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
            cred.uid != 0)
        goto fail;
    wait.fd = fd;
    for (;;) {
        left = (int)(deadline - now_ms());
        if (left <= 0)
            goto fail;
        ready = poll(&wait, 1, left);
        if (ready > 0)
            break;
        if (ready < 0 && errno != EINTR)
            goto fail;
    }
    if (recv(fd, word, sizeof(word), 0) != 4 || memcmp(word, ACCEPTED, 4))
        goto fail;
    if (fcntl(fd, F_SETFL, 0) < 0)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int put(char *buf, size_t *off, const void *data, size_t len)
{
    if (len > MAX_REQUEST - *off)
        return -1;
    memcpy(buf + *off, data, len);
    *off += len;
    return 0;
}

static int put_u32(char *buf, size_t *off, uint32_t value)
{
    unsigned char le[4] = { value & 0xff, value >> 8 & 0xff,
                            value >> 16 & 0xff, value >> 24 };

    return put(buf, off, le, 4);
}

/*
 * The request (daemon_hook/service.py parses it): MAGIC, the build id,
 * umask, nice value, the resource limits, the number of arguments, the
 * arguments (argv[1:]) and then the environment, each ending with a NUL;
 * the standard descriptors 0, 1, 2 and the working directory ride
 * along.  -1 when it cannot be built or sent (nothing reached a worker
 * then).
 */
static int ask(int sock, int argc, char **argv)
{
    static char buf[MAX_REQUEST];
    size_t off = 0;
    mode_t mask = umask(0);
    int fds[4] = { 0, 1, 2, -1 }, i, nice_value, sent;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(fds))];
    } control;
    struct iovec iov;
    struct msghdr msg = { 0 };
    struct cmsghdr *cmsg;
    struct rlimit limit;

    umask(mask);
    errno = 0;
    nice_value = getpriority(PRIO_PROCESS, 0);
    if (errno)
        return -1;
    if (put(buf, &off, MAGIC, 4) || put(buf, &off, XDR_BUILD, 32) ||
            put_u32(buf, &off, mask) || put_u32(buf, &off, nice_value) ||
            put_u32(buf, &off, RLIM_NLIMITS))
        return -1;
    for (i = 0; i < RLIM_NLIMITS; i++) {
        if (getrlimit(i, &limit) < 0 ||
                put_u32(buf, &off, limit.rlim_cur & 0xffffffff) ||
                put_u32(buf, &off, (uint64_t)limit.rlim_cur >> 32) ||
                put_u32(buf, &off, limit.rlim_max & 0xffffffff) ||
                put_u32(buf, &off, (uint64_t)limit.rlim_max >> 32))
            return -1;
    }
    if (put_u32(buf, &off, (uint32_t)(argc - 1)))
        return -1;
    for (i = 1; i < argc; i++)
        if (put(buf, &off, argv[i], strlen(argv[i]) + 1))
            return -1;
    for (i = 0; environ[i]; i++)
        if (put(buf, &off, environ[i], strlen(environ[i]) + 1))
            return -1;
    fds[3] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[3] < 0)
        return -1;
    iov.iov_base = buf;
    iov.iov_len = off;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
    while ((sent = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    close(fds[3]);
    return sent < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    unsigned char reply[8];
    const char *text;
    ssize_t got;
    int sock, xml;

    if (!acted_on(argc, argv))
        return 0;
    if (argc < 4)
        fallback(argv, argc);
    text = needed_text(argc, argv);
    if (text) {
        xml = xml_if(text);
        if (xml == -2)
            return 0;
        if (xml < 0 || dup2(xml, 0) < 0) {
            dprintf(2, "%s: error: cannot read the domain XML: %s\n", PROG,
                    strerror(errno));
            return 1;
        }
        close(xml);
    }
    sock = connect_service();
    if (sock < 0 || ask(sock, argc, argv) < 0)
        fallback(argv, argc);
    do
        got = recv(sock, reply, sizeof(reply), 0);
    while (got < 0 && errno == EINTR);
    if (got == 4 && memcmp(reply, STALE, 4) == 0)
        fallback(argv, argc);  /* the worker read nothing */
    if (got != 8 || memcmp(reply, MAGIC, 4) != 0) {
        dprintf(2, "%s: error: the hook service %s ended without an "
                "answer: %s\n", PROG, getenv(SOCKET_ENV) ?
                getenv(SOCKET_ENV) : XDR_SOCKET,
                got < 0 ? strerror(errno) : "no status");
        return 1;
    }
    if (reply[5] || reply[6] || reply[7])
        return 1;
    return reply[4];
}

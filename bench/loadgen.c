/*
 * loadgen: a small epoll load generator for capserv's benchmark.
 *
 * Compiled by bench/run.py with the machine's C compiler, so the load side
 * costs a few syscalls per operation and is not the bottleneck.  Every reply
 * is checked byte for byte against the uppercase of what was sent.
 *
 *   loadgen rr      HOST PORT CONNS SIZE SECONDS   request/response
 *   loadgen bulk    HOST PORT MEGABYTES            one stream, MB/s
 *   loadgen connect HOST PORT PARALLEL SIZE SECONDS connect-send-receive-close
 *   loadgen udp     HOST PORT SOCKETS SIZE SECONDS  datagram ping-pong
 *   loadgen idle    HOST PORT CONNS HOLD_SECONDS    open and hold connections
 *
 * Prints one JSON object on stdout: {"ops":..,"seconds":..,"errors":..,...}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static struct sockaddr_storage target;
static socklen_t target_len;

static void resolve(const char *host, int port) {
    memset(&target, 0, sizeof target);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&target;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        target_len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        target_len = sizeof *a6;
    } else {
        fprintf(stderr, "loadgen: %s is not an IP address\n", host);
        exit(2);
    }
}

static int open_socket(int type) {
    int fd = socket(target.ss_family, type | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    if (type == SOCK_STREAM) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* A lowercase payload and its expected reply. */
static char *payload, *expected;
static void make_payload(size_t size) {
    payload = malloc(size + 1);
    expected = malloc(size + 1);
    for (size_t i = 0; i < size; i++) {
        char c = "abcdefghijklmnopqrstuvwxyz0123456789 "[i % 37];
        payload[i] = c;
        expected[i] = (c >= 'a' && c <= 'z') ? c - 32 : c;
    }
}

struct conn {
    int fd;
    size_t sent, got;
    int connecting;
    int answered; /* got at least one whole reply: the server is serving this client */
};

/* ---- request/response and connect-per-message ---- */

static int run_rr(const char *mode, int conns, size_t size, double seconds) {
    int reconnect = strcmp(mode, "connect") == 0;
    int ep = epoll_create1(0);
    struct conn *c = calloc(conns, sizeof *c);
    char *buf = malloc(size + 65536);
    long ops = 0, errors = 0;
    for (int i = 0; i < conns; i++) {
        c[i].fd = open_socket(SOCK_STREAM);
        if (connect(c[i].fd, (struct sockaddr *)&target, target_len) < 0 && errno != EINPROGRESS) die("connect");
        c[i].connecting = 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    double start = now(), end = start + seconds;
    struct epoll_event events[1024];
    while (now() < end) {
        int n = epoll_wait(ep, events, 1024, 100);
        for (int k = 0; k < n; k++) {
            struct conn *x = &c[events[k].data.u32];
            if (x->connecting && (events[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) { errno = err; die("connect"); }
                x->connecting = 0;
                x->sent = x->got = 0;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
                ssize_t w = send(x->fd, payload, size, MSG_NOSIGNAL);
                if (w > 0) x->sent = w;
                continue;
            }
            if (events[k].events & EPOLLIN) {
                ssize_t r = recv(x->fd, buf, size - x->got, 0);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    fprintf(stderr, "loadgen: server closed a connection\n");
                    errors++;
                    exit(3);
                }
                if (memcmp(buf, expected + x->got, r) != 0) errors++;
                x->got += r;
                if (x->got == size) {
                    ops++;
                    x->answered = 1;
                    if (reconnect) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                        close(x->fd);
                        x->fd = open_socket(SOCK_STREAM);
                        if (connect(x->fd, (struct sockaddr *)&target, target_len) < 0 && errno != EINPROGRESS)
                            die("connect");
                        x->connecting = 1;
                        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = events[k].data.u32};
                        epoll_ctl(ep, EPOLL_CTL_ADD, x->fd, &ev);
                    } else {
                        x->got = 0;
                        ssize_t w = send(x->fd, payload, size, MSG_NOSIGNAL);
                        x->sent = w > 0 ? (size_t)w : 0;
                        if (x->sent != size) { fprintf(stderr, "loadgen: short send\n"); exit(3); }
                    }
                }
            }
        }
    }
    double elapsed = now() - start;
    int answered = 0;
    for (int i = 0; i < conns; i++) {
        close(c[i].fd);
        answered += c[i].answered;
    }
    /* "answered": clients (connection slots) that got at least one reply; a
       server that leaves some waiting shows fewer than CONNS. */
    printf("{\"ops\": %ld, \"seconds\": %.4f, \"errors\": %ld, \"answered\": %d}\n", ops, elapsed, errors,
           answered);
    return errors ? 4 : 0;
}

/* ---- one bulk stream ---- */

static int run_bulk(long megabytes) {
    size_t chunk = 1 << 20;
    make_payload(chunk);
    long total = megabytes * (long)chunk, sent = 0, got = 0, errors = 0;
    int fd = open_socket(SOCK_STREAM);
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0) die("connect");
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    char *buf = malloc(chunk);
    double start = now();
    int half_closed = 0;
    while (got < total) {
        struct epoll_event e[4];
        int n = epoll_wait(ep, e, 4, 1000);
        if (n == 0) { fprintf(stderr, "loadgen: stalled\n"); exit(3); }
        if ((e[0].events & EPOLLOUT) && sent < total) {
            size_t off = sent % chunk, len = chunk - off;
            if ((long)len > total - sent) len = total - sent;
            ssize_t w = send(fd, payload + off, len, MSG_NOSIGNAL);
            if (w > 0) sent += w;
            if (sent == total && !half_closed) {
                shutdown(fd, SHUT_WR);
                half_closed = 1;
                struct epoll_event ev2 = {.events = EPOLLIN, .data.u32 = 0};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev2);
            }
        }
        if (e[0].events & (EPOLLIN | EPOLLHUP)) {
            for (;;) {
                ssize_t r = recv(fd, buf, chunk, 0);
                if (r < 0) break;
                if (r == 0) { if (got < total) { fprintf(stderr, "loadgen: early close\n"); exit(3); } break; }
                size_t off = got % chunk;
                size_t first = r < (ssize_t)(chunk - off) ? (size_t)r : chunk - off;
                if (memcmp(buf, expected + off, first) != 0) errors++;
                if ((size_t)r > first && memcmp(buf + first, expected, r - first) != 0) errors++;
                got += r;
            }
        }
    }
    double elapsed = now() - start;
    close(fd);
    printf("{\"ops\": %.3f, \"seconds\": %.4f, \"errors\": %ld, \"bytes\": %ld}\n", total / 1048576.0 / elapsed,
           elapsed, errors, got);
    return errors ? 4 : 0;
}

/* ---- UDP ping-pong ---- */

static int run_udp(int sockets, size_t size, double seconds) {
    int ep = epoll_create1(0);
    int *fd = calloc(sockets, sizeof *fd);
    double *sent_at = calloc(sockets, sizeof *sent_at);
    char *buf = malloc(65536);
    long ops = 0, errors = 0, resent = 0;
    for (int i = 0; i < sockets; i++) {
        fd[i] = open_socket(SOCK_DGRAM);
        if (connect(fd[i], (struct sockaddr *)&target, target_len) < 0) die("connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd[i], &ev);
        send(fd[i], payload, size, 0);
        sent_at[i] = now();
    }
    double start = now(), end = start + seconds;
    struct epoll_event events[1024];
    while (now() < end) {
        int n = epoll_wait(ep, events, 1024, 50);
        double t = now();
        for (int k = 0; k < n; k++) {
            int i = events[k].data.u32;
            ssize_t r = recv(fd[i], buf, 65536, 0);
            if (r < 0) continue;
            if ((size_t)r != size || memcmp(buf, expected, size) != 0) errors++;
            ops++;
            send(fd[i], payload, size, 0);
            sent_at[i] = t;
        }
        for (int i = 0; i < sockets; i++) {
            if (t - sent_at[i] > 0.2) {  /* lost: send again */
                send(fd[i], payload, size, 0);
                sent_at[i] = t;
                resent++;
            }
        }
    }
    double elapsed = now() - start;
    printf("{\"ops\": %ld, \"seconds\": %.4f, \"errors\": %ld, \"resent\": %ld}\n", ops, elapsed, errors, resent);
    return errors ? 4 : 0;
}

/* ---- idle connections ---- */

static int run_idle(int conns, double hold) {
    int *fd = calloc(conns, sizeof *fd);
    char b[8];
    for (int i = 0; i < conns; i++) {
        fd[i] = socket(target.ss_family, SOCK_STREAM, 0);
        if (fd[i] < 0) die("socket");
        if (connect(fd[i], (struct sockaddr *)&target, target_len) < 0) die("connect");
        /* One round trip each, so the server has built its protocol. */
        if (send(fd[i], "x", 1, 0) != 1 || recv(fd[i], b, 1, 0) != 1 || b[0] != 'X') {
            fprintf(stderr, "loadgen: connection %d not served\n", i);
            exit(3);
        }
    }
    printf("{\"ready\": %d}\n", conns);
    fflush(stdout);
    usleep((useconds_t)(hold * 1e6));
    for (int i = 0; i < conns; i++) close(fd[i]);
    printf("{\"ops\": %d, \"seconds\": %.4f, \"errors\": 0}\n", conns, hold);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: loadgen rr|bulk|connect|udp|idle HOST PORT ...\n");
        return 2;
    }
    const char *mode = argv[1];
    resolve(argv[2], atoi(argv[3]));
    if (!strcmp(mode, "rr") || !strcmp(mode, "connect")) {
        if (argc != 7) { fprintf(stderr, "usage: loadgen %s HOST PORT CONNS SIZE SECONDS\n", mode); return 2; }
        make_payload(atoi(argv[5]));
        return run_rr(mode, atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    }
    if (!strcmp(mode, "bulk")) return run_bulk(atol(argv[4]));
    if (!strcmp(mode, "udp")) {
        if (argc != 7) { fprintf(stderr, "usage: loadgen udp HOST PORT SOCKETS SIZE SECONDS\n"); return 2; }
        make_payload(atoi(argv[5]));
        return run_udp(atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    }
    if (!strcmp(mode, "idle")) return run_idle(atoi(argv[4]), atof(argv[5]));
    fprintf(stderr, "loadgen: unknown mode %s\n", mode);
    return 2;
}

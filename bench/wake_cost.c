/* What handing work from one process to another costs on this machine, apart from any
 * software of ours: two processes pass a 1200-byte UDP datagram back and forth on loopback,
 * each computing for about WORK_US microseconds after receiving it (as a hop computes its
 * span). Prints the one-way cost of a hand-over, and how much longer a fixed piece of work
 * takes right after a process wakes than when it runs without pause. Run it under
 * `taskset -c 0` to put both processes on one core (no idle core to wake), and without to let
 * the scheduler place them.
 *
 *   cc -O2 -o /tmp/wake_cost bench/wake_cost.c && /tmp/wake_cost [ROUNDS] [WORK_US]
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile double sink;

/* A fixed amount of arithmetic, calibrated to take about WORK_US; returns its duration. */
static long iters;
static double work(void) {
    double t = now(), x = 1.0;
    for (long i = 0; i < iters; i++) x = x * 1.0000001 + 1e-9;
    sink = x;
    return now() - t;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp);
    return v[n / 2];
}

static int udp(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("bind");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 500;
    double work_us = argc > 2 ? atof(argv[2]) : 3000;
    if (rounds < 1 || work_us <= 0) {
        fprintf(stderr, "usage: wake_cost [ROUNDS] [WORK_US]\n");
        return 2;
    }
    int base = 20000 + getpid() % 20000;
    int a = udp(base), b = udp(base + 1);
    struct sockaddr_in to_a = {.sin_family = AF_INET, .sin_port = htons(base),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in to_b = to_a;
    to_b.sin_port = htons(base + 1);
    char msg[1200];
    memset(msg, 1, sizeof msg);
    iters = 1000;
    while (work() < work_us * 1e-6) iters *= 2;
    iters = (long)(iters * work_us * 1e-6 / work());
    double *steady = malloc(rounds * sizeof *steady), *woken = malloc(rounds * sizeof *woken);
    if (!steady || !woken) return 1;
    for (int i = 0; i < rounds; i++) steady[i] = work();
    double w = median(steady, rounds);
    if (fork() == 0) {
        for (int i = 0; i < rounds; i++) {
            if (recv(b, msg, sizeof msg, 0) < 0) return 1;
            work();
            sendto(b, msg, sizeof msg, 0, (struct sockaddr *)&to_a, sizeof to_a);
        }
        return 0;
    }
    usleep(100000);
    double t0 = now(), worked = 0;
    for (int i = 0; i < rounds; i++) {
        sendto(a, msg, sizeof msg, 0, (struct sockaddr *)&to_b, sizeof to_b);
        if (recv(a, msg, sizeof msg, 0) < 0) return 1;
        woken[i] = work();
        worked += woken[i];
    }
    double per = (now() - t0) / rounds;
    wait(NULL);
    /* Both sides do the same work; the other side's takes as long as this side's. */
    printf("%d round trips, %.0f us of work on each side: a hand-over costs %.1f us one way; "
           "work right after a wake-up takes %.1f%% longer than without pause\n",
           rounds, w * 1e6, (per - 2 * worked / rounds) / 2 * 1e6,
           (median(woken, rounds) / w - 1) * 100);
    return 0;
}

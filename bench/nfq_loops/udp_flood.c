/*
 * 64-byte UDP packet-rate peer for bench/bench_live.py: iperf3 -u sends one datagram per syscall
 * and tops out near the rate of the forwarders it should measure; this sends with sendmmsg.
 *
 *   udp_flood send DST PORT SECONDS   send 64-byte datagrams as fast as possible; prints "sent N"
 *   udp_flood recv PORT MAX_SECONDS   count datagrams until 1 s without any (after the first) or
 *                                     MAX_SECONDS; prints "received N"
 *
 * Built by bench_live.py: gcc -O2 -o udp_flood udp_flood.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SIZE 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: udp_flood send DST PORT SECONDS | recv PORT MAX_SECONDS\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    static char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = SIZE;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long n = 0;
    if (strcmp(argv[1], "send") == 0 && argc >= 5) {
        addr.sin_port = htons((unsigned short)atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &addr.sin_addr);
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
            perror("connect");
            return 1;
        }
        double end = now() + atof(argv[4]);
        while (now() < end) {
            int r = sendmmsg(fd, msgs, BATCH, 0);
            if (r > 0)
                n += (unsigned long long)r;
            else if (errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED) {
                perror("sendmmsg");
                return 1;
            }
        }
        printf("sent %llu\n", n);
        return 0;
    }
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    int rcvbuf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("bind");
        return 1;
    }
    for (int i = 0; i < BATCH; i++)
        iovs[i].iov_len = sizeof(bufs[i]);
    printf("listening\n");
    fflush(stdout);
    /* before the first datagram wait up to MAX_SECONDS (the sender starts later), then 1 s */
    struct timeval tv = {.tv_sec = atoi(argv[3])};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    double end = now() + atof(argv[3]);
    while (now() < end) {
        if (n && tv.tv_sec != 1) {
            tv.tv_sec = 1;
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        }
        int r = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (r > 0)
            n += (unsigned long long)r;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
    }
    printf("received %llu\n", n);
    return 0;
}

/*
 * Minimal accept-everything NFQUEUE loop: the yardstick bench/bench_live.py compares the daemon to.
 *
 *   nfq_accept MODE [QUEUE] [-t]
 *     MODE  per-packet : one recv() and one NFQNL_MSG_VERDICT send() per packet
 *           batch      : read what is queued (recvmmsg, up to 64), then one NFQNL_MSG_VERDICT_BATCH
 *                        for the highest packet id (accepts every id up to it)
 *           batch-gso  : batch + NFQA_CFG_F_GSO (the kernel queues GSO/GRO packets whole instead of
 *                        segmenting them first)
 *     -t    print each packet's NFQA_TIMESTAMP ("sec.usec", or "-" when absent) to stdout:
 *           used to check when the kernel attaches a timestamp (docs/operations.md)
 *
 * All modes copy whole packets (NFQNL_COPY_PACKET, range 0xffff) like a real filter must, use a
 * 16 MiB socket buffer and an 8192-packet queue like the daemon, and count packets; SIGTERM/SIGINT
 * print "packets N batches B enobufs E" to stderr and exit 0.
 * Built by bench_live.py: gcc -O2 -o nfq_accept nfq_accept.c -lnetfilter_queue -lmnl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOT (65536 + 4096)
#define MAX_BATCH 64

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static struct mnl_socket *nl;
static unsigned long long n_packets, n_batches, n_enobufs;

static void request(struct nlmsghdr *nlh, const char *what)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    nlh->nlmsg_flags |= NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
        perror(what);
        exit(1);
    }
    for (;;) { /* packets may already arrive: skip them (they are re-verdicted nowhere: test setup) */
        int n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
        if (n < 0) {
            perror(what);
            exit(1);
        }
        struct nlmsghdr *m = (struct nlmsghdr *)buf;
        if (m->nlmsg_type == NLMSG_ERROR) {
            int err = ((struct nlmsgerr *)mnl_nlmsg_get_payload(m))->error;
            if (err) {
                fprintf(stderr, "%s: %s\n", what, strerror(-err));
                exit(1);
            }
            return;
        }
    }
}

static void verdict(uint32_t queue, uint32_t id, int type)
{
    char buf[128];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, type, queue);
    nfq_nlmsg_verdict_put(nlh, id, NF_ACCEPT);
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
        perror("verdict");
}

/* the packet id of a queued-packet message (0 when it is not one); prints its timestamp with -t */
static uint32_t packet_id(struct nlmsghdr *m, int print_ts)
{
    struct nlattr *attr[NFQA_MAX + 1] = {0};
    if ((m->nlmsg_type & 0xff) != NFQNL_MSG_PACKET || nfq_nlmsg_parse(m, attr) < 0 || !attr[NFQA_PACKET_HDR])
        return 0;
    if (print_ts) {
        if (attr[NFQA_TIMESTAMP]) {
            struct nfqnl_msg_packet_timestamp *ts = mnl_attr_get_payload(attr[NFQA_TIMESTAMP]);
            printf("%llu.%06llu\n", (unsigned long long)be64toh(ts->sec), (unsigned long long)be64toh(ts->usec));
        } else {
            printf("-\n");
        }
    }
    n_packets++;
    return ntohl(((struct nfqnl_msg_packet_hdr *)mnl_attr_get_payload(attr[NFQA_PACKET_HDR]))->packet_id);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s per-packet|batch|batch-gso [QUEUE] [-t]\n", argv[0]);
        return 2;
    }
    int batch = strcmp(argv[1], "per-packet") != 0;
    int gso = strcmp(argv[1], "batch-gso") == 0;
    uint32_t queue = 0;
    int print_ts = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0)
            print_ts = 1;
        else
            queue = (uint32_t)atoi(argv[i]);
    }
    if (print_ts)
        setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recv returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        perror("netlink");
        return 1;
    }
    int fd = mnl_socket_get_fd(nl);
    int rcvbuf = 16 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    int one = 1; /* ENOBUFS is counted, not fatal */
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));

    char cfg[512];
    struct nlmsghdr *nlh = nfq_nlmsg_put(cfg, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    request(nlh, "bind");
    nlh = nfq_nlmsg_put(cfg, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, 8192);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(gso ? NFQA_CFG_F_GSO : 0));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
    request(nlh, "configure");
    fprintf(stderr, "nfq_accept %s: queue %u bound\n", argv[1], queue);

    char *slots = malloc((size_t)MAX_BATCH * SLOT);
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iovs[MAX_BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < MAX_BATCH; i++) {
        iovs[i].iov_base = slots + (size_t)i * SLOT;
        iovs[i].iov_len = SLOT;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (!stop) {
        /* block for the first message, then take what else is queued without waiting */
        int n = recvmmsg(fd, msgs, batch ? MAX_BATCH : 1, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == ENOBUFS)
                n_enobufs++;
            else if (errno != EINTR) {
                perror("recvmmsg");
                return 1;
            }
            continue;
        }
        n_batches++;
        uint32_t last = 0;
        for (int i = 0; i < n; i++) {
            struct nlmsghdr *m = (struct nlmsghdr *)iovs[i].iov_base;
            int len = (int)msgs[i].msg_len;
            for (; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
                uint32_t id = packet_id(m, print_ts);
                if (!id)
                    continue;
                if (batch)
                    last = id > last ? id : last;
                else
                    verdict(queue, id, NFQNL_MSG_VERDICT);
            }
        }
        if (batch && last)
            verdict(queue, last, NFQNL_MSG_VERDICT_BATCH);
    }
    fprintf(stderr, "packets %llu batches %llu enobufs %llu\n", n_packets, n_batches, n_enobufs);
    mnl_socket_close(nl);
    return 0;
}

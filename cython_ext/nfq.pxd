# C declarations of the NFQUEUE binding (implementation in nfq.pyx, compiled as gateway._nfq).
#
# The netlink socket is driven directly (recvmmsg for batched reads, one sendmsg for all the
# verdicts of a batch); libnetfilter_queue's libmnl-based helpers build and parse the messages.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr* addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, void* timeout)
    int AF_NETLINK
    int AF_INET
    int SOCK_RAW
    int SOCK_CLOEXEC
    int SOL_SOCKET
    int SO_RCVBUF
    int SO_RCVBUFFORCE
    int SO_RCVTIMEO
    int MSG_DONTWAIT
    int MSG_TRUNC
    int MSG_WAITFORONE


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef extern from "<net/if.h>" nogil:
    char* if_indextoname(unsigned int ifindex, char* ifname)
    int IF_NAMESIZE


cdef extern from "<arpa/inet.h>" nogil:
    uint32_t ntohl(uint32_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint16_t htons(uint16_t)


cdef extern from "<linux/netlink.h>" nogil:
    struct nlmsghdr:
        uint32_t nlmsg_len
        uint16_t nlmsg_type
        uint16_t nlmsg_flags
        uint32_t nlmsg_seq
        uint32_t nlmsg_pid
    struct nlattr:
        uint16_t nla_len
        uint16_t nla_type
    struct nlmsgerr:
        int error
        nlmsghdr msg
    struct sockaddr_nl:
        unsigned short nl_family
        unsigned short nl_pad
        uint32_t nl_pid
        uint32_t nl_groups
    int NETLINK_NETFILTER
    int NLMSG_ERROR
    int NLMSG_DONE
    int NLM_F_ACK
    int NLA_HDRLEN
    int NLA_TYPE_MASK
    int NLMSG_HDRLEN
    uint32_t NLMSG_ALIGN(uint32_t)
    uint32_t NLA_ALIGN(uint32_t)
    bint NLMSG_OK(nlmsghdr*, int)
    nlmsghdr* NLMSG_NEXT(nlmsghdr*, int)
    void* NLMSG_DATA(nlmsghdr*)


cdef extern from "<linux/netfilter/nfnetlink.h>" nogil:
    int NFNL_SUBSYS_QUEUE


cdef extern from "<libnetfilter_queue/libnetfilter_queue.h>" nogil:
    struct nfqnl_msg_packet_hdr:
        uint32_t packet_id
        uint16_t hw_protocol
        uint8_t hook
    struct nfqnl_msg_packet_timestamp:  # both fields big-endian
        uint64_t sec
        uint64_t usec
    enum:
        NFQNL_MSG_PACKET
        NFQNL_MSG_VERDICT
        NFQNL_MSG_CONFIG
        NFQNL_CFG_CMD_BIND
        NFQNL_CFG_CMD_UNBIND
        NFQNL_COPY_PACKET
        NFQA_PACKET_HDR
        NFQA_MARK
        NFQA_IFINDEX_INDEV
        NFQA_IFINDEX_OUTDEV
        NFQA_PAYLOAD
        NFQA_CAP_LEN
        NFQA_SKB_INFO
        NFQA_TIMESTAMP
        NFQA_MAX
        NFQA_CFG_MASK
        NFQA_CFG_FLAGS
    int NFQA_CFG_F_FAIL_OPEN
    int NFQA_CFG_F_GSO
    int NFQA_SKB_GSO
    nlmsghdr* nfq_nlmsg_put(char* buf, int type, uint32_t queue_num)
    void nfq_nlmsg_cfg_put_cmd(nlmsghdr* nlh, uint16_t pf, uint8_t cmd)
    void nfq_nlmsg_cfg_put_params(nlmsghdr* nlh, uint8_t mode, int range)
    void nfq_nlmsg_cfg_put_qmaxlen(nlmsghdr* nlh, uint32_t qmaxlen)
    void nfq_nlmsg_verdict_put(nlmsghdr* nlh, int id, int verdict)
    void nfq_nlmsg_verdict_put_mark(nlmsghdr* nlh, uint32_t mark)
    void nfq_nlmsg_verdict_put_pkt(nlmsghdr* nlh, const void* pkt, uint32_t pktlen)
    int nfq_nlmsg_parse(const nlmsghdr* nlh, nlattr** attr)


cdef extern from "<endian.h>" nogil:
    uint64_t be64toh(uint64_t)


cdef extern from "<linux/netfilter.h>" nogil:
    int NF_DROP
    int NF_ACCEPT

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""NFQUEUE binding on libnetfilter_queue (compiled as gateway._nfq; typed stub: gateway/_nfq.pyi).

Why not the PyPI netfilterqueue: its copy range stops at 4016 bytes, it has no queue flags (GSO,
fail-open) and it sends one verdict per syscall. Here:

- copy range 0xFFFF (the kernel caps it at 0xFFFF - NLA_HDRLEN) and NFQA_CFG_F_GSO, so the kernel
  hands over whole GSO/GRO packets (up to 64 KiB) instead of segmenting them first;
- one recvmmsg() reads up to `max_batch` queued packets, one send() returns all their verdicts
  (one netlink message per packet, each with its own mark). NFQNL_MSG_VERDICT_BATCH is not used:
  it releases every pending id <= N, which would also release packets an inspector holds;
- a packet whose captured length is below its length (NFQA_CAP_LEN) is dropped and counted, never
  accepted on a partial view;
- every packet gets exactly one verdict, also when the decision callable raises.

Per packet: `decide(payload: bytes, ts_us, in_if, out_if) -> Decision` (the engine's method).
`ts_us` is the kernel's receive timestamp of the packet (NFQA_TIMESTAMP) when it sent one, else
one CLOCK_REALTIME reading per batch. The kernel sends one only for packets that carry a receive
timestamp, i.e. while some socket on the machine has asked for timestamps (docs/operations.md).
ACCEPT of a flow (reason rule/flow) sets the offload mark in the gateway's mark bits; INSPECT goes
to the `inspect` hook, or is dropped and counted as `inspect_unavailable` while none exists.

Deferred verdicts (the mail inspector holds segments until it has parsed them): an INSPECT packet
is handed to `inspect(packet_id, payload, decision)` WITHOUT a verdict; the hook (now or in a
later call) gives exactly one with `verdict(packet_id, accept, payload=None)`, where `payload` is
a rewritten packet (same length; NFQA_PAYLOAD, the kernel fixes nothing: checksums must be right).
Deferred verdicts keep their order relative to the batch's (the batch buffer is flushed first).
If the hook raises before giving the verdict, the packet is dropped.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, ENOBUFS, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec, timeval

from nfq cimport *  # noqa: F403  (C declarations only; the module is gateway._nfq)

# Mirrors of gateway.fastpath.common (checked against it by tests/test_daemon_unit.py).
cdef enum:
    V_DROP = 0
    V_ACCEPT = 1
    V_INSPECT = 2
    V_FRAGMENT = 3
    R_RULE = 0
    R_FLOW = 1
    N_VERDICTS = 4
    N_REASONS = 32

# Message slot per received datagram: the largest packet message is the 65531-byte payload plus
# its attributes; 4 KiB of headroom is far more than they need.
cdef enum:
    SLOT = 65536 + 4096
    VERDICT_MSG = 64  # bytes reserved per verdict message (actual: 40)
    N_BUCKETS = 13
# decision latency histogram: upper bounds in nanoseconds, last bucket is +Inf
LATENCY_BOUNDS_NS = (1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000, 5000000, 50000000)


cdef inline uint32_t attr_u32(nlattr* a) noexcept nogil:
    return ntohl((<uint32_t*>((<char*>a) + NLA_HDRLEN))[0])


cdef inline int64_t now_ns(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Queue:
    """One bound NFQUEUE queue. Not thread-safe; one per worker process."""

    cdef int fd
    cdef readonly int queue_num
    cdef int max_batch
    cdef char* slots
    cdef mmsghdr* msgs
    cdef iovec* iovs
    cdef char* vbuf
    cdef size_t vlen
    cdef dict _ifnames
    # marks: bits `mark_mask` belong to the gateway; offloaded flows get `offload_mark` there
    cdef public uint32_t mark_mask
    cdef public uint32_t offload_mark
    cdef public bint offload
    cdef public object inspect
    cdef public object last_error
    cdef dict _deferred  # packet id -> mark, for INSPECT packets awaiting the hook's verdict
    cdef char* pbuf  # one verdict message with a payload
    cdef bint in_process
    cdef int wait_ms  # the SO_RCVTIMEO now set (process(wait_ms=...)); 0: none (reads never block)
    # counters
    cdef uint64_t c_packets, c_batches, c_truncated, c_inspect_unavailable, c_fragment_dropped
    cdef uint64_t c_offload_marked, c_gso, c_enobufs, c_netlink_errors, c_parse_errors
    cdef uint64_t c_decide_errors, c_verdict_errors, c_startup_dropped, c_accepted, c_dropped, c_max_len
    cdef uint64_t c_inspect_rewritten, c_verdict_unknown, c_kernel_ts
    cdef uint64_t c_by_vr[N_VERDICTS][N_REASONS]
    cdef uint64_t lat_buckets[N_BUCKETS]
    cdef int64_t lat_bounds[N_BUCKETS]
    cdef double lat_sum_s

    def __cinit__(self):
        self.fd = -1

    def __init__(self, int queue_num, *, int max_batch=64, uint32_t maxlen=8192, bint gso=True,
                 bint fail_open=False, int rcvbuf=16 << 20, int copy_range=0xFFFF):
        cdef sockaddr_nl addr
        cdef int i
        if max_batch < 1 or max_batch > 1024:
            raise ValueError("max_batch must be 1..1024")
        self.queue_num = queue_num
        self.max_batch = max_batch
        self._ifnames = {}
        self.mark_mask = 0
        self.offload_mark = 0
        self.offload = False
        self.inspect = None
        self.last_error = None
        self._deferred = {}
        self.in_process = False
        for i in range(N_BUCKETS - 1):
            self.lat_bounds[i] = LATENCY_BOUNDS_NS[i]
        self.lat_bounds[N_BUCKETS - 1] = 1 << 62
        self.slots = <char*>calloc(max_batch, SLOT)
        self.msgs = <mmsghdr*>calloc(max_batch, sizeof(mmsghdr))
        self.iovs = <iovec*>calloc(max_batch, sizeof(iovec))
        self.vbuf = <char*>calloc(max_batch, VERDICT_MSG)
        self.pbuf = <char*>calloc(1, SLOT)
        if not self.slots or not self.msgs or not self.iovs or not self.vbuf or not self.pbuf:
            raise MemoryError()
        for i in range(max_batch):
            self.iovs[i].iov_base = self.slots + <size_t>i * SLOT
            self.iovs[i].iov_len = SLOT
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

        self.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER)
        if self.fd < 0:
            raise OSError(errno, "netlink socket")
        # a deep socket buffer absorbs bursts while the engine is busy (FORCE needs CAP_NET_ADMIN)
        if setsockopt(self.fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(int)) < 0:
            setsockopt(self.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(int))
        memset(&addr, 0, sizeof(addr))
        addr.nl_family = AF_NETLINK
        if bind(self.fd, <sockaddr*>&addr, sizeof(addr)) < 0:
            self._fail("bind netlink socket")

        cdef char buf[512]
        cdef nlmsghdr* nlh
        cdef uint32_t flags = 0, mask
        memset(buf, 0, sizeof(buf))
        nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num)
        nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND)
        nlh.nlmsg_flags |= NLM_F_ACK
        self._request(nlh, "bind queue %d" % queue_num)

        memset(buf, 0, sizeof(buf))
        nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num)
        nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, copy_range)
        nfq_nlmsg_cfg_put_qmaxlen(nlh, maxlen)
        if gso:
            flags |= NFQA_CFG_F_GSO
        if fail_open:  # queue full -> accept instead of drop; only with fail_mode = "open"
            flags |= NFQA_CFG_F_FAIL_OPEN
        mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
        _put_u32(nlh, NFQA_CFG_MASK, htonl(mask))
        _put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags))
        nlh.nlmsg_flags |= NLM_F_ACK
        self._request(nlh, "configure queue %d" % queue_num)

    cdef _fail(self, what):
        err = errno
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        raise OSError(err, what)

    cdef _request(self, nlmsghdr* nlh, what):
        """Send a config message and wait for its ACK. Packets that arrive meanwhile (the queue is
        live as soon as it is bound) are dropped and counted: fail closed, TCP retransmits."""
        cdef char buf[SLOT]
        cdef ssize_t n
        cdef nlmsghdr* m
        cdef nlattr* attr[NFQA_MAX + 1]
        cdef int err, rem
        cdef timeval tv
        tv.tv_sec = 2
        tv.tv_usec = 0
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))
        if send(self.fd, nlh, nlh.nlmsg_len, 0) < 0:
            self._fail(what)
        while True:
            n = recv(self.fd, buf, SLOT, 0)
            if n < 0:
                if errno == EINTR:
                    continue
                self._fail(what)
            m = <nlmsghdr*>buf
            rem = <int>n
            while NLMSG_OK(m, rem):
                if m.nlmsg_type == NLMSG_ERROR:
                    err = (<nlmsgerr*>NLMSG_DATA(m)).error
                    if err != 0:
                        if self.fd >= 0:
                            close(self.fd)
                            self.fd = -1
                        raise OSError(-err, what)
                    tv.tv_sec = 0
                    setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))
                    return
                if (m.nlmsg_type & 0xFF) == NFQNL_MSG_PACKET:
                    memset(attr, 0, sizeof(attr))
                    if nfq_nlmsg_parse(m, attr) >= 0 and attr[NFQA_PACKET_HDR] != NULL:
                        self._send_one(ntohl((<nfqnl_msg_packet_hdr*>((<char*>attr[NFQA_PACKET_HDR]) + NLA_HDRLEN)).packet_id), NF_DROP)
                        self.c_startup_dropped += 1
                m = NLMSG_NEXT(m, rem)

    cdef void _send_one(self, uint32_t packet_id, int verdict) noexcept:
        cdef char buf[VERDICT_MSG]
        cdef nlmsghdr* nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, self.queue_num)
        nfq_nlmsg_verdict_put(nlh, packet_id, verdict)
        if send(self.fd, buf, nlh.nlmsg_len, 0) < 0:
            self.c_verdict_errors += 1

    def fileno(self):
        return self.fd

    def close(self):
        """Unbind and close. The kernel drops what is still queued for us (fail closed)."""
        cdef char buf[128]
        cdef nlmsghdr* nlh
        if self.fd >= 0:
            nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
            nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_UNBIND)
            send(self.fd, buf, nlh.nlmsg_len, 0)
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        free(self.slots)
        free(self.msgs)
        free(self.iovs)
        free(self.vbuf)
        free(self.pbuf)

    cdef object _ifname(self, uint32_t index):
        if index == 0:
            return None
        name = self._ifnames.get(index)
        if name is None:
            name = _indextoname(index)
            self._ifnames[index] = name
        return name

    def forget_interfaces(self):
        """Drop the ifindex -> name cache (call periodically: interfaces get renamed/recreated)."""
        self._ifnames.clear()

    cdef void _verdict(self, uint32_t packet_id, int verdict, uint32_t mark, bint set_mark) noexcept:
        cdef nlmsghdr* nlh = nfq_nlmsg_put(self.vbuf + self.vlen, NFQNL_MSG_VERDICT, self.queue_num)
        nfq_nlmsg_verdict_put(nlh, packet_id, verdict)
        if set_mark:
            nfq_nlmsg_verdict_put_mark(nlh, mark)
        self.vlen += NLMSG_ALIGN(nlh.nlmsg_len)
        if verdict == NF_ACCEPT:
            self.c_accepted += 1
        else:
            self.c_dropped += 1

    def process(self, decide, int wait_ms=0):
        """Read up to max_batch queued packets, decide and verdict all of them. Returns the number
        of packets handled (0: nothing was waiting).

        wait_ms > 0: wait up to that long for the first packet, in the read itself and without the
        GIL (a signal ends the wait early: the caller's wake-up for other work). A packet is then
        decided straight from the read that waited for it, with no poll() before it: one syscall
        and one trip through Python less per wake-up on the per-packet path."""
        cdef int n, i, rem, handled = 0, flags = MSG_DONTWAIT
        cdef nlmsghdr* m
        cdef int64_t ts_us
        cdef timeval tv
        if self.fd < 0:
            raise ValueError("queue is closed")
        if wait_ms > 0:
            if wait_ms != self.wait_ms:
                tv.tv_sec = wait_ms // 1000
                tv.tv_usec = (wait_ms % 1000) * 1000
                setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))
                self.wait_ms = wait_ms
            flags = MSG_WAITFORONE
            with nogil:
                n = recvmmsg(self.fd, self.msgs, self.max_batch, flags, NULL)
        else:
            n = recvmmsg(self.fd, self.msgs, self.max_batch, flags, NULL)
        if n < 0:
            if errno == EAGAIN or errno == EINTR:
                return 0
            if errno == ENOBUFS:  # the kernel dropped packets for us: counted, the queue goes on
                self.c_enobufs += 1
                return 0
            raise OSError(errno, "recvmmsg")
        self.c_batches += 1
        ts_us = now_ns(CLOCK_REALTIME) // 1000
        self.vlen = 0
        self.in_process = True
        try:
            for i in range(n):
                m = <nlmsghdr*>(self.slots + <size_t>i * SLOT)
                rem = <int>self.msgs[i].msg_len
                if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    self.c_parse_errors += 1  # cannot happen with SLOT > max message; counted if it does
                while NLMSG_OK(m, rem):
                    if m.nlmsg_type == NLMSG_ERROR:
                        if (<nlmsgerr*>NLMSG_DATA(m)).error != 0:
                            self.c_netlink_errors += 1
                            self.last_error = -(<nlmsgerr*>NLMSG_DATA(m)).error
                    elif (m.nlmsg_type >> 8) == NFNL_SUBSYS_QUEUE and (m.nlmsg_type & 0xFF) == NFQNL_MSG_PACKET:
                        if self.vlen + VERDICT_MSG > <size_t>self.max_batch * VERDICT_MSG:
                            self._flush()
                        self._packet(m, ts_us, decide)
                        handled += 1
                    m = NLMSG_NEXT(m, rem)
        finally:
            self.in_process = False
            self._flush()
        return handled

    def verdict(self, uint32_t packet_id, bint accept, payload=None):
        """The verdict of a deferred INSPECT packet (exactly once), optionally with a rewritten
        payload (the whole IP packet). Returns False for an id that is not awaiting one."""
        cdef uint32_t mark, newmark
        cdef bytes p
        cdef nlmsghdr* nlh
        if self.fd < 0:
            raise ValueError("queue is closed")
        m = self._deferred.pop(packet_id, None)
        if m is None:
            self.c_verdict_unknown += 1
            return False
        mark = m
        newmark = mark & ~self.mark_mask
        if payload is None or not accept:
            if self.vlen + VERDICT_MSG > <size_t>self.max_batch * VERDICT_MSG:
                self._flush()
            if accept:
                self._verdict(packet_id, NF_ACCEPT, newmark, newmark != mark)
            else:
                self._verdict(packet_id, NF_DROP, 0, False)
            if not self.in_process:
                self._flush()
            return True
        p = payload
        if len(p) > SLOT - 4096:
            raise ValueError("payload too large")
        self._flush()  # keep the order of verdicts
        nlh = nfq_nlmsg_put(self.pbuf, NFQNL_MSG_VERDICT, self.queue_num)
        nfq_nlmsg_verdict_put(nlh, packet_id, NF_ACCEPT)
        if newmark != mark:
            nfq_nlmsg_verdict_put_mark(nlh, newmark)
        nfq_nlmsg_verdict_put_pkt(nlh, <const char*>p, <uint32_t>len(p))
        if send(self.fd, self.pbuf, nlh.nlmsg_len, 0) < 0:
            self.c_verdict_errors += 1
        self.c_accepted += 1
        self.c_inspect_rewritten += 1
        return True

    def deferred(self):
        """Packet ids of INSPECT packets still awaiting their verdict."""
        return list(self._deferred)

    cdef void _flush(self) noexcept:
        if self.vlen:
            if send(self.fd, self.vbuf, self.vlen, 0) < 0:
                self.c_verdict_errors += 1
            self.vlen = 0

    cdef _packet(self, nlmsghdr* m, int64_t ts_us, decide):
        cdef nlattr* attr[NFQA_MAX + 1]
        cdef uint32_t packet_id, mark = 0, cap_len, plen, newmark
        cdef int verdict, reason, i
        cdef int64_t t0, dt
        cdef char* payload
        cdef object d
        cdef nfqnl_msg_packet_timestamp* kts
        memset(attr, 0, sizeof(attr))
        if nfq_nlmsg_parse(m, attr) < 0 or attr[NFQA_PACKET_HDR] == NULL:
            self.c_parse_errors += 1  # no packet id: nothing can be verdicted (kernel keeps it)
            return
        self.c_packets += 1
        packet_id = ntohl((<nfqnl_msg_packet_hdr*>((<char*>attr[NFQA_PACKET_HDR]) + NLA_HDRLEN)).packet_id)
        if attr[NFQA_MARK] != NULL:
            mark = attr_u32(attr[NFQA_MARK])
        if attr[NFQA_SKB_INFO] != NULL and attr_u32(attr[NFQA_SKB_INFO]) & NFQA_SKB_GSO:
            self.c_gso += 1
        if attr[NFQA_TIMESTAMP] != NULL:
            kts = <nfqnl_msg_packet_timestamp*>((<char*>attr[NFQA_TIMESTAMP]) + NLA_HDRLEN)
            ts_us = <int64_t>be64toh(kts.sec) * 1000000 + <int64_t>be64toh(kts.usec)
            self.c_kernel_ts += 1
        if attr[NFQA_PAYLOAD] == NULL:
            self.c_truncated += 1
            self._verdict(packet_id, NF_DROP, 0, False)
            return
        payload = (<char*>attr[NFQA_PAYLOAD]) + NLA_HDRLEN
        plen = attr[NFQA_PAYLOAD].nla_len - NLA_HDRLEN
        cap_len = attr_u32(attr[NFQA_CAP_LEN]) if attr[NFQA_CAP_LEN] != NULL else plen
        if cap_len > plen:  # we see only part of the packet: never decide on a partial view
            self.c_truncated += 1
            self._verdict(packet_id, NF_DROP, 0, False)
            return
        if plen > self.c_max_len:
            self.c_max_len = plen
        pkt = PyBytes_FromStringAndSize(payload, plen)
        in_if = self._ifname(attr_u32(attr[NFQA_IFINDEX_INDEV])) if attr[NFQA_IFINDEX_INDEV] != NULL else None
        out_if = self._ifname(attr_u32(attr[NFQA_IFINDEX_OUTDEV])) if attr[NFQA_IFINDEX_OUTDEV] != NULL else None
        t0 = now_ns(CLOCK_MONOTONIC)
        try:
            d = decide(pkt, ts_us, in_if, out_if)
            verdict = d[0]
            reason = d[1]
        except Exception as exc:  # the engine must not raise; if it does, drop (fail closed)
            self.c_decide_errors += 1
            self.last_error = exc
            self._verdict(packet_id, NF_DROP, 0, False)
            return
        dt = now_ns(CLOCK_MONOTONIC) - t0
        for i in range(N_BUCKETS):
            if dt <= self.lat_bounds[i]:
                self.lat_buckets[i] += 1
                break
        self.lat_sum_s += dt * 1e-9
        if 0 <= verdict < N_VERDICTS and 0 <= reason < N_REASONS:
            self.c_by_vr[verdict][reason] += 1
        if verdict == V_ACCEPT:
            # clear the gateway's bits (a stale mark must never be saved), then set the offload
            # mark for packets of flows decided by a rule (not ICMP errors, not malformed-accept)
            newmark = mark & ~self.mark_mask
            if self.offload and (reason == R_RULE or reason == R_FLOW):
                newmark |= self.offload_mark
                self.c_offload_marked += 1
            self._verdict(packet_id, NF_ACCEPT, newmark, newmark != mark)
        elif verdict == V_INSPECT:
            if self.inspect is None:
                self.c_inspect_unavailable += 1
                self._verdict(packet_id, NF_DROP, 0, False)
            else:
                self._deferred[packet_id] = mark
                try:
                    self.inspect(packet_id, pkt, d)
                except Exception as exc:
                    self.last_error = exc
                    self.c_decide_errors += 1
                    if self._deferred.pop(packet_id, None) is not None:
                        self._verdict(packet_id, NF_DROP, 0, False)
        elif verdict == V_FRAGMENT:  # conntrack reassembles before the queue: should not happen
            self.c_fragment_dropped += 1
            self._verdict(packet_id, NF_DROP, 0, False)
        else:
            self._verdict(packet_id, NF_DROP, 0, False)

    def stats(self):
        """Counters of this queue (plain ints)."""
        return {
            "nfq_packets": self.c_packets,
            "nfq_batches": self.c_batches,
            "nfq_accepted": self.c_accepted,
            "nfq_dropped": self.c_dropped,
            "truncated": self.c_truncated,
            "inspect_unavailable": self.c_inspect_unavailable,
            "fragment_dropped": self.c_fragment_dropped,
            "offload_marked": self.c_offload_marked,
            "gso_packets": self.c_gso,
            "enobufs": self.c_enobufs,
            "netlink_errors": self.c_netlink_errors,
            "parse_errors": self.c_parse_errors,
            "decide_errors": self.c_decide_errors,
            "verdict_errors": self.c_verdict_errors,
            "startup_dropped": self.c_startup_dropped,
            "max_packet": self.c_max_len,
            "inspect_held": len(self._deferred),
            "inspect_rewritten": self.c_inspect_rewritten,
            "verdict_unknown": self.c_verdict_unknown,
            "kernel_timestamps": self.c_kernel_ts,
        }

    def by_verdict_reason(self):
        """{(verdict, reason): packets} for the engine's decisions (nonzero entries)."""
        out = {}
        cdef int v, r
        for v in range(N_VERDICTS):
            for r in range(N_REASONS):
                if self.c_by_vr[v][r]:
                    out[(v, r)] = self.c_by_vr[v][r]
        return out

    def latency(self):
        """(bucket upper bounds in seconds, cumulative-free bucket counts incl. +Inf, sum in seconds)."""
        bounds = [b * 1e-9 for b in LATENCY_BOUNDS_NS]
        counts = [self.lat_buckets[i] for i in range(N_BUCKETS)]
        return bounds, counts, self.lat_sum_s


cdef void _put_u32(nlmsghdr* nlh, int attr_type, uint32_t value_be) noexcept:
    """Append a u32 attribute (libnetfilter_queue 1.0.5 has no helper for the flags)."""
    cdef nlattr* a = <nlattr*>((<char*>nlh) + NLMSG_ALIGN(nlh.nlmsg_len))
    a.nla_type = attr_type
    a.nla_len = NLA_HDRLEN + 4
    (<uint32_t*>((<char*>a) + NLA_HDRLEN))[0] = value_be
    nlh.nlmsg_len = NLMSG_ALIGN(nlh.nlmsg_len) + NLA_ALIGN(a.nla_len)


cdef object _indextoname(uint32_t index):
    cdef char name[64]
    if if_indextoname(index, name) == NULL:
        return None
    return name.decode("ascii", "replace")

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled fast path: the twin of gateway/fastpath/reference.py (which is the specification).

Same API, same Decisions, same RawEvents, same counters, same LRU eviction order: the equivalence
tests (tests/test_fastpath_equivalence.py) run both on the same packet sequences.

Layout: headers are parsed with pointer arithmetic on the caller's buffer (bytes or any buffer),
addresses are two uint64 halves of the 128-bit space (IPv4 mapped into ::ffff:0:0/96 like
common.addr_to_int), the policy is compiled into C arrays, and the flow table is a chained hash
table over one slab of CFlow structs with an exact LRU list threaded through it.
"""

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastpath cimport CDecision, CFlow, CNet, CPacket, CPortRange, CPrefix, CRule

# gateway.fastpath.common is imported on first use, not here: importing it runs
# gateway/fastpath/__init__.py, which imports this module, so a module-level import would be a cycle
# whenever gateway._fastpath is imported first.
cdef object Decision = None
cdef object Limits = None
cdef object RawEvent = None


cdef void _load_common() except *:
    global Decision, Limits, RawEvent
    from gateway.fastpath import common
    Decision = common.Decision
    Limits = common.Limits
    RawEvent = common.RawEvent

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define LG_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
    #else
    #define LG_PREFETCH(p) ((void)0)
    #endif
    #define LG_V4_MAPPED_LO_PREFIX 0xFFFF00000000ULL
    #define LG_FNV_OFFSET 0xCBF29CE484222325ULL
    #define LG_FNV_PRIME 0x100000001B3ULL
    #define LG_FLOW_ID_MASK 0xFFFFFFFFFFFFFULL
    """
    void LG_PREFETCH(const void* p) noexcept nogil
    const uint64_t LG_V4_MAPPED_LO_PREFIX
    const uint64_t LG_FNV_OFFSET
    const uint64_t LG_FNV_PRIME
    const uint64_t LG_FLOW_ID_MASK

# Kept as C constants (mirrors of gateway.fastpath.common) so the hot path never looks up a name.
cdef enum:
    FLOW_TAG_BYTES = 64  # common.FLOW_TAG_BYTES

cdef enum:
    DROP = 0
    ACCEPT = 1
    INSPECT = 2
    FRAGMENT = 3

cdef enum:
    ACT_DENY = 0
    ACT_ALLOW = 1
    ACT_INSPECT = 2

cdef enum:
    R_RULE = 0
    R_FLOW = 1
    R_RELATED = 2
    R_MALFORMED = 3
    R_UNKNOWN_ZONE = 4
    R_ZONE_MISMATCH = 5
    R_NO_FLOW = 6
    R_BAD_TCP_FLAGS = 7
    R_ICMP_NO_FLOW = 8
    R_FRAGMENT = 9
    R_IPV6_RH0 = 12
    R_NON_IP = 13
    N_REASONS = 14

cdef enum:
    EV_FLOW = 0
    EV_DROP = 1
    EV_ANOMALY = 2

cdef enum:
    TCP_SYN_SENT = 0
    TCP_ESTABLISHED = 1
    TCP_CLOSING = 2
    TCP_CLOSED = 3

cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

# parse_ip results
cdef enum:
    ST_OK = 0
    ST_MALFORMED = 1
    ST_FRAGMENT = 2
    ST_RH0 = 3

# CPacket.type: what kind of ICMP message a packet is
cdef enum:
    PT_PLAIN = 0   # not ICMP, or an ICMP type that is neither echo nor error
    PT_ECHO = 1
    PT_ERROR = 2

# counter slots; the drop_<reason> counters follow at C_DROP0 + reason
cdef enum:
    C_PACKETS = 0
    C_ACCEPTED = 1
    C_DROPPED = 2
    C_INSPECTED = 3
    C_FRAGMENTS = 4
    C_MALFORMED_ACCEPTED = 5
    C_FLOWS_CREATED = 6
    C_FLOWS_EXPIRED = 7
    C_FLOWS_EVICTED = 8
    C_FLOWS_REDECIDED = 9
    C_DROP0 = 10
    N_COUNTERS = 24

cdef enum:
    SCAN_CHUNK = 512    # pcap records staged on the stack per append (4 x 4 KiB)
    PREFETCH_AHEAD = 8  # frames; measured on 1M mixed frames: 2 -> 10M/s, 4 -> 12M/s, 8..16 -> 13M/s

cdef enum:
    V4_MAPPED_HI = 0   # high half of an IPv4-mapped address; the low half is LG_V4_MAPPED_LO_PREFIX | v4


_REASONS = (
    "rule", "flow", "related", "malformed", "unknown_zone", "zone_mismatch", "no_flow",
    "bad_tcp_flags", "icmp_no_flow", "fragment", "fragment_overlap", "fragment_limit", "ipv6_rh0",
    "non_ip",
)
# counter names in the reference's order (counters() also adds "flows", the current table size)
_COUNTER_NAMES = (
    "packets", "accepted", "dropped", "inspected", "fragments", "malformed_accepted", "flows_created",
    "flows_expired", "flows_evicted", "flows_redecided",
)
_DROP_COUNTERS = tuple("drop_" + name for name in _REASONS)

_M64 = (1 << 64) - 1
_tuple_new = tuple.__new__
_M128 = (1 << 128) - 1


# --- byte helpers --------------------------------------------------------------------------------

cdef inline uint32_t be16(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef inline uint32_t le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline object u128(uint64_t hi, uint64_t lo):
    return (<object>hi << 64) | <object>lo


cdef inline uint64_t fnv_bytes(uint64_t h, uint64_t v, int nbytes) noexcept nogil:
    # feed the nbytes low bytes of v, most significant first (big-endian, like to_bytes("big"))
    cdef int i
    for i in range(nbytes - 1, -1, -1):
        h ^= (v >> (8 * i)) & 0xFF
        h *= LG_FNV_PRIME
    return h


cdef inline uint64_t flow_id_c(uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                               uint32_t pa, uint32_t pb, uint32_t proto, uint64_t tag) noexcept nogil:
    # common.flow_id_for over the same byte layout: a(16) b(16) pa(2) pb(2) proto(1) tag(8)
    cdef uint64_t h = LG_FNV_OFFSET
    h = fnv_bytes(h, a_hi, 8)
    h = fnv_bytes(h, a_lo, 8)
    h = fnv_bytes(h, b_hi, 8)
    h = fnv_bytes(h, b_lo, 8)
    h = fnv_bytes(h, pa, 2)
    h = fnv_bytes(h, pb, 2)
    h = fnv_bytes(h, proto, 1)
    h = fnv_bytes(h, tag, 8)
    return h & LG_FLOW_ID_MASK


cdef inline uint64_t flow_tag_c(const uint8_t* data, CPacket* p) noexcept nogil:
    # common.flow_tag: TCP -> the ISN; else FNV-1a 64 over <= FLOW_TAG_BYTES transport payload bytes
    cdef Py_ssize_t start, stop, i
    cdef uint64_t h = LG_FNV_OFFSET
    if p.proto == 6:
        return (<uint64_t>be16(data + p.l4 + 4) << 16) | be16(data + p.l4 + 6)
    if p.proto == 17:
        start = p.l4 + 8
    elif (p.proto == 1 and p.family == 4) or (p.proto == 58 and p.family == 6):
        start = p.l4 + 4
    else:
        start = p.l4
    stop = start + FLOW_TAG_BYTES
    if stop > p.l4_end:
        stop = p.l4_end
    for i in range(start, stop):
        h ^= data[i]
        h *= LG_FNV_PRIME
    return h


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: the hash table's bucket index, not an id anyone sees
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline uint64_t key_hash(uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                              uint32_t pa, uint32_t pb, uint32_t proto) noexcept nogil:
    cdef uint64_t h = mix64(a_lo ^ (a_hi * 0x9E3779B97F4A7C15ULL))
    h = mix64(h ^ b_lo ^ (b_hi * 0xC2B2AE3D27D4EB4FULL))
    return mix64(h ^ ((<uint64_t>pa << 24) | (<uint64_t>pb << 8) | proto))


# --- IP parsing ----------------------------------------------------------------------------------
# A line-by-line port of reference._parse_ip: same checks in the same order, so that every input,
# however broken, lands in the same status with the same fields.

cdef inline bint is_icmp_echo(int family, int t) noexcept nogil:
    if family == 4:
        return t == 8 or t == 0
    return t == 128 or t == 129


cdef inline bint is_icmp_error(int family, int t) noexcept nogil:
    if family == 4:
        return t == 3 or t == 4 or t == 5 or t == 11 or t == 12
    return 1 <= t <= 4


cdef int parse_ip(const uint8_t* data, Py_ssize_t off, Py_ssize_t end, int max_ext, CPacket* p,
                  bint quoted) noexcept nogil:
    """Parse the IP packet in data[off:end] into p; returns an ST_* code.

    `quoted` parses the packet inside an ICMP error, which is cut short by design: lengths are not
    checked against the data, only the first 8 bytes of the transport header are needed.
    """
    cdef Py_ssize_t avail = end - off, l4_end, l4, pos, l4len
    cdef int version, ihl, nh, count, nxt, itype, doff
    cdef uint32_t total, plen, frag, fo
    memset(p, 0, sizeof(CPacket))
    if avail < 1:
        return ST_MALFORMED
    version = data[off] >> 4
    if version == 4:
        if avail < 20:
            return ST_MALFORMED
        ihl = (data[off] & 0x0F) * 4
        total = be16(data + off + 2)
        if ihl < 20:
            return ST_MALFORMED
        if quoted:
            l4_end = end
        else:
            if total < <uint32_t>ihl or total > <uint64_t>avail:
                return ST_MALFORMED
            l4_end = off + total
        p.family = 4
        p.src_hi = V4_MAPPED_HI
        p.src_lo = LG_V4_MAPPED_LO_PREFIX | be32(data + off + 12)
        p.dst_hi = V4_MAPPED_HI
        p.dst_lo = LG_V4_MAPPED_LO_PREFIX | be32(data + off + 16)
        p.proto = data[off + 9]
        frag = be16(data + off + 6)
        if frag & 0x3FFF:  # MF or a fragment offset (DF alone is fine)
            return ST_FRAGMENT
        l4 = off + ihl
        if l4 > l4_end:
            return ST_MALFORMED
    elif version == 6:
        if avail < 40:
            return ST_MALFORMED
        plen = be16(data + off + 4)
        if quoted:
            l4_end = end
        else:
            if 40 + <Py_ssize_t>plen > avail:
                return ST_MALFORMED
            l4_end = off + 40 + plen
        p.family = 6
        p.src_hi = be64(data + off + 8)
        p.src_lo = be64(data + off + 16)
        p.dst_hi = be64(data + off + 24)
        p.dst_lo = be64(data + off + 32)
        nh = data[off + 6]
        pos = off + 40
        count = 0
        while True:
            if nh == 0 or nh == 43 or nh == 60 or nh == 135:  # hop-by-hop, routing, dst opts, mobility
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return ST_MALFORMED
                if nh == 43 and data[pos + 2] == 0:
                    p.proto = 43
                    return ST_RH0
                nxt = data[pos]
                pos += (data[pos + 1] + 1) * 8
                nh = nxt
                if pos > l4_end:
                    return ST_MALFORMED
            elif nh == 44:  # fragment
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return ST_MALFORMED
                fo = be16(data + pos + 2)
                if fo & 0xFFF9:  # offset (upper 13 bits) or M flag: a real fragment
                    p.proto = data[pos]
                    return ST_FRAGMENT
                nh = data[pos]
                pos += 8
            elif nh == 51:  # AH: length in 4-byte units, minus 2
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return ST_MALFORMED
                nxt = data[pos]
                pos += (data[pos + 1] + 2) * 4
                nh = nxt
                if pos > l4_end:
                    return ST_MALFORMED
            else:
                break
        p.proto = nh
        l4 = pos
    else:
        return ST_MALFORMED

    l4len = l4_end - l4
    p.l4 = l4
    p.l4_end = l4_end
    if p.proto == 6:
        if quoted:
            if l4len < 4:
                return ST_MALFORMED
        else:
            if l4len < 20:
                return ST_MALFORMED
            doff = (data[l4 + 12] >> 4) * 4
            if doff < 20 or doff > l4len:
                return ST_MALFORMED
            p.flags = data[l4 + 13] & 0x3F
        p.sport = be16(data + l4)
        p.dport = be16(data + l4 + 2)
    elif p.proto == 17:
        if l4len < (4 if quoted else 8):
            return ST_MALFORMED
        p.sport = be16(data + l4)
        p.dport = be16(data + l4 + 2)
    elif (p.proto == 1 and p.family == 4) or (p.proto == 58 and p.family == 6):
        # ICMP is only ICMP in its own family; ICMPv6 inside IPv4 is just "another protocol"
        if l4len < 4:
            return ST_MALFORMED
        itype = data[l4]
        p.sport = itype
        p.dport = data[l4 + 1]
        if is_icmp_echo(p.family, itype):
            if l4len < 8:
                return ST_MALFORMED
            p.type = PT_ECHO
            p.icmp_id = be16(data + l4 + 4)
        elif is_icmp_error(p.family, itype) and not quoted:
            if l4len < 8:
                return ST_MALFORMED
            p.type = PT_ERROR
            # the quoted packet follows the 8-byte ICMP header; the caller parses it
            p.inner_off = l4 + 8
            p.inner_end = l4_end
    return ST_OK


cdef inline bint flow_key(CPacket* p, uint64_t* a_hi, uint64_t* a_lo, uint64_t* b_hi, uint64_t* b_lo,
                          uint32_t* pa, uint32_t* pb) noexcept nogil:
    """reference._flow_key: canonical key (both directions map to one) -> whether p's source is A."""
    cdef uint32_t sp, dp
    cdef bint src_is_a
    if p.proto == 6 or p.proto == 17:
        sp = p.sport
        dp = p.dport
    elif p.type == PT_ECHO:
        sp = p.icmp_id
        dp = p.icmp_id
    else:
        sp = 0
        dp = 0
    # (src, sp) <= (dst, dp) as tuples of (128-bit int, port)
    if p.src_hi != p.dst_hi:
        src_is_a = p.src_hi < p.dst_hi
    elif p.src_lo != p.dst_lo:
        src_is_a = p.src_lo < p.dst_lo
    else:
        src_is_a = sp <= dp
    if src_is_a:
        a_hi[0] = p.src_hi
        a_lo[0] = p.src_lo
        b_hi[0] = p.dst_hi
        b_lo[0] = p.dst_lo
        pa[0] = sp
        pb[0] = dp
    else:
        a_hi[0] = p.dst_hi
        a_lo[0] = p.dst_lo
        b_hi[0] = p.src_hi
        b_lo[0] = p.src_lo
        pa[0] = dp
        pb[0] = sp
    return src_is_a


# --- link layer ------------------------------------------------------------------------------------

cdef inline Py_ssize_t ip_offset(const uint8_t* data, Py_ssize_t start, Py_ssize_t end, int linktype) noexcept nogil:
    """reference._ip_offset: offset of the IP header in a frame; -1 malformed, -2 not IP."""
    cdef Py_ssize_t n = end - start, pos
    cdef uint32_t etype, family
    if linktype == 1:  # Ethernet, any number of 802.1Q / 802.1ad / QinQ tags
        if n < 14:
            return -1
        pos = start + 12
        etype = be16(data + pos)
        while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
            pos += 4
            if pos + 2 > end:
                return -1
            etype = be16(data + pos)
        if etype == 0x0800 or etype == 0x86DD:
            return pos + 2
        return -2
    if linktype == 101 or linktype == 228 or linktype == 229:
        return start
    if linktype == 113:  # Linux cooked v1: protocol at 14
        if n < 16:
            return -1
        etype = be16(data + start + 14)
        return start + 16 if (etype == 0x0800 or etype == 0x86DD) else -2
    if linktype == 276:  # Linux cooked v2: protocol at 0
        if n < 20:
            return -1
        etype = be16(data + start)
        return start + 20 if (etype == 0x0800 or etype == 0x86DD) else -2
    if linktype == 0:  # BSD loopback: AF_ value in the capturing host's byte order
        if n < 4:
            return -1
        family = le32(data + start)
        if family > 0xFFFF:  # written by a big-endian host
            family = be32(data + start)
        if family == 2 or family == 10 or family == 24 or family == 28 or family == 30:
            return start + 4
        return -2
    return -1


# --- pcap ------------------------------------------------------------------------------------------

def scan_pcap_records(buf, Py_ssize_t start, bint nanosecond, bint swapped,
                      array.array offsets, array.array lengths, array.array ts_us,
                      array.array orig_lengths):
    """Append every complete classic-pcap record of buf[start:] to the arrays ('q').

    offsets: where the frame data starts in buf; lengths: captured length; ts_us: timestamp in
    µs; orig_lengths: length on the wire. swapped means a big-endian file. Returns the offset of
    the first incomplete record (== len(buf) when everything was consumed), so a streaming reader
    can keep the tail and call again with more data.
    """
    cdef const uint8_t[::1] view = memoryview(buf).cast("B")
    cdef const uint8_t* p = &view[0] if view.shape[0] > 0 else NULL
    cdef Py_ssize_t n = view.shape[0]
    cdef Py_ssize_t pos = start if start > 0 else 0
    cdef Py_ssize_t k = 0
    cdef uint32_t sec, frac, incl, orig
    # One pass over the headers (a big capture is a cache miss per record: reading each header
    # twice would cost twice), staged in small C chunks appended with one memcpy each.
    cdef long long o[SCAN_CHUNK]
    cdef long long ln[SCAN_CHUNK]
    cdef long long ts[SCAN_CHUNK]
    cdef long long ol[SCAN_CHUNK]
    for a in (offsets, lengths, ts_us, orig_lengths):
        if a.typecode != "q":
            raise TypeError("scan_pcap_records needs array('q') outputs")
    while pos + 16 <= n:
        if swapped:
            incl = be32(p + pos + 8)
        else:
            incl = le32(p + pos + 8)
        if pos + 16 + <Py_ssize_t>incl > n:
            break
        if swapped:
            sec = be32(p + pos)
            frac = be32(p + pos + 4)
            orig = be32(p + pos + 12)
        else:
            sec = le32(p + pos)
            frac = le32(p + pos + 4)
            orig = le32(p + pos + 12)
        o[k] = pos + 16
        ln[k] = incl
        ts[k] = <long long>sec * 1000000 + (frac // 1000 if nanosecond else frac)
        ol[k] = orig
        k += 1
        if k == SCAN_CHUNK:
            _append4(offsets, lengths, ts_us, orig_lengths, o, ln, ts, ol, k)
            k = 0
        pos += 16 + incl
    if k:
        _append4(offsets, lengths, ts_us, orig_lengths, o, ln, ts, ol, k)
    return pos


cdef int _append4(array.array a, array.array b, array.array c, array.array d, long long* va, long long* vb,
                  long long* vc, long long* vd, Py_ssize_t k) except -1:
    array.extend_buffer(a, <char*>va, k)
    array.extend_buffer(b, <char*>vb, k)
    array.extend_buffer(c, <char*>vc, k)
    array.extend_buffer(d, <char*>vd, k)
    return 0


# --- the engine ------------------------------------------------------------------------------------

cdef inline bint in_net(uint64_t hi, uint64_t lo, uint64_t nhi, uint64_t nlo,
                        uint64_t mhi, uint64_t mlo) noexcept nogil:
    return (hi & mhi) == nhi and (lo & mlo) == nlo


cdef void split_prefix(object net, int plen, uint64_t* hi, uint64_t* lo, uint64_t* mhi, uint64_t* mlo):
    cdef object mask
    if plen < 0:
        plen = 0
    if plen > 128:
        plen = 128
    # Python ints on purpose: a C int shift by up to 128 would overflow
    mask = _M128 ^ ((<object>1 << (128 - plen)) - 1)
    net = net & mask
    hi[0] = (net >> 64) & _M64
    lo[0] = net & _M64
    mhi[0] = (mask >> 64) & _M64
    mlo[0] = mask & _M64


cdef class Engine:
    """Compiled per-packet engine; reference.Engine is its specification, this is its C twin."""

    cdef object _policy
    cdef object _limits
    cdef object _interfaces   # the policy's own dict (read live, like the reference)
    cdef list _events
    cdef int64_t _generation  # bumped by every set_policy(); flows remember the one they were decided under
    cdef bint _malformed_accept

    # compiled policy (C arrays owned by the engine, rebuilt by set_policy)
    cdef CPrefix* _prefixes
    cdef int32_t _n_prefixes
    cdef CRule* _rules
    cdef int32_t _n_rules
    cdef CNet* _nets
    cdef CPortRange* _ports
    cdef int32_t* _icmp_types
    cdef uint8_t* _zone_intra_allow
    cdef int32_t _n_zones

    # limits
    cdef int64_t _max_flows
    cdef int64_t _t_syn
    cdef int64_t _t_est
    cdef int64_t _t_closing
    cdef int64_t _t_closed
    cdef int64_t _t_udp
    cdef int64_t _t_icmp
    cdef int64_t _t_other
    cdef int32_t _max_ext

    # flow table: slab of CFlow, bucket heads, free list, LRU list (head = least recently seen)
    cdef CFlow* _flows
    cdef int32_t* _buckets
    cdef uint64_t _bucket_mask
    cdef uint64_t _max_buckets
    cdef int32_t _free_head
    cdef int32_t _high_water
    cdef int32_t _lru_head
    cdef int32_t _lru_tail
    cdef int64_t _n_flows

    cdef int64_t _counters[N_COUNTERS]

    def __cinit__(self, *args, **kwargs):
        self._prefixes = NULL
        self._rules = NULL
        self._nets = NULL
        self._ports = NULL
        self._icmp_types = NULL
        self._zone_intra_allow = NULL
        self._flows = NULL
        self._buckets = NULL

    def __init__(self, policy, limits=None):
        cdef uint64_t nb
        cdef int64_t i
        if Decision is None:
            _load_common()
        if not limits:
            limits = Limits()
        self._limits = limits
        # The reference cannot run with max_flows < 1 either (its first insert would fail); here a
        # table of at least one slot keeps the C code free of that special case.
        self._max_flows = max(1, int(limits.max_flows))
        if self._max_flows > 0x3FFFFFFF:
            raise ValueError("max_flows too large for the compiled flow table")
        self._t_syn = limits.tcp_syn_timeout_us
        self._t_est = limits.tcp_established_timeout_us
        self._t_closing = limits.tcp_closing_timeout_us
        self._t_closed = limits.tcp_closed_timeout_us
        self._t_udp = limits.udp_timeout_us
        self._t_icmp = limits.icmp_timeout_us
        self._t_other = limits.other_timeout_us
        self._max_ext = limits.max_ipv6_ext_headers
        self._events = []
        memset(self._counters, 0, sizeof(self._counters))
        # One slab for all flows; calloc'ed, so pages never touched cost no memory.
        self._flows = <CFlow*>calloc(self._max_flows, sizeof(CFlow))
        # Buckets grow with the table (see _grow) up to twice max_flows, so chains stay ~1 long
        # and a table of 10k flows keeps its buckets in L2 instead of striding over 2 MB.
        nb = 16
        while nb < <uint64_t>self._max_flows * 2:
            nb <<= 1
        self._max_buckets = nb
        if nb > 1024:
            nb = 1024
        self._buckets = <int32_t*>malloc(nb * sizeof(int32_t))
        if self._flows == NULL or self._buckets == NULL:
            raise MemoryError()
        for i in range(<int64_t>nb):
            self._buckets[i] = -1
        self._bucket_mask = nb - 1
        self._free_head = -1
        self._high_water = 0
        self._lru_head = -1
        self._lru_tail = -1
        self._n_flows = 0
        self._generation = 0
        self.set_policy(policy)

    def __dealloc__(self):
        self._free_policy()
        free(self._flows)
        free(self._buckets)

    cdef void _free_policy(self) noexcept:
        free(self._prefixes)
        free(self._rules)
        free(self._nets)
        free(self._ports)
        free(self._icmp_types)
        free(self._zone_intra_allow)
        self._prefixes = NULL
        self._rules = NULL
        self._nets = NULL
        self._ports = NULL
        self._icmp_types = NULL
        self._zone_intra_allow = NULL

    # --- policy ---------------------------------------------------------------------------------

    def set_policy(self, policy):
        """Swap the policy. Existing flows keep their state; each is decided again (with the new
        rules) on its next packet, so a flow the new policy denies is cut."""
        cdef Py_ssize_t i, nn = 0, npr = 0, ni = 0
        cdef CRule* r
        zones = policy.zones
        prefixes = policy.prefixes
        rules = policy.rules
        for rs in rules:
            nn += len(rs.src_nets) + len(rs.dst_nets)
            npr += len(rs.src_ports) + len(rs.dst_ports)
            ni += len(rs.icmp_types)
        cdef CPrefix* cp = <CPrefix*>calloc(len(prefixes) + 1, sizeof(CPrefix))
        cdef CRule* cr = <CRule*>calloc(len(rules) + 1, sizeof(CRule))
        cdef CNet* cn = <CNet*>calloc(nn + 1, sizeof(CNet))
        cdef CPortRange* cpr = <CPortRange*>calloc(npr + 1, sizeof(CPortRange))
        cdef int32_t* ci = <int32_t*>calloc(ni + 1, sizeof(int32_t))
        cdef uint8_t* cz = <uint8_t*>calloc(len(zones) + 1, sizeof(uint8_t))
        try:
            if not (cp and cr and cn and cpr and ci and cz):
                raise MemoryError()
            for i, (net, plen, zone) in enumerate(prefixes):
                split_prefix(net, plen, &cp[i].hi, &cp[i].lo, &cp[i].mhi, &cp[i].mlo)
                cp[i].zone = zone
            for i, z in enumerate(zones):
                cz[i] = 1 if z.intra_zone_allow else 0
            nn = 0
            npr = 0
            ni = 0
            for i, rs in enumerate(rules):
                r = &cr[i]
                r.from_zone = rs.from_zone
                r.to_zone = rs.to_zone
                r.verdict = ACCEPT if rs.action == ACT_ALLOW else INSPECT if rs.action == ACT_INSPECT else DROP
                r.proto = rs.proto
                r.src_net0 = nn
                r.src_net_n = len(rs.src_nets)
                for net, plen in rs.src_nets:
                    split_prefix(net, plen, &cn[nn].hi, &cn[nn].lo, &cn[nn].mhi, &cn[nn].mlo)
                    nn += 1
                r.dst_net0 = nn
                r.dst_net_n = len(rs.dst_nets)
                for net, plen in rs.dst_nets:
                    split_prefix(net, plen, &cn[nn].hi, &cn[nn].lo, &cn[nn].mhi, &cn[nn].mlo)
                    nn += 1
                r.sport0 = npr
                r.sport_n = len(rs.src_ports)
                for lo, hi in rs.src_ports:
                    cpr[npr].lo = lo
                    cpr[npr].hi = hi
                    npr += 1
                r.dport0 = npr
                r.dport_n = len(rs.dst_ports)
                for lo, hi in rs.dst_ports:
                    cpr[npr].lo = lo
                    cpr[npr].hi = hi
                    npr += 1
                r.icmp0 = ni
                r.icmp_n = len(rs.icmp_types)
                for t in rs.icmp_types:
                    ci[ni] = t
                    ni += 1
        except BaseException:
            free(cp)
            free(cr)
            free(cn)
            free(cpr)
            free(ci)
            free(cz)
            raise
        # nothing can fail from here on: the swap is all or nothing
        self._free_policy()
        self._prefixes = cp
        self._n_prefixes = len(prefixes)
        self._rules = cr
        self._n_rules = len(rules)
        self._nets = cn
        self._ports = cpr
        self._icmp_types = ci
        self._zone_intra_allow = cz
        self._n_zones = len(zones)
        self._interfaces = policy.interfaces
        self._malformed_accept = bool(policy.malformed_accept)
        self._policy = policy
        self._generation += 1

    @property
    def policy(self):
        return self._policy

    @property
    def limits(self):
        return self._limits

    cdef inline int32_t _zone_of(self, uint64_t hi, uint64_t lo) noexcept nogil:
        # prefixes are sorted longest first: the first match is the longest
        cdef int32_t i
        cdef CPrefix* p
        for i in range(self._n_prefixes):
            p = &self._prefixes[i]
            if (lo & p.mlo) == p.lo and (hi & p.mhi) == p.hi:
                return p.zone
        return -1

    cdef int32_t _match(self, uint64_t s_hi, uint64_t s_lo, uint64_t d_hi, uint64_t d_lo,
                        int32_t sport, int32_t dport, int32_t proto, int32_t family, int32_t sz, int32_t dz,
                        int32_t* verdict) noexcept nogil:
        """reference._match: first matching rule index (verdict in *verdict); -1 = zone default."""
        cdef int32_t i, j
        cdef CRule* r
        cdef CNet* nt
        cdef CPortRange* pr
        cdef bint ok
        cdef bint ports = proto == 6 or proto == 17
        # ICMPv6 inside IPv4 (or ICMP inside IPv6) is not parsed as ICMP: it has no type to match
        cdef bint icmp = (proto == 1 and family == 4) or (proto == 58 and family == 6)
        for i in range(self._n_rules):
            r = &self._rules[i]
            if r.from_zone != sz or r.to_zone != dz:
                continue
            if r.proto != 0 and r.proto != proto:
                continue
            if r.src_net_n:
                ok = False
                for j in range(r.src_net0, r.src_net0 + r.src_net_n):
                    nt = &self._nets[j]
                    if in_net(s_hi, s_lo, nt.hi, nt.lo, nt.mhi, nt.mlo):
                        ok = True
                        break
                if not ok:
                    continue
            if r.dst_net_n:
                ok = False
                for j in range(r.dst_net0, r.dst_net0 + r.dst_net_n):
                    nt = &self._nets[j]
                    if in_net(d_hi, d_lo, nt.hi, nt.lo, nt.mhi, nt.mlo):
                        ok = True
                        break
                if not ok:
                    continue
            if r.sport_n:
                ok = False
                if ports:
                    for j in range(r.sport0, r.sport0 + r.sport_n):
                        pr = &self._ports[j]
                        if pr.lo <= sport <= pr.hi:
                            ok = True
                            break
                if not ok:
                    continue
            if r.dport_n:
                ok = False
                if ports:
                    for j in range(r.dport0, r.dport0 + r.dport_n):
                        pr = &self._ports[j]
                        if pr.lo <= dport <= pr.hi:
                            ok = True
                            break
                if not ok:
                    continue
            if r.icmp_n:
                # ICMP type travels in sport, as in events
                ok = False
                if icmp:
                    for j in range(r.icmp0, r.icmp0 + r.icmp_n):
                        if self._icmp_types[j] == sport:
                            ok = True
                            break
                if not ok:
                    continue
            verdict[0] = r.verdict
            return i
        if sz == dz and 0 <= sz < self._n_zones and self._zone_intra_allow[sz]:
            verdict[0] = ACCEPT
        else:
            verdict[0] = DROP
        return -1

    # --- flow table -----------------------------------------------------------------------------

    cdef inline int64_t _timeout(self, CFlow* f) noexcept nogil:
        if f.proto == 6:
            if f.tcp_state == TCP_SYN_SENT:
                return self._t_syn
            if f.tcp_state == TCP_ESTABLISHED:
                return self._t_est
            if f.tcp_state == TCP_CLOSING:
                return self._t_closing
            return self._t_closed
        if f.proto == 17:
            return self._t_udp
        if f.proto == 1 or f.proto == 58:
            return self._t_icmp
        return self._t_other

    cdef inline int32_t _find(self, uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                              uint32_t pa, uint32_t pb, uint32_t proto) noexcept nogil:
        cdef int32_t i = self._buckets[key_hash(a_hi, a_lo, b_hi, b_lo, pa, pb, proto) & self._bucket_mask]
        cdef CFlow* f
        while i >= 0:
            f = &self._flows[i]
            if (f.a_lo == a_lo and f.b_lo == b_lo and f.pa == pa and f.pb == pb and f.proto == proto
                    and f.a_hi == a_hi and f.b_hi == b_hi):
                return i
            i = f.hnext
        return -1

    cdef inline void _lru_unlink(self, int32_t i) noexcept nogil:
        cdef CFlow* f = &self._flows[i]
        if f.lru_prev >= 0:
            self._flows[f.lru_prev].lru_next = f.lru_next
        else:
            self._lru_head = f.lru_next
        if f.lru_next >= 0:
            self._flows[f.lru_next].lru_prev = f.lru_prev
        else:
            self._lru_tail = f.lru_prev

    cdef inline void _lru_push_mru(self, int32_t i) noexcept nogil:
        cdef CFlow* f = &self._flows[i]
        f.lru_next = -1
        f.lru_prev = self._lru_tail
        if self._lru_tail >= 0:
            self._flows[self._lru_tail].lru_next = i
        else:
            self._lru_head = i
        self._lru_tail = i

    cdef inline void _touch(self, int32_t i) noexcept nogil:
        # OrderedDict.move_to_end
        if self._lru_tail != i:
            self._lru_unlink(i)
            self._lru_push_mru(i)

    cdef void _remove(self, int32_t i) noexcept nogil:
        """Unlink slot i from its hash chain and the LRU list and put it on the free list."""
        cdef CFlow* f = &self._flows[i]
        cdef uint64_t b = key_hash(f.a_hi, f.a_lo, f.b_hi, f.b_lo, f.pa, f.pb, f.proto) & self._bucket_mask
        cdef int32_t j = self._buckets[b]
        cdef int32_t prev = -1
        while j >= 0 and j != i:
            prev = j
            j = self._flows[j].hnext
        if j == i:
            if prev >= 0:
                self._flows[prev].hnext = f.hnext
            else:
                self._buckets[b] = f.hnext
        self._lru_unlink(i)
        f.hnext = self._free_head
        self._free_head = i
        self._n_flows -= 1

    cdef int32_t _insert(self, uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                         uint32_t pa, uint32_t pb, uint32_t proto) noexcept nogil:
        """A new zeroed flow at the MRU end; evicts the least recently seen one when full."""
        cdef int32_t i
        cdef CFlow* f
        cdef uint64_t b
        if self._n_flows >= self._max_flows:
            self._remove(self._lru_head)  # OrderedDict.popitem(last=False)
            self._counters[C_FLOWS_EVICTED] += 1
        if self._free_head >= 0:
            i = self._free_head
            self._free_head = self._flows[i].hnext
        else:
            i = self._high_water
            self._high_water += 1
        f = &self._flows[i]
        b = key_hash(a_hi, a_lo, b_hi, b_lo, pa, pb, proto) & self._bucket_mask
        memset(f, 0, sizeof(CFlow))
        f.a_hi = a_hi
        f.a_lo = a_lo
        f.b_hi = b_hi
        f.b_lo = b_lo
        f.pa = pa
        f.pb = pb
        f.proto = proto
        f.hnext = self._buckets[b]
        self._buckets[b] = i
        self._lru_push_mru(i)
        self._n_flows += 1
        if <uint64_t>self._n_flows * 2 > self._bucket_mask + 1 and self._bucket_mask + 1 < self._max_buckets:
            self._grow()
        return i

    cdef void _grow(self) noexcept nogil:
        """Double the bucket array and rehash every flow (all of them are on the LRU list)."""
        cdef uint64_t nb = (self._bucket_mask + 1) * 2, k, b
        cdef int32_t* nbuckets = <int32_t*>malloc(nb * sizeof(int32_t))
        cdef int32_t i
        cdef CFlow* f
        if nbuckets == NULL:
            return  # keep the old array: longer chains, still correct
        for k in range(nb):
            nbuckets[k] = -1
        i = self._lru_head
        while i >= 0:
            f = &self._flows[i]
            b = key_hash(f.a_hi, f.a_lo, f.b_hi, f.b_lo, f.pa, f.pb, f.proto) & (nb - 1)
            f.hnext = nbuckets[b]
            nbuckets[b] = i
            i = f.lru_next
        free(self._buckets)
        self._buckets = nbuckets
        self._bucket_mask = nb - 1

    cdef inline int32_t _lookup(self, uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                                uint32_t pa, uint32_t pb, uint32_t proto, int64_t ts) noexcept nogil:
        """Find a flow; an entry idle past its state's timeout is removed (counted) and absent."""
        cdef int32_t fi = self._find(a_hi, a_lo, b_hi, b_lo, pa, pb, proto)
        if fi >= 0 and ts - self._flows[fi].last_us > self._timeout(&self._flows[fi]):
            self._remove(fi)
            self._counters[C_FLOWS_EXPIRED] += 1
            return -1
        return fi

    @property
    def flow_count(self):
        return self._n_flows

    def expire(self, int64_t now_us):
        """Remove every flow idle past its state's timeout; returns how many."""
        cdef int32_t i = self._lru_head, nxt
        cdef int64_t n = 0
        cdef CFlow* f
        while i >= 0:
            f = &self._flows[i]
            nxt = f.lru_next
            if now_us - f.last_us > self._timeout(f):
                self._remove(i)
                n += 1
            i = nxt
        self._counters[C_FLOWS_EXPIRED] += n
        return n

    # --- events / counters ----------------------------------------------------------------------

    def pop_events(self):
        events = self._events
        self._events = []
        return events

    def counters(self):
        cdef int i
        out = {}
        for i in range(C_DROP0):
            out[_COUNTER_NAMES[i]] = self._counters[i]
        for i in range(N_REASONS):
            out[_DROP_COUNTERS[i]] = self._counters[C_DROP0 + i]
        out["flows"] = self._n_flows
        return out

    cdef inline void _count(self, int verdict, int reason) noexcept nogil:
        # reference._count_packet
        self._counters[C_PACKETS] += 1
        if verdict == DROP:
            self._counters[C_DROPPED] += 1
            self._counters[C_DROP0 + reason] += 1
        elif verdict == ACCEPT:
            self._counters[C_ACCEPTED] += 1
        elif verdict == INSPECT:
            self._counters[C_INSPECTED] += 1
        else:
            self._counters[C_FRAGMENTS] += 1

    cdef inline void _set(self, CDecision* d, int verdict, int reason, int rule, int32_t sz, int32_t dz,
                          uint64_t fid) noexcept nogil:
        self._count(verdict, reason)
        d.verdict = verdict
        d.reason = reason
        d.rule = rule
        d.src_zone = sz
        d.dst_zone = dz
        d.flow_id = fid

    cdef int _event(self, int kind, int64_t ts, uint64_t fid, int family, uint64_t s_hi, uint64_t s_lo,
                    uint64_t d_hi, uint64_t d_lo, int sport, int dport, int proto, int32_t sz, int32_t dz,
                    int verdict, int rule, int reason) except -1:
        self._events.append(RawEvent(kind, ts, fid, family, u128(s_hi, s_lo), u128(d_hi, d_lo),
                                     sport, dport, proto, sz, dz, verdict, rule, reason))
        return 0

    cdef int _malformed(self, int64_t ts, CDecision* d) except -1:
        cdef int verdict = ACCEPT if self._malformed_accept else DROP
        self._set(d, verdict, R_MALFORMED, -1, -1, -1, 0)
        if verdict == ACCEPT:
            self._counters[C_MALFORMED_ACCEPTED] += 1
        self._events.append(RawEvent(EV_ANOMALY, ts, 0, 0, 0, 0, 0, 0, 0, -1, -1, verdict, -1, R_MALFORMED))
        return 0

    cdef int _drop(self, int kind, int64_t ts, CPacket* p, int32_t sz, int32_t dz, int reason,
                   CDecision* d) except -1:
        self._set(d, DROP, reason, -1, sz, dz, 0)
        self._event(kind, ts, 0, p.family, p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, p.sport, p.dport,
                    p.proto, sz, dz, DROP, -1, reason)
        return 0

    # --- the decision ---------------------------------------------------------------------------

    cdef int _decide_ip(self, const uint8_t* data, Py_ssize_t off, Py_ssize_t end, int64_t ts,
                        int32_t in_zone, int32_t out_zone, CDecision* d) except -1:
        """reference._decide_ip, with in_if/out_if already mapped to zones (-1: none/unknown)."""
        cdef CPacket p
        cdef int status, fl
        cdef int32_t sz, dz, prefix_zone, rule, fi, verdict
        cdef CFlow* f
        cdef bint src_is_a, from_initiator
        cdef uint64_t a_hi, a_lo, b_hi, b_lo
        cdef uint32_t pa, pb
        status = parse_ip(data, off, end, self._max_ext, &p, False)
        if status == ST_MALFORMED:
            return self._malformed(ts, d)
        if status == ST_FRAGMENT:
            self._set(d, FRAGMENT, R_FRAGMENT, -1, -1, -1, 0)
            return 0
        if status == ST_RH0:
            return self._drop(EV_ANOMALY, ts, &p, -1, -1, R_IPV6_RH0, d)

        # zones: the input interface is authoritative when known; the source prefix must agree
        sz = in_zone
        prefix_zone = self._zone_of(p.src_hi, p.src_lo)
        dz = self._zone_of(p.dst_hi, p.dst_lo)
        if dz < 0:
            dz = out_zone
        if sz >= 0:
            if prefix_zone >= 0 and prefix_zone != sz:
                return self._drop(EV_ANOMALY, ts, &p, sz, dz, R_ZONE_MISMATCH, d)
        else:
            sz = prefix_zone
        if sz < 0 or dz < 0:
            return self._drop(EV_DROP, ts, &p, sz, dz, R_UNKNOWN_ZONE, d)

        fl = p.flags
        if p.proto == 6 and (
                (fl & (TH_SYN | TH_FIN)) == (TH_SYN | TH_FIN)
                or (fl & (TH_SYN | TH_RST)) == (TH_SYN | TH_RST)
                or fl == 0
                or (fl & (TH_FIN | TH_ACK)) == TH_FIN):
            return self._drop(EV_ANOMALY, ts, &p, sz, dz, R_BAD_TCP_FLAGS, d)

        if p.type == PT_ERROR:
            return self._related(data, &p, ts, sz, dz, d)

        src_is_a = flow_key(&p, &a_hi, &a_lo, &b_hi, &b_lo, &pa, &pb)
        fi = self._lookup(a_hi, a_lo, b_hi, b_lo, pa, pb, p.proto, ts)
        if fi >= 0:
            f = &self._flows[fi]
            from_initiator = (src_is_a == f.a_is_initiator) or (a_hi == b_hi and a_lo == b_lo and pa == pb)
            if (p.proto == 6 and (fl & TH_SYN) and not (fl & TH_ACK) and from_initiator
                    and f.tcp_state >= TCP_CLOSING):
                # port reuse after close: a new connection replaces the old flow
                self._remove(fi)
                fi = -1
            if fi >= 0:
                self._touch(fi)
                if ts > f.last_us:
                    f.last_us = ts
                if p.proto == 6:
                    tcp_track(f, fl, from_initiator)
                if f.generation != self._generation:
                    self._redecide(f, &p, ts, sz, dz, from_initiator)
                    self._set(d, f.verdict, R_RULE, f.rule, sz, dz, f.flow_id)
                    return 0
                self._set(d, f.verdict, R_FLOW, f.rule, sz, dz, f.flow_id)
                return 0

        if p.proto == 6 and (fl & (TH_SYN | TH_ACK)) != TH_SYN:
            return self._drop(EV_DROP, ts, &p, sz, dz, R_NO_FLOW, d)

        rule = self._match(p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, p.sport, p.dport, p.proto, p.family, sz, dz,
                           &verdict)
        fi = self._insert(a_hi, a_lo, b_hi, b_lo, pa, pb, p.proto)
        f = &self._flows[fi]
        f.verdict = verdict
        f.rule = rule
        f.src_zone = sz
        f.dst_zone = dz
        f.a_is_initiator = src_is_a
        f.last_us = ts
        f.generation = self._generation
        if p.proto == 1 or p.proto == 58:
            f.first_type = p.sport
            f.first_code = p.dport
        f.flow_id = flow_id_c(a_hi, a_lo, b_hi, b_lo, pa, pb, p.proto, flow_tag_c(data, &p))
        self._counters[C_FLOWS_CREATED] += 1
        self._set(d, verdict, R_RULE, rule, sz, dz, f.flow_id)
        self._event(EV_FLOW, ts, f.flow_id, p.family, p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, p.sport, p.dport,
                    p.proto, sz, dz, verdict, rule, R_RULE)
        return 0

    cdef int _redecide(self, CFlow* f, CPacket* p, int64_t ts, int32_t sz, int32_t dz,
                       bint from_initiator) except -1:
        """Decide an existing flow again after a reload, from its initiator's side."""
        cdef uint64_t s_hi, s_lo, d_hi, d_lo
        cdef int32_t isport, idport, t, verdict
        if f.a_is_initiator:
            s_hi = f.a_hi; s_lo = f.a_lo; d_hi = f.b_hi; d_lo = f.b_lo; isport = f.pa; idport = f.pb
        else:
            s_hi = f.b_hi; s_lo = f.b_lo; d_hi = f.a_hi; d_lo = f.a_lo; isport = f.pb; idport = f.pa
        if not from_initiator:
            t = sz
            sz = dz
            dz = t
        if f.proto == 1 or f.proto == 58:
            isport = f.first_type
            idport = f.first_code
        f.rule = self._match(s_hi, s_lo, d_hi, d_lo, isport, idport, f.proto, p.family, sz, dz, &verdict)
        f.verdict = verdict
        f.src_zone = sz
        f.dst_zone = dz
        f.generation = self._generation
        self._counters[C_FLOWS_REDECIDED] += 1
        self._event(EV_FLOW, ts, f.flow_id, p.family, s_hi, s_lo, d_hi, d_lo, isport, idport, f.proto,
                    sz, dz, f.verdict, f.rule, R_RULE)
        return 0

    cdef int _related(self, const uint8_t* data, CPacket* p, int64_t ts, int32_t sz, int32_t dz,
                      CDecision* d) except -1:
        """ICMP error: pass it only if it quotes a packet of a known, not denied flow."""
        cdef CPacket q
        cdef int status
        cdef int32_t fi
        cdef uint64_t a_hi, a_lo, b_hi, b_lo
        cdef uint32_t pa, pb
        cdef CFlow* f
        status = parse_ip(data, p.inner_off, p.inner_end, self._max_ext, &q, True)
        if status == ST_OK and q.family == p.family:
            flow_key(&q, &a_hi, &a_lo, &b_hi, &b_lo, &pa, &pb)
            fi = self._lookup(a_hi, a_lo, b_hi, b_lo, pa, pb, q.proto, ts)
            if fi >= 0 and self._flows[fi].verdict != DROP:
                f = &self._flows[fi]
                self._set(d, ACCEPT, R_RELATED, f.rule, sz, dz, f.flow_id)
                return 0
        return self._drop(EV_DROP, ts, p, sz, dz, R_ICMP_NO_FLOW, d)

    # --- public entry points --------------------------------------------------------------------

    def decide(self, packet, int64_t ts_us, in_if=None, out_if=None):
        """Decide one IP packet (no link header). Never raises on malformed input."""
        cdef const uint8_t[::1] view
        cdef const uint8_t* data = NULL
        cdef Py_ssize_t n = 0
        cdef CDecision d
        cdef int32_t in_zone = -1, out_zone = -1
        if type(packet) is bytes:
            n = len(<bytes>packet)
            data = <const uint8_t*><char*>(<bytes>packet)
        else:
            view = memoryview(packet).cast("B")
            n = view.shape[0]
            if n:
                data = &view[0]
        if in_if is not None:
            in_zone = self._interfaces.get(in_if, -1)
        if out_if is not None:
            out_zone = self._interfaces.get(out_if, -1)
        self._decide_ip(data, 0, n, ts_us, in_zone, out_zone, &d)
        # tuple.__new__ directly: the namedtuple's own __new__ is a Python function (3x slower)
        return _tuple_new(Decision, (d.verdict, d.reason, d.rule, d.src_zone, d.dst_zone, d.flow_id))

    def decide_frames(self, buf, const long long[::1] offsets, const long long[::1] lengths,
                      const long long[::1] ts_us, int linktype, unsigned char[::1] out, Py_ssize_t start=0):
        """Decide frames start.. of a batch (pcap records in one buffer); out[i] = verdict of frame i.

        Returns the index after the last frame decided: all of them, or stops right after a
        FRAGMENT (see reference.Engine.decide_frames). Frames whose link layer is not IPv4/IPv6
        get DROP, reason non_ip, and no event.
        """
        cdef const uint8_t[::1] view = memoryview(buf).cast("B")
        cdef const uint8_t* data = &view[0] if view.shape[0] > 0 else NULL
        cdef Py_ssize_t total = view.shape[0]
        cdef Py_ssize_t i, nframes = offsets.shape[0], begin, end, ip
        cdef CDecision d
        if not (linktype == 0 or linktype == 1 or linktype == 101 or linktype == 113 or linktype == 228
                or linktype == 229 or linktype == 276):
            raise ValueError(f"unsupported link type {linktype}")
        if lengths.shape[0] < nframes or ts_us.shape[0] < nframes or out.shape[0] < nframes:
            raise ValueError("decide_frames: lengths, ts_us and out must cover every offset")
        # Frame bounds come from the caller (scan_pcap_records), not from the packets: check them
        # all before deciding anything, so a caller bug is an error and never a read past buf.
        for i in range(nframes):
            if offsets[i] < 0 or lengths[i] < 0 or offsets[i] + lengths[i] > total:
                raise ValueError(f"decide_frames: frame {i} lies outside the buffer")
        for i in range(start, nframes):
            begin = offsets[i]
            end = begin + lengths[i]
            # In a big capture each frame's headers are a cache miss; ask for a later frame's now
            # so the memory latency overlaps with deciding this one.
            if i + PREFETCH_AHEAD < nframes:
                LG_PREFETCH(data + offsets[i + PREFETCH_AHEAD])
                LG_PREFETCH(data + offsets[i + PREFETCH_AHEAD] + 63)
            ip = ip_offset(data, begin, end, linktype)
            if ip == -2:
                self._count(DROP, R_NON_IP)
                out[i] = DROP
            elif ip < 0:
                self._malformed(ts_us[i], &d)
                out[i] = d.verdict
            else:
                self._decide_ip(data, ip, end, ts_us[i], -1, -1, &d)
                out[i] = d.verdict
                if d.verdict == FRAGMENT:
                    return i + 1
        return nframes


cdef inline void tcp_track(CFlow* f, int fl, bint from_initiator) noexcept nogil:
    # reference._tcp_track
    if fl & TH_RST:
        f.tcp_state = TCP_CLOSED
        return
    if f.tcp_state == TCP_CLOSED:  # closed stays closed (a late FIN must not reopen it)
        return
    if (fl & TH_SYN) and (fl & TH_ACK) and not from_initiator and f.tcp_state == TCP_SYN_SENT:
        f.tcp_state = TCP_ESTABLISHED
    if fl & TH_FIN:
        f.fin_mask |= 1 if from_initiator else 2
        f.tcp_state = TCP_CLOSED if f.fin_mask == 3 else TCP_CLOSING


# --- Internet checksum for the mail inspector's rewritten packets ---------------------------------
cdef uint64_t _ones_sum(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """Ones' complement sum (unfolded) of `n` bytes as 16-bit words read in the machine's byte
    order, a trailing odd byte padded with zero. The sum is byte-order independent up to one
    final swap (RFC 1071 2.B), so 32-bit native loads serve: 4 bytes per add, not 2."""
    cdef uint64_t s = 0
    cdef uint32_t w32
    cdef uint16_t w16
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        memcpy(&w32, p + i, 4)
        s += w32
        i += 4
    if i + 2 <= n:
        memcpy(&w16, p + i, 2)
        s += w16
        i += 2
    if i < n:
        w16 = 0
        memcpy(&w16, p + i, 1)
        s += w16
    return s


cdef uint16_t _fold_checksum(uint64_t s) noexcept nogil:
    """The big-endian Internet checksum from a native-order `_ones_sum`."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    cdef uint16_t native = <uint16_t>s
    cdef unsigned char b[2]
    memcpy(b, &native, 2)
    return <uint16_t>(~((<uint16_t>b[0] << 8) | b[1]) & 0xFFFF)


def inet_checksum(const unsigned char[::1] data):
    """Internet checksum (RFC 1071) of `data`, as a big-endian 16-bit value.

    The compiled twin of gateway.inspect.packet._checksum_py (the specification; tests compare
    both): every neutralized 64 KiB GSO packet needs one, and the Python version is a bignum."""
    cdef Py_ssize_t n = data.shape[0]
    cdef uint64_t s
    if n == 0:
        return 0xFFFF
    with nogil:
        s = _ones_sum(&data[0], n)
    return _fold_checksum(s)


def tcp_with_payload(bytes pkt, Py_ssize_t tcp_offset, Py_ssize_t payload_offset, bytes payload, bytes pseudo):
    """`pkt` with `payload` (same length) at `payload_offset` and the TCP checksum (at
    tcp_offset + 16) recomputed over `pseudo` (the pseudo header: even length) and the segment.

    The compiled twin of gateway.inspect.packet._with_payload_py (the specification; tests
    compare both): one copy of the packet instead of five, for every neutralized GSO packet."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(pkt)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t end = payload_offset + plen
    if (
        tcp_offset < 0 or tcp_offset + 18 > payload_offset or end > n
        or PyBytes_GET_SIZE(pseudo) % 2
    ):
        raise ValueError("payload or TCP header outside the packet, or an odd pseudo header")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char *o = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *src = <const unsigned char *>PyBytes_AS_STRING(pkt)
    cdef const unsigned char *pl = <const unsigned char *>PyBytes_AS_STRING(payload)
    cdef const unsigned char *ph = <const unsigned char *>PyBytes_AS_STRING(pseudo)
    cdef Py_ssize_t phlen = PyBytes_GET_SIZE(pseudo)
    cdef uint16_t csum
    with nogil:
        memcpy(o, src, payload_offset)
        memcpy(o + payload_offset, pl, plen)
        memcpy(o + end, src + end, n - end)
        o[tcp_offset + 16] = 0
        o[tcp_offset + 17] = 0
        csum = _fold_checksum(_ones_sum(ph, phlen) + _ones_sum(o + tcp_offset, end - tcp_offset))
        o[tcp_offset + 16] = csum >> 8
        o[tcp_offset + 17] = csum & 0xFF
    return out


# --- byte scans of the mail path (twins of gateway/bytescan.py, the specification) ------------------
from cpython.object cimport PyObject


cdef extern from "Python.h":
    # the raw C API (no reference counting by Cython): a bytes object is filled, then shrunk
    PyObject *LG_BytesNew "PyBytes_FromStringAndSize"(const char *, Py_ssize_t)
    char *LG_BytesData "PyBytes_AS_STRING"(PyObject *)
    int LG_BytesResize "_PyBytes_Resize"(PyObject **, Py_ssize_t)
    void LG_DECREF "Py_DECREF"(PyObject *)

cdef unsigned char _B64_VALUE[256]  # 0..63 alphabet, 64 whitespace (skipped), 255 anything else


cdef void _init_b64() noexcept:
    cdef int i
    cdef bytes alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in range(256):
        _B64_VALUE[i] = 255
    for i in range(64):
        _B64_VALUE[<unsigned char>alphabet[i]] = i
    for i in (0x20, 0x09, 0x0D, 0x0A):
        _B64_VALUE[i] = 64


_init_b64()


def bare_eol(bytes data):
    """Does `data` hold a CR that does not start a CRLF or an LF that does not end one?

    Twin of gateway.bytescan.bare_eol_py (tests compare both): one pass, no copy. The inner loop
    is comparisons ORed over a block (no branch per byte, no table), which the compiler turns
    into SIMD; the block is tested once."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t i, start = 1, stop
    cdef unsigned char bad = 0
    if n == 0:
        return False
    # the ends: a CR last has no LF after it, an LF first no CR before it; and the loop below
    # skips them, so also a CR first without an LF after it and an LF last without a CR before
    if p[n - 1] == 0x0D or p[0] == 0x0A:
        return True
    if n > 1 and ((p[0] == 0x0D and p[1] != 0x0A) or (p[n - 1] == 0x0A and p[n - 2] != 0x0D)):
        return True
    with nogil:
        # i in 1 .. n-2 here (the ends are done): p[i - 1] and p[i + 1] exist
        while start < n - 1 and bad == 0:
            stop = start + 4096 if start + 4096 < n - 1 else n - 1
            for i in range(start, stop):
                bad |= ((p[i] == 0x0D) & (p[i + 1] != 0x0A)) | ((p[i] == 0x0A) & (p[i - 1] != 0x0D))
            start = stop
    return bad != 0


def eol_layout_equal(bytes old, bytes new):
    """Do two same-length strings have their CR and LF bytes at the same places (and no others)?

    Twin of gateway.bytescan.eol_layout_equal_py."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(old)
    if PyBytes_GET_SIZE(new) != n:
        return False
    cdef const unsigned char *a = <const unsigned char *>PyBytes_AS_STRING(old)
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(new)
    cdef Py_ssize_t i, start = 0, stop
    cdef unsigned char diff = 0
    with nogil:
        # branch-free: a rewrite differs from its original almost everywhere, so a test per
        # differing byte would be a mispredicted branch per byte; OR the differences of a block
        # of bytes together and test once per block. Comparisons, not a table lookup, so the
        # compiler vectorizes the loop.
        while start < n and diff == 0:
            stop = start + 4096 if start + 4096 < n else n
            for i in range(start, stop):
                diff |= ((a[i] == 0x0D) ^ (b[i] == 0x0D)) | ((a[i] == 0x0A) ^ (b[i] == 0x0A))
            start = stop
    return diff == 0


def b64_decode_plain(bytes carry, bytes data):
    """(decoded, carry) of base64 text `carry + data` holding only alphabet and whitespace:
    every complete quantum decoded, the < 4 alphabet characters after them returned as the new
    carry. None when `data` holds "=" or any other byte (the caller's general path decides then).

    Twin of gateway.bytescan.b64_decode_plain_py; `carry` is < 4 alphabet characters."""
    cdef Py_ssize_t nc = PyBytes_GET_SIZE(carry)
    cdef Py_ssize_t nd = PyBytes_GET_SIZE(data)
    cdef const unsigned char *c = <const unsigned char *>PyBytes_AS_STRING(carry)
    cdef const unsigned char *d = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t i, written = 0
    cdef bint bad = nc > 3
    for i in range(nc if not bad else 0):
        bad = bad or _B64_VALUE[c[i]] >= 64
    if bad:
        raise ValueError("carry must be fewer than 4 base64 alphabet characters")
    # one pass: the output is sized for no whitespace and shrunk in place at the end
    cdef PyObject *raw = LG_BytesNew(NULL, ((nc + nd) // 4) * 3)
    if raw == NULL:
        raise MemoryError()
    cdef unsigned char *o = <unsigned char *>LG_BytesData(raw)
    cdef unsigned char v0, v1, v2, v3
    cdef int k = 0
    cdef uint32_t q = 0
    for i in range(nc):
        q = (q << 6) | (_B64_VALUE[c[i]] & 63)
        k += 1
    i = 0
    with nogil:
        while i < nd:
            if k == 0 and i + 4 <= nd:
                # a whole quantum at once (base64 lines are whole quanta: the usual case)
                v0 = _B64_VALUE[d[i]]
                v1 = _B64_VALUE[d[i + 1]]
                v2 = _B64_VALUE[d[i + 2]]
                v3 = _B64_VALUE[d[i + 3]]
                if (v0 | v1 | v2 | v3) < 64:
                    q = (<uint32_t>v0 << 18) | (<uint32_t>v1 << 12) | (<uint32_t>v2 << 6) | v3
                    o[written] = <unsigned char>(q >> 16)
                    o[written + 1] = <unsigned char>(q >> 8)
                    o[written + 2] = <unsigned char>q
                    written += 3
                    i += 4
                    continue
            v0 = _B64_VALUE[d[i]]
            i += 1
            if v0 < 64:
                q = (q << 6) | v0
                k += 1
                if k == 4:
                    o[written] = <unsigned char>(q >> 16)
                    o[written + 1] = <unsigned char>(q >> 8)
                    o[written + 2] = <unsigned char>q
                    written += 3
                    k = 0
                    q = 0
            elif v0 == 255:
                bad = True
                break
    if bad:
        LG_DECREF(raw)
        return None
    if LG_BytesResize(&raw, written) < 0:  # frees the object and sets raw = NULL on failure
        raise MemoryError()
    cdef object out = <object>raw  # `out` takes a reference of its own ...
    LG_DECREF(raw)  # ... so the one LG_BytesNew made is dropped
    # the new carry: the last k alphabet characters (of data, then of the old carry)
    cdef unsigned char pending[4]
    cdef int left = k
    i = nd - 1
    while left > 0 and i >= 0:
        if _B64_VALUE[d[i]] < 64:
            left -= 1
            pending[left] = d[i]
        i -= 1
    i = nc - 1
    while left > 0:
        left -= 1
        pending[left] = c[i]
        i -= 1
    return out, PyBytes_FromStringAndSize(<char *>pending, k)

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
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

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
    #define LG_V4_MAPPED_LO_PREFIX 0xFFFF00000000ULL
    #define LG_FNV_OFFSET 0xCBF29CE484222325ULL
    #define LG_FNV_PRIME 0x100000001B3ULL
    #define LG_FLOW_ID_MASK 0xFFFFFFFFFFFFFULL
    """
    const uint64_t LG_V4_MAPPED_LO_PREFIX
    const uint64_t LG_FNV_OFFSET
    const uint64_t LG_FNV_PRIME
    const uint64_t LG_FLOW_ID_MASK

# Kept as C constants (mirrors of gateway.fastpath.common) so the hot path never looks up a name.
cdef enum:
    DROP = 0
    ACCEPT = 1
    INSPECT = 2
    FRAGMENT = 3

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

# what kind of ICMP message a packet is
cdef enum:
    ICMPK_NONE = 0   # not ICMP, or an ICMP type that is neither echo nor error
    ICMPK_ECHO = 1
    ICMPK_ERROR = 2

# counter slots; the drop_<reason> counters follow at C_DROP0 + reason
cdef enum:
    C_PACKETS = 0
    C_ACCEPTED = 1
    C_DROPPED = 2
    C_INSPECTED = 3
    C_FRAGMENTS = 4
    C_FLOWS_CREATED = 5
    C_FLOWS_EXPIRED = 6
    C_FLOWS_EVICTED = 7
    C_FLOWS_REDECIDED = 8
    C_NON_IP = 9
    C_DROP0 = 10
    N_COUNTERS = 24

cdef enum:
    V4_MAPPED_HI = 0   # high half of an IPv4-mapped address; the low half is LG_V4_MAPPED_LO_PREFIX | v4


_REASONS = (
    "rule", "flow", "related", "malformed", "unknown_zone", "zone_mismatch", "no_flow",
    "bad_tcp_flags", "icmp_no_flow", "fragment", "fragment_overlap", "fragment_limit", "ipv6_rh0",
    "non_ip",
)
_COUNTER_NAMES = (
    "packets", "accepted", "dropped", "inspected", "fragments", "flows_created", "flows_expired",
    "flows_evicted", "flows_redecided", "non_ip",
)

_M64 = (1 << 64) - 1


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
                               uint32_t pa, uint32_t pb, uint32_t proto, int64_t start_us) noexcept nogil:
    # common.flow_id_for over the same byte layout: a(16) b(16) pa(2) pb(2) proto(1) start(8, signed)
    cdef uint64_t h = LG_FNV_OFFSET
    h = fnv_bytes(h, a_hi, 8)
    h = fnv_bytes(h, a_lo, 8)
    h = fnv_bytes(h, b_hi, 8)
    h = fnv_bytes(h, b_lo, 8)
    h = fnv_bytes(h, pa, 2)
    h = fnv_bytes(h, pb, 2)
    h = fnv_bytes(h, proto, 1)
    h = fnv_bytes(h, <uint64_t>start_us, 8)  # two's complement == to_bytes(signed=True)
    return h & LG_FLOW_ID_MASK


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

cdef inline bint is_icmp_echo(int proto, int t) noexcept nogil:
    if proto == 1:
        return t == 8 or t == 0
    return t == 128 or t == 129


cdef inline bint is_icmp_error(int proto, int t) noexcept nogil:
    if proto == 1:
        return t == 3 or t == 4 or t == 5 or t == 11 or t == 12
    return 1 <= t <= 4


cdef inline bint is_ext_header(int nh) noexcept nogil:
    return nh == 0 or nh == 43 or nh == 60 or nh == 44 or nh == 51 or nh == 135


cdef int parse_embedded(const uint8_t* p, Py_ssize_t n, int icmp_proto, CPacket* pk) noexcept nogil:
    """The packet quoted by an ICMP error: IP header + at least the first 8 bytes of its L4 header.

    Returns ST_OK or ST_MALFORMED; fills the e_* fields (flow-key ports as for a real packet).
    """
    cdef int ihl, v, proto, t
    cdef const uint8_t* l4
    cdef Py_ssize_t l4n
    if n < 1:
        return ST_MALFORMED
    v = p[0] >> 4
    if icmp_proto == 1:
        if v != 4 or n < 20:
            return ST_MALFORMED
        ihl = (p[0] & 15) * 4
        if ihl < 20 or n < ihl:
            return ST_MALFORMED
        pk.e_src_hi = V4_MAPPED_HI
        pk.e_src_lo = LG_V4_MAPPED_LO_PREFIX | be32(p + 12)
        pk.e_dst_hi = V4_MAPPED_HI
        pk.e_dst_lo = LG_V4_MAPPED_LO_PREFIX | be32(p + 16)
        proto = p[9]
        l4 = p + ihl
        l4n = n - ihl
    else:
        if v != 6 or n < 40:
            return ST_MALFORMED
        pk.e_src_hi = be64(p + 8)
        pk.e_src_lo = be64(p + 16)
        pk.e_dst_hi = be64(p + 24)
        pk.e_dst_lo = be64(p + 32)
        proto = p[6]
        l4 = p + 40
        l4n = n - 40
    pk.e_proto = proto
    pk.e_kport_s = 0
    pk.e_kport_d = 0
    if proto == 6 or proto == 17:
        if l4n < 8:
            return ST_MALFORMED
        pk.e_kport_s = be16(l4)
        pk.e_kport_d = be16(l4 + 2)
    elif proto == 1 or proto == 58:
        if l4n < 8:
            return ST_MALFORMED
        t = l4[0]
        if is_icmp_echo(proto, t):
            pk.e_kport_s = be16(l4 + 4)
            pk.e_kport_d = pk.e_kport_s
    return ST_OK


cdef int parse_ip(const uint8_t* p, Py_ssize_t n, int max_ext, CPacket* pk) noexcept nogil:
    """Parse one IP packet (design.md "Per packet", step 1) into pk. Returns an ST_* code."""
    cdef int v, ihl, proto, nh, count, frag, t, hl, doff
    cdef uint32_t tot, plen
    cdef Py_ssize_t off, end
    cdef const uint8_t* l4
    cdef Py_ssize_t l4n
    memset(pk, 0, sizeof(CPacket))
    if n < 1:
        return ST_MALFORMED
    v = p[0] >> 4
    if v == 4:
        if n < 20:
            return ST_MALFORMED
        ihl = (p[0] & 15) * 4
        if ihl < 20:
            return ST_MALFORMED
        tot = be16(p + 2)
        if tot < <uint32_t>ihl or tot > <uint64_t>n:
            return ST_MALFORMED
        pk.family = 4
        pk.src_hi = V4_MAPPED_HI
        pk.src_lo = LG_V4_MAPPED_LO_PREFIX | be32(p + 12)
        pk.dst_hi = V4_MAPPED_HI
        pk.dst_lo = LG_V4_MAPPED_LO_PREFIX | be32(p + 16)
        proto = p[9]
        pk.proto = proto
        frag = be16(p + 6)
        if frag & 0x3FFF:  # MF or a non-zero offset (DF alone is fine)
            return ST_FRAGMENT
        l4 = p + ihl
        l4n = tot - ihl
    elif v == 6:
        if n < 40:
            return ST_MALFORMED
        plen = be16(p + 4)
        if 40 + <uint64_t>plen > <uint64_t>n:
            return ST_MALFORMED
        pk.family = 6
        pk.src_hi = be64(p + 8)
        pk.src_lo = be64(p + 16)
        pk.dst_hi = be64(p + 24)
        pk.dst_lo = be64(p + 32)
        nh = p[6]
        off = 40
        end = 40 + plen
        count = 0
        while is_ext_header(nh):
            count += 1
            if count > max_ext:
                pk.proto = nh
                return ST_MALFORMED
            if nh == 44:
                if off + 8 > end:
                    pk.proto = nh
                    return ST_MALFORMED
                frag = be16(p + off + 2)
                if (frag & 0xFFF8) or (frag & 1):
                    pk.proto = p[off]
                    return ST_FRAGMENT
                nh = p[off]
                off += 8
                continue
            if off + 2 > end:
                pk.proto = nh
                return ST_MALFORMED
            if nh == 51:
                hl = (p[off + 1] + 2) * 4
            else:
                hl = (p[off + 1] + 1) * 8
            if off + hl > end:
                pk.proto = nh
                return ST_MALFORMED
            if nh == 43 and p[off + 2] == 0:
                pk.proto = nh
                return ST_RH0
            nh = p[off]
            off += hl
        proto = nh
        pk.proto = proto
        l4 = p + off
        l4n = end - off
    else:
        return ST_MALFORMED

    if proto == 6:
        if l4n < 20:
            return ST_MALFORMED
        doff = (l4[12] >> 4) * 4
        if doff < 20 or doff > l4n:
            return ST_MALFORMED
        pk.sport = be16(l4)
        pk.dport = be16(l4 + 2)
        pk.kport_s = pk.sport
        pk.kport_d = pk.dport
        pk.tcp_flags = l4[13]
    elif proto == 17:
        if l4n < 8:
            return ST_MALFORMED
        pk.sport = be16(l4)
        pk.dport = be16(l4 + 2)
        pk.kport_s = pk.sport
        pk.kport_d = pk.dport
    elif proto == 1 or proto == 58:
        if l4n < 4:
            return ST_MALFORMED
        t = l4[0]
        pk.sport = t
        pk.dport = l4[1]
        pk.icmp_type = t
        if is_icmp_echo(proto, t):
            if l4n < 8:
                return ST_MALFORMED
            pk.icmp_kind = ICMPK_ECHO
            pk.kport_s = be16(l4 + 4)
            pk.kport_d = pk.kport_s
        elif is_icmp_error(proto, t):
            pk.icmp_kind = ICMPK_ERROR
            if l4n < 8:
                return ST_MALFORMED
            return parse_embedded(l4 + 8, l4n - 8, proto, pk)
    return ST_OK


# --- link layer ------------------------------------------------------------------------------------

cdef inline Py_ssize_t link_strip(const uint8_t* p, Py_ssize_t n, int linktype) noexcept nogil:
    """Offset of the IP header inside a frame, or -1 when the frame is not IPv4/IPv6."""
    cdef Py_ssize_t off
    cdef uint32_t et, fam
    if linktype == 1:  # Ethernet, any number of 802.1Q / 802.1ad / QinQ tags
        if n < 14:
            return -1
        et = be16(p + 12)
        off = 14
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if off + 4 > n:
                return -1
            et = be16(p + off + 2)
            off += 4
        if et == 0x0800 or et == 0x86DD:
            return off
        return -1
    if linktype == 101 or linktype == 228 or linktype == 229:
        return 0
    if linktype == 113:  # Linux cooked v1: protocol at 14
        if n < 16:
            return -1
        et = be16(p + 14)
        if et == 0x0800 or et == 0x86DD:
            return 16
        return -1
    if linktype == 276:  # Linux cooked v2: protocol at 0
        if n < 20:
            return -1
        et = be16(p)
        if et == 0x0800 or et == 0x86DD:
            return 20
        return -1
    if linktype == 0:  # BSD loopback: AF_ value in the capturing host's byte order
        if n < 4:
            return -1
        fam = le32(p)
        if fam > 0xFFFF:
            fam = be32(p)
        if fam == 2 or fam == 10 or fam == 24 or fam == 28 or fam == 30:
            return 4
        return -1
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
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t count = 0, i, base
    cdef uint32_t sec, frac, incl, orig
    if pos < 0:
        pos = 0
    # pass 1: count complete records, so each array is resized once
    while pos + 16 <= n:
        incl = be32(p + pos + 8) if swapped else le32(p + pos + 8)
        if pos + 16 + <Py_ssize_t>incl > n:
            break
        pos += 16 + incl
        count += 1
    if count == 0:
        return pos
    for a in (offsets, lengths, ts_us, orig_lengths):
        if a.typecode != "q":
            raise TypeError("scan_pcap_records needs array('q') outputs")
    base = len(offsets)
    array.resize_smart(offsets, base + count)
    array.resize_smart(lengths, len(lengths) + count)
    array.resize_smart(ts_us, len(ts_us) + count)
    array.resize_smart(orig_lengths, len(orig_lengths) + count)
    cdef long long* o = offsets.data.as_longlongs + base
    cdef long long* ln = lengths.data.as_longlongs + (len(lengths) - count)
    cdef long long* ts = ts_us.data.as_longlongs + (len(ts_us) - count)
    cdef long long* ol = orig_lengths.data.as_longlongs + (len(orig_lengths) - count)
    pos = start if start > 0 else 0
    for i in range(count):
        if swapped:
            sec = be32(p + pos)
            frac = be32(p + pos + 4)
            incl = be32(p + pos + 8)
            orig = be32(p + pos + 12)
        else:
            sec = le32(p + pos)
            frac = le32(p + pos + 4)
            incl = le32(p + pos + 8)
            orig = le32(p + pos + 12)
        o[i] = pos + 16
        ln[i] = incl
        ts[i] = <long long>sec * 1000000 + (frac // 1000 if nanosecond else frac)
        ol[i] = orig
        pos += 16 + incl
    return pos


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
    mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
    net = net & mask
    hi[0] = (net >> 64) & _M64
    lo[0] = net & _M64
    mhi[0] = (mask >> 64) & _M64
    mlo[0] = mask & _M64


cdef class Engine:
    """Compiled per-packet engine; see reference.Engine for the semantics (they are the spec)."""

    cdef object _policy
    cdef object _limits
    cdef dict _ifaces
    cdef list _events
    cdef int64_t _generation
    cdef bint _malformed_accept

    # compiled policy
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

    # flow table
    cdef CFlow* _flows
    cdef int32_t* _buckets
    cdef uint64_t _bucket_mask
    cdef int32_t _free_head
    cdef int32_t _high_water
    cdef int32_t _lru_head    # least recently seen
    cdef int32_t _lru_tail    # most recently seen
    cdef int64_t _n_flows

    cdef int64_t _counters[32]

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
        if limits is None:
            limits = Limits()
        self._limits = limits
        self._max_flows = max(1, int(limits.max_flows))
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
        # One slab for all flows; calloc'ed so pages never touched cost nothing.
        self._flows = <CFlow*>calloc(self._max_flows, sizeof(CFlow))
        nb = 16
        while nb < <uint64_t>self._max_flows * 2:
            nb <<= 1
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
        self.set_policy(policy)

    def __dealloc__(self):
        self._free_policy()
        free(self._flows)
        free(self._buckets)

    cdef void _free_policy(self):
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
        """Compile a CompiledPolicy snapshot into C arrays; flows keep their state."""
        cdef int32_t i, j, nn = 0, npr = 0, ni = 0
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
        if not (cp and cr and cn and cpr and ci and cz):
            free(cp); free(cr); free(cn); free(cpr); free(ci); free(cz)
            raise MemoryError()
        try:
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
                # action -> verdict: deny 0 -> DROP 0, allow 1 -> ACCEPT 1, inspect 2 -> INSPECT 2
                r.verdict = rs.action
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
            free(cp); free(cr); free(cn); free(cpr); free(ci); free(cz)
            raise
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
        self._ifaces = dict(policy.interfaces)
        self._generation = policy.generation
        self._malformed_accept = bool(policy.malformed_accept)
        self._policy = policy

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
            if (hi & p.mhi) == p.hi and (lo & p.mlo) == p.lo:
                return p.zone
        return -1

    cdef int32_t _match_rules(self, int32_t sz, int32_t dz, int proto,
                              uint64_t s_hi, uint64_t s_lo, uint64_t d_hi, uint64_t d_lo,
                              int sport, int dport, int icmp_type, bint has_ports,
                              int32_t* verdict) noexcept nogil:
        """First matching rule index (verdict in *verdict), or -1 with the zone default."""
        cdef int32_t i, j
        cdef CRule* r
        cdef CNet* nt
        cdef CPortRange* pr
        cdef bint ok
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
                if not has_ports:
                    continue
                ok = False
                for j in range(r.sport0, r.sport0 + r.sport_n):
                    pr = &self._ports[j]
                    if pr.lo <= sport <= pr.hi:
                        ok = True
                        break
                if not ok:
                    continue
            if r.dport_n:
                if not has_ports:
                    continue
                ok = False
                for j in range(r.dport0, r.dport0 + r.dport_n):
                    pr = &self._ports[j]
                    if pr.lo <= dport <= pr.hi:
                        ok = True
                        break
                if not ok:
                    continue
            if r.icmp_n:
                if icmp_type < 0:
                    continue
                ok = False
                for j in range(r.icmp0, r.icmp0 + r.icmp_n):
                    if self._icmp_types[j] == icmp_type:
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
        f.in_use = 0
        f.hnext = self._free_head
        self._free_head = i
        self._n_flows -= 1

    cdef int32_t _alloc(self) noexcept nogil:
        """A free slot, evicting the least recently seen flow when the table is full."""
        cdef int32_t i
        if self._n_flows >= self._max_flows:
            self._remove(self._lru_head)
            self._counters[C_FLOWS_EVICTED] += 1
        if self._free_head >= 0:
            i = self._free_head
            self._free_head = self._flows[i].hnext
        else:
            i = self._high_water
            self._high_water += 1
        return i

    cdef int32_t _insert(self, uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                         uint32_t pa, uint32_t pb, uint32_t proto) noexcept nogil:
        cdef int32_t i = self._alloc()
        cdef CFlow* f = &self._flows[i]
        cdef uint64_t b = key_hash(a_hi, a_lo, b_hi, b_lo, pa, pb, proto) & self._bucket_mask
        memset(f, 0, sizeof(CFlow))
        f.a_hi = a_hi
        f.a_lo = a_lo
        f.b_hi = b_hi
        f.b_lo = b_lo
        f.pa = pa
        f.pb = pb
        f.proto = proto
        f.in_use = 1
        f.hnext = self._buckets[b]
        self._buckets[b] = i
        self._lru_push_mru(i)
        self._n_flows += 1
        return i

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
        ev = self._events
        self._events = []
        return ev

    def counters(self):
        cdef int i
        out = {}
        for i in range(10):
            out[_COUNTER_NAMES[i]] = self._counters[i]
        for i in range(N_REASONS):
            out["drop_" + _REASONS[i]] = self._counters[C_DROP0 + i]
        return out

    cdef void _event(self, int kind, int64_t ts, uint64_t fid, CPacket* pk, int32_t sz, int32_t dz,
                     int verdict, int rule, int reason):
        self._events.append(RawEvent(
            kind, ts, fid, pk.family, u128(pk.src_hi, pk.src_lo), u128(pk.dst_hi, pk.dst_lo),
            pk.sport, pk.dport, pk.proto, sz, dz, verdict, rule, reason))

    # --- the decision ---------------------------------------------------------------------------

    cdef inline void _finish(self, CDecision* d, int verdict, int reason, int rule, int32_t sz, int32_t dz,
                             uint64_t fid) noexcept nogil:
        d.verdict = verdict
        d.reason = reason
        d.rule = rule
        d.src_zone = sz
        d.dst_zone = dz
        d.flow_id = fid
        if verdict == ACCEPT:
            self._counters[C_ACCEPTED] += 1
        elif verdict == INSPECT:
            self._counters[C_INSPECTED] += 1
        elif verdict == FRAGMENT:
            self._counters[C_FRAGMENTS] += 1
        else:
            self._counters[C_DROPPED] += 1
            self._counters[C_DROP0 + reason] += 1

    cdef int _decide(self, const uint8_t* p, Py_ssize_t n, int64_t ts, int32_t in_zone, int32_t out_zone,
                     CDecision* d) except -1:
        cdef CPacket pk
        cdef int st, verdict
        cdef int32_t sz, dz, pz, rule, fi
        cdef int32_t vv
        cdef CFlow* f
        cdef bint src_is_a, from_init
        cdef uint64_t a_hi, a_lo, b_hi, b_lo
        cdef uint32_t pa, pb
        cdef int flags
        self._counters[C_PACKETS] += 1
        st = parse_ip(p, n, self._max_ext, &pk)
        if st == ST_FRAGMENT:
            self._finish(d, FRAGMENT, R_FRAGMENT, -1, -1, -1, 0)
            return 0
        if st == ST_MALFORMED:
            verdict = ACCEPT if self._malformed_accept else DROP
            self._finish(d, verdict, R_MALFORMED, -1, -1, -1, 0)
            self._event(EV_ANOMALY, ts, 0, &pk, -1, -1, verdict, -1, R_MALFORMED)
            return 0
        if st == ST_RH0:
            self._finish(d, DROP, R_IPV6_RH0, -1, -1, -1, 0)
            self._event(EV_ANOMALY, ts, 0, &pk, -1, -1, DROP, -1, R_IPV6_RH0)
            return 0

        # 2. zones
        pz = self._zone_of(pk.src_hi, pk.src_lo)
        if in_zone >= 0:
            sz = in_zone
            if pz >= 0 and pz != in_zone:
                dz = self._zone_of(pk.dst_hi, pk.dst_lo)
                if dz < 0:
                    dz = out_zone
                self._finish(d, DROP, R_ZONE_MISMATCH, -1, sz, dz, 0)
                self._event(EV_ANOMALY, ts, 0, &pk, sz, dz, DROP, -1, R_ZONE_MISMATCH)
                return 0
        else:
            sz = pz
        dz = self._zone_of(pk.dst_hi, pk.dst_lo)
        if dz < 0:
            dz = out_zone
        if sz < 0 or dz < 0:
            self._finish(d, DROP, R_UNKNOWN_ZONE, -1, sz, dz, 0)
            self._event(EV_DROP, ts, 0, &pk, sz, dz, DROP, -1, R_UNKNOWN_ZONE)
            return 0

        # 3. ICMP errors: decided by the flow of the quoted packet, never create one
        if pk.icmp_kind == ICMPK_ERROR:
            if (pk.e_src_hi < pk.e_dst_hi or (pk.e_src_hi == pk.e_dst_hi and (pk.e_src_lo < pk.e_dst_lo or (
                    pk.e_src_lo == pk.e_dst_lo and pk.e_kport_s <= pk.e_kport_d)))):
                fi = self._lookup(pk.e_src_hi, pk.e_src_lo, pk.e_dst_hi, pk.e_dst_lo,
                                  pk.e_kport_s, pk.e_kport_d, pk.e_proto, ts)
            else:
                fi = self._lookup(pk.e_dst_hi, pk.e_dst_lo, pk.e_src_hi, pk.e_src_lo,
                                  pk.e_kport_d, pk.e_kport_s, pk.e_proto, ts)
            if fi >= 0 and self._flows[fi].verdict != DROP:
                f = &self._flows[fi]
                self._finish(d, ACCEPT, R_RELATED, f.rule, sz, dz, f.flow_id)
                return 0
            self._finish(d, DROP, R_ICMP_NO_FLOW, -1, sz, dz, 0)
            self._event(EV_DROP, ts, 0, &pk, sz, dz, DROP, -1, R_ICMP_NO_FLOW)
            return 0

        # canonical key: (addr, port) of A <= B
        src_is_a = (pk.src_hi < pk.dst_hi or (pk.src_hi == pk.dst_hi and (pk.src_lo < pk.dst_lo or (
            pk.src_lo == pk.dst_lo and pk.kport_s <= pk.kport_d)))) 
        if src_is_a:
            a_hi = pk.src_hi; a_lo = pk.src_lo; b_hi = pk.dst_hi; b_lo = pk.dst_lo
            pa = pk.kport_s; pb = pk.kport_d
        else:
            a_hi = pk.dst_hi; a_lo = pk.dst_lo; b_hi = pk.src_hi; b_lo = pk.src_lo
            pa = pk.kport_d; pb = pk.kport_s
        flags = pk.tcp_flags

        # 4. existing flow
        fi = self._lookup(a_hi, a_lo, b_hi, b_lo, pa, pb, pk.proto, ts)
        if fi >= 0:
            f = &self._flows[fi]
            from_init = (src_is_a == (f.init_is_a != 0))
            if (pk.proto == 6 and f.tcp_state == TCP_CLOSED and from_init
                    and (flags & (TH_SYN | TH_ACK)) == TH_SYN):
                self._remove(fi)  # a new connection reusing the ports of a closed one
            else:
                self._touch(fi)
                f.last_us = ts
                if f.generation != self._generation:
                    self._redecide(f, &pk, from_init, sz, dz, ts)
                if pk.proto == 6:
                    if flags & TH_RST:
                        f.tcp_state = TCP_CLOSED
                    else:
                        if ((flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) and not from_init
                                and f.tcp_state == TCP_SYN_SENT):
                            f.tcp_state = TCP_ESTABLISHED
                        if flags & TH_FIN:
                            f.fin_mask |= 1 if from_init else 2
                            if f.fin_mask == 3:
                                f.tcp_state = TCP_CLOSED
                            elif f.tcp_state != TCP_CLOSED:
                                f.tcp_state = TCP_CLOSING
                self._finish(d, f.verdict, R_FLOW, f.rule, sz, dz, f.flow_id)
                return 0

        # 5. new flow
        if pk.proto == 6:
            if (((flags & (TH_SYN | TH_FIN)) == (TH_SYN | TH_FIN)) or ((flags & (TH_SYN | TH_RST)) == (TH_SYN | TH_RST))
                    or (flags & 0x3F) == 0):
                self._finish(d, DROP, R_BAD_TCP_FLAGS, -1, sz, dz, 0)
                self._event(EV_DROP, ts, 0, &pk, sz, dz, DROP, -1, R_BAD_TCP_FLAGS)
                return 0
            if (flags & (TH_SYN | TH_ACK)) != TH_SYN:
                self._finish(d, DROP, R_NO_FLOW, -1, sz, dz, 0)
                self._event(EV_DROP, ts, 0, &pk, sz, dz, DROP, -1, R_NO_FLOW)
                return 0
        rule = self._match_rules(sz, dz, pk.proto, pk.src_hi, pk.src_lo, pk.dst_hi, pk.dst_lo,
                                 pk.kport_s, pk.kport_d,
                                 pk.icmp_type if (pk.proto == 1 or pk.proto == 58) else -1,
                                 pk.proto == 6 or pk.proto == 17, &vv)
        fi = self._insert(a_hi, a_lo, b_hi, b_lo, pa, pb, pk.proto)
        f = &self._flows[fi]
        f.start_us = ts
        f.last_us = ts
        f.flow_id = flow_id_c(a_hi, a_lo, b_hi, b_lo, pa, pb, pk.proto, ts)
        f.generation = self._generation
        f.rule = rule
        f.verdict = vv
        f.src_zone = sz
        f.dst_zone = dz
        f.init_sport = pk.sport
        f.init_dport = pk.dport
        f.init_icmp_type = pk.icmp_type
        f.family = pk.family
        f.init_is_a = src_is_a
        f.tcp_state = TCP_SYN_SENT
        self._counters[C_FLOWS_CREATED] += 1
        self._finish(d, vv, R_RULE, rule, sz, dz, f.flow_id)
        self._event(EV_FLOW, ts, f.flow_id, &pk, sz, dz, vv, rule, R_RULE)
        return 0

    cdef int32_t _lookup(self, uint64_t a_hi, uint64_t a_lo, uint64_t b_hi, uint64_t b_lo,
                         uint32_t pa, uint32_t pb, uint32_t proto, int64_t ts) noexcept nogil:
        """Find a flow; an entry idle past its timeout is removed (counted) and reported absent."""
        cdef int32_t fi = self._find(a_hi, a_lo, b_hi, b_lo, pa, pb, proto)
        if fi >= 0 and ts - self._flows[fi].last_us > self._timeout(&self._flows[fi]):
            self._remove(fi)
            self._counters[C_FLOWS_EXPIRED] += 1
            return -1
        return fi

    cdef void _redecide(self, CFlow* f, CPacket* pk, bint from_init, int32_t sz, int32_t dz, int64_t ts):
        """Policy changed since the flow's verdict: decide again as for its first packet."""
        cdef int32_t isz = sz if from_init else dz
        cdef int32_t idz = dz if from_init else sz
        cdef int32_t vv, rule
        cdef uint64_t s_hi, s_lo, d_hi, d_lo
        cdef int sp, dp
        cdef CPacket ev
        if f.init_is_a:
            s_hi = f.a_hi; s_lo = f.a_lo; d_hi = f.b_hi; d_lo = f.b_lo; sp = f.pa; dp = f.pb
        else:
            s_hi = f.b_hi; s_lo = f.b_lo; d_hi = f.a_hi; d_lo = f.a_lo; sp = f.pb; dp = f.pa
        rule = self._match_rules(isz, idz, f.proto, s_hi, s_lo, d_hi, d_lo, sp, dp,
                                 f.init_icmp_type if (f.proto == 1 or f.proto == 58) else -1,
                                 f.proto == 6 or f.proto == 17, &vv)
        f.rule = rule
        f.verdict = vv
        f.src_zone = isz
        f.dst_zone = idz
        f.generation = self._generation
        self._counters[C_FLOWS_REDECIDED] += 1
        memset(&ev, 0, sizeof(CPacket))
        ev.family = f.family
        ev.proto = f.proto
        ev.src_hi = s_hi
        ev.src_lo = s_lo
        ev.dst_hi = d_hi
        ev.dst_lo = d_lo
        ev.sport = f.init_sport
        ev.dport = f.init_dport
        self._event(EV_FLOW, ts, f.flow_id, &ev, isz, idz, vv, rule, R_RULE)

    # --- public entry points --------------------------------------------------------------------

    def decide(self, packet, int64_t ts_us, in_if=None, out_if=None):
        """Decide one IP packet (no link header). Never raises on malformed input."""
        cdef const uint8_t[::1] view
        cdef const uint8_t* p = NULL
        cdef Py_ssize_t n = 0
        cdef CDecision d
        cdef int32_t in_zone = -1, out_zone = -1
        if isinstance(packet, bytes):
            n = len(<bytes>packet)
            p = <const uint8_t*><char*>(<bytes>packet)
        else:
            view = memoryview(packet).cast("B")
            n = view.shape[0]
            if n:
                p = &view[0]
        if in_if is not None:
            in_zone = self._ifaces.get(in_if, -1)
        if out_if is not None:
            out_zone = self._ifaces.get(out_if, -1)
        self._decide(p, n, ts_us, in_zone, out_zone, &d)
        return Decision(d.verdict, d.reason, d.rule, d.src_zone, d.dst_zone, d.flow_id)

    def decide_frames(self, buf, const long long[::1] offsets, const long long[::1] lengths,
                      const long long[::1] ts_us, int linktype, unsigned char[::1] out):
        """Decide a batch of link-layer frames; out[i] = verdict byte of frame i."""
        cdef const uint8_t[::1] view = memoryview(buf).cast("B")
        cdef const uint8_t* base = &view[0] if view.shape[0] > 0 else NULL
        cdef Py_ssize_t total = view.shape[0]
        cdef Py_ssize_t i, nframes = offsets.shape[0], off, ln, ip
        cdef CDecision d
        if lengths.shape[0] < nframes or ts_us.shape[0] < nframes or out.shape[0] < nframes:
            raise ValueError("decide_frames: lengths, ts_us and out must cover every offset")
        for i in range(nframes):
            off = offsets[i]
            ln = lengths[i]
            # clamp to the buffer: a corrupt record length must not read past it
            if off < 0 or off > total:
                off = total
                ln = 0
            if ln < 0:
                ln = 0
            if ln > total - off:
                ln = total - off
            ip = link_strip(base + off, ln, linktype) if ln > 0 else -1
            if ip < 0:
                self._counters[C_PACKETS] += 1
                self._counters[C_NON_IP] += 1
                self._counters[C_DROPPED] += 1
                self._counters[C_DROP0 + R_NON_IP] += 1
                out[i] = DROP
                continue
            self._decide(base + off + ip, ln - ip, ts_us[i], -1, -1, &d)
            out[i] = d.verdict

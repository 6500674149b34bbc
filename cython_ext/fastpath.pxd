# C declarations of the compiled fast path (implementation in fastpath.pyx, which cimports them).
#
# Everything the per-packet path touches is a plain C struct in a C array: the policy is compiled
# into these arrays once per set_policy(), the flow table lives in one calloc'ed slab. Python
# objects appear only at the edges (Decision/RawEvent construction, counters(), events).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t


# One zone prefix of the longest-prefix table: 128-bit network and mask as (hi, lo) halves.
ctypedef struct CPrefix:
    uint64_t hi
    uint64_t lo
    uint64_t mhi
    uint64_t mlo
    int32_t zone


# A network of a rule (src_nets / dst_nets), same representation as CPrefix.
ctypedef struct CNet:
    uint64_t hi
    uint64_t lo
    uint64_t mhi
    uint64_t mlo


# Inclusive port range of a rule.
ctypedef struct CPortRange:
    int32_t lo
    int32_t hi


# One compiled rule. Variable-length parts (nets, port ranges, ICMP types) live in side arrays;
# a rule holds the start index and count of its slice in each (count 0 = "any").
ctypedef struct CRule:
    int32_t from_zone
    int32_t to_zone
    int32_t verdict      # DROP / ACCEPT / INSPECT (already mapped from the action)
    int32_t proto        # 0 = any
    int32_t src_net0
    int32_t src_net_n
    int32_t dst_net0
    int32_t dst_net_n
    int32_t sport0
    int32_t sport_n
    int32_t dport0
    int32_t dport_n
    int32_t icmp0
    int32_t icmp_n


# The parsed headers of one packet (filled by parse_ip, no Python object involved); the fields are
# those of reference.Parsed.
ctypedef struct CPacket:
    int32_t family        # 4 / 6, 0 when not even the IP header could be read
    int32_t proto         # final protocol / next header
    uint64_t src_hi
    uint64_t src_lo
    uint64_t dst_hi
    uint64_t dst_lo
    int32_t sport         # TCP/UDP port; ICMP: type
    int32_t dport         # TCP/UDP port; ICMP: code
    int32_t flags         # TCP flags (low 6 bits)
    int32_t icmp_id
    int32_t type          # PT_PLAIN / PT_ECHO / PT_ERROR
    Py_ssize_t inner_off  # ICMP error: where the quoted packet starts and ends
    Py_ssize_t inner_end
    Py_ssize_t l4         # transport header start and end (the first packet's flow tag reads there)
    Py_ssize_t l4_end


# One flow. Slots are linked three ways by index (int32, -1 = none): hash chain, LRU list, free list
# (the free list reuses hnext).
ctypedef struct CFlow:
    uint64_t a_hi         # canonical side A (the smaller (addr, port))
    uint64_t a_lo
    uint64_t b_hi
    uint64_t b_lo
    int64_t last_us
    uint64_t flow_id
    int64_t generation    # engine generation (set_policy count) the verdict was decided under
    int32_t hnext
    int32_t lru_prev
    int32_t lru_next
    int32_t rule
    int32_t src_zone      # zones in the initiator's direction
    int32_t dst_zone
    int32_t first_type    # ICMP type/code of the first packet, for events and re-decisions
    int32_t first_code
    uint16_t pa
    uint16_t pb
    uint8_t proto
    uint8_t verdict
    uint8_t tcp_state
    uint8_t fin_mask      # bit 0: FIN from the initiator, bit 1: FIN from the responder
    uint8_t a_is_initiator  # 1 when the initiator is canonical side A


# What one decision produced (turned into a Decision namedtuple only by decide()).
ctypedef struct CDecision:
    int32_t verdict
    int32_t reason
    int32_t rule
    int32_t src_zone
    int32_t dst_zone
    uint64_t flow_id

package dataplane

import (
	"encoding/binary"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/policy"
)

// kernelConntrack is the conntrack table of the calling thread's network
// namespace, through netlink.
type kernelConntrack struct{}

var _ conntrackTable = kernelConntrack{}

// The message types of ctnetlink (subsystem and message).
const (
	ctnlMsgNew = int(netlink.ConntrackTable)<<8 | nl.IPCTNL_MSG_CT_NEW
	ctnlMsgGet = int(netlink.ConntrackTable)<<8 | nl.IPCTNL_MSG_CT_GET
)

// count reads the namespace's own entry count (nf_conntrack_count is per
// network namespace, and /proc/sys/net is the calling thread's).
func (kernelConntrack) count() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

// dump lists both families at once (family AF_UNSPEC) and parses each entry
// into the same ctEntry.
func (kernelConntrack) dump(f func(e *ctEntry)) error {
	req := nl.NewNetlinkRequest(ctnlMsgGet, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	var e ctEntry
	return req.ExecuteIter(unix.NETLINK_NETFILTER, uint16(ctnlMsgNew), func(msg []byte) bool {
		if parseCtEntry(msg, &e) {
			f(&e)
		}
		return true
	})
}

// setCut updates the entry's mark. The request carries the original tuple
// and the whole mark (older kernels ignore CTA_MARK_MASK), and no timeout,
// so the kernel leaves the entry's own.
func (kernelConntrack) setCut(e *ctEntry, cut bool) error {
	mark := e.mark &^ policy.CutMark
	if cut {
		mark |= policy.CutMark
	}
	srcT, dstT := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if e.family == unix.AF_INET6 {
		srcT, dstT = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	req := nl.NewNetlinkRequest(ctnlMsgNew, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: e.family, Version: nl.NFNETLINK_V0})
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(srcT, e.src.AsSlice())
	ip.AddRtAttr(dstT, e.dst.AsSlice())
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{e.proto})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(e.sport))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(e.dport))
	req.AddData(orig)
	req.AddData(nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(mark)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}

// parseCtEntry reads a ctnetlink message (nfgenmsg and attributes) into e
// without allocating. ok is false for a message too short to be an entry.
func parseCtEntry(msg []byte, e *ctEntry) bool {
	if len(msg) < 4 {
		return false
	}
	*e = ctEntry{family: msg[0]}
	for b := msg[4:]; ; {
		typ, val, rest, ok := nextAttr(b)
		if !ok {
			break
		}
		b = rest
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			e.src, e.dst, e.proto, e.sport, e.dport = parseTuple(val)
		case nl.CTA_TUPLE_REPLY:
			e.replySrc, _, _, e.replySport, _ = parseTuple(val)
		case nl.CTA_MARK:
			if len(val) >= 4 {
				e.mark = binary.BigEndian.Uint32(val)
			}
		case nl.CTA_TIMEOUT:
			if len(val) >= 4 {
				e.timeout = binary.BigEndian.Uint32(val)
			}
		case nl.CTA_ZONE:
			if len(val) >= 2 {
				e.zone = binary.BigEndian.Uint16(val)
			}
		}
	}
	return e.src.IsValid()
}

// parseTuple reads a nested CTA_TUPLE_ORIG or CTA_TUPLE_REPLY.
func parseTuple(b []byte) (src, dst netip.Addr, proto uint8, sport, dport uint16) {
	for {
		typ, val, rest, ok := nextAttr(b)
		if !ok {
			return
		}
		b = rest
		switch typ {
		case nl.CTA_TUPLE_IP:
			for {
				t, v, r, ok := nextAttr(val)
				if !ok {
					break
				}
				val = r
				switch {
				case (t == nl.CTA_IP_V4_SRC || t == nl.CTA_IP_V4_DST) && len(v) == 4,
					(t == nl.CTA_IP_V6_SRC || t == nl.CTA_IP_V6_DST) && len(v) == 16:
					a, _ := netip.AddrFromSlice(v)
					if t == nl.CTA_IP_V4_SRC || t == nl.CTA_IP_V6_SRC {
						src = a
					} else {
						dst = a
					}
				}
			}
		case nl.CTA_TUPLE_PROTO:
			for {
				t, v, r, ok := nextAttr(val)
				if !ok {
					break
				}
				val = r
				switch {
				case t == nl.CTA_PROTO_NUM && len(v) >= 1:
					proto = v[0]
				case t == nl.CTA_PROTO_SRC_PORT && len(v) >= 2:
					sport = binary.BigEndian.Uint16(v)
				case t == nl.CTA_PROTO_DST_PORT && len(v) >= 2:
					dport = binary.BigEndian.Uint16(v)
				}
			}
		}
	}
}

// nextAttr splits the first netlink attribute off b: its type (without the
// nested and byte-order flags), its value and what follows it.
func nextAttr(b []byte) (typ uint16, val, rest []byte, ok bool) {
	if len(b) < unix.SizeofNlAttr {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint16(b))
	if l < unix.SizeofNlAttr || l > len(b) {
		return 0, nil, nil, false
	}
	typ = binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	next := min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b))
	return typ, b[unix.SizeofNlAttr:l], b[next:], true
}

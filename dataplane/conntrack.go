package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/policy"
)

// The cut pass's judgement: each established flow of the scope (scope.go)
// is judged by the new rules and marked or unmarked (cutFlows), through a
// conntrackTable; conntrack_kernel.go is the kernel's table.

// conntrackTable is the conntrack table the cut pass reads and marks.
type conntrackTable interface {
	// count is how many entries the namespace holds; ok is false when that
	// cannot be read.
	count() (n int, ok bool)
	// dump calls f for every entry of both families; f must not keep e.
	dump(f func(e *ctEntry)) error
	// setCut gives the entry e policy.CutMark (cut) or takes it away,
	// leaving the rest of its mark as dumped and its timeout as it is.
	setCut(e *ctEntry, cut bool) error
}

// ctEntry is what the cut pass reads of a conntrack entry.
type ctEntry struct {
	family       uint8
	proto        uint8
	src, dst     netip.Addr // original direction
	sport, dport uint16
	replySrc     netip.Addr
	replySport   uint16
	mark         uint32
	zone         uint16
	timeout      uint32 // seconds left
}

// flow is the Flow of a conntrack entry: the original direction's source,
// and as destination the reply direction's source, which is the pod a
// Service's DNAT chose (what policy sees in FORWARD). ok is false for
// protocols other than TCP, UDP and SCTP.
func (e *ctEntry) flow() (Flow, bool) {
	var proto string
	switch e.proto {
	case unix.IPPROTO_TCP:
		proto = "TCP"
	case unix.IPPROTO_UDP:
		proto = "UDP"
	case unix.IPPROTO_SCTP:
		proto = "SCTP"
	default:
		return Flow{}, false
	}
	if !e.src.IsValid() || !e.replySrc.IsValid() {
		return Flow{}, false
	}
	return Flow{Src: e.src.Unmap(), Dst: e.replySrc.Unmap(), Protocol: proto, DstPort: int32(e.replySport)}, true
}

// cutResult is what a cut pass did.
type cutResult struct {
	dumps, judged, cut, restored int
	// marked are the addresses (original source, reply source) of the
	// entries carrying policy.CutMark afterwards.
	marked map[netip.Addr]bool
}

// cutFlows gives policy.CutMark to the conntrack entries of flows of local
// pods that denied says the ruleset denies, and takes it from those it allows
// again (a flow that keeps sending, like a UDP stream, would otherwise stay
// cut for as long as it lives). ChainPolicy's first rule drops packets of
// marked entries in both directions; deleting the entry instead would let
// the next packet of either side create a new one that the established rule
// lets through.
//
// It dumps the table once, both families. A flow is judged when it is a
// local pod's (an address in local) and all is set, or it carries the mark,
// or one of its addresses is in judge. Entries in a conntrack zone other
// than the default one are left alone.
func cutFlows(ct conntrackTable, local map[netip.Addr]string, all bool, judge map[netip.Addr]bool, denied func(Flow) bool) (cutResult, error) {
	var r cutResult
	var todo []ctEntry
	isLocal := func(a netip.Addr) bool { _, ok := local[a]; return ok }
	var err error
	for range 5 {
		todo, r.marked = todo[:0], map[netip.Addr]bool{}
		r.dumps++
		err = ct.dump(func(e *ctEntry) {
			if e.zone != 0 {
				return
			}
			flow, ok := e.flow()
			if !ok {
				return
			}
			marked := e.mark&policy.CutMark != 0
			if e.timeout != 0 && (isLocal(flow.Src) || isLocal(flow.Dst)) &&
				(all || marked || judge[flow.Src] || judge[flow.Dst]) {
				todo = append(todo, *e)
			} else if marked {
				r.marked[flow.Src], r.marked[flow.Dst] = true, true
			}
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return r, fmt.Errorf("list conntrack: %w", err)
	}
	var errs []error
	for i := range todo {
		e := &todo[i]
		flow, _ := e.flow()
		was, deny := e.mark&policy.CutMark != 0, denied(flow)
		r.judged++
		if deny != was {
			if err := ct.setCut(e, deny); err != nil {
				if !errors.Is(err, unix.ENOENT) { // else ended meanwhile
					errs = append(errs, fmt.Errorf("conntrack mark %s: %w", flowString(flow), err))
				}
				deny = was
			} else if deny {
				r.cut++
			} else {
				r.restored++
			}
		}
		if deny {
			r.marked[flow.Src], r.marked[flow.Dst] = true, true
		}
	}
	return r, errors.Join(errs...)
}

func flowString(f Flow) string {
	return fmt.Sprintf("%s %s -> %s", f.Protocol, f.Src, netip.AddrPortFrom(f.Dst, uint16(f.DstPort)))
}

package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/policy"
)

// localPodIPs are the addresses of the pods rs polices.
func localPodIPs(rs policy.Ruleset) map[netip.Addr]bool {
	local := map[netip.Addr]bool{}
	for _, pp := range rs.Pods {
		for _, a := range pp.IPs {
			local[a.Unmap()] = true
		}
	}
	return local
}

// cutFlows gives policy.CutMark to the conntrack entries of flows of local
// pods that denied says the ruleset denies, and takes it from those it allows
// again (a flow that keeps sending, like a UDP stream, would otherwise stay
// cut for as long as it lives). ChainPolicy's first rule drops packets of
// marked entries in both directions; deleting the entry instead would let
// the next packet of either side create a new one that the established rule
// lets through.
//
// It dumps the whole table, once per family; only flows to or from a local
// pod are judged and written. Entries in a conntrack zone other than the
// default one are left alone. marked is how many judged flows carry the mark
// afterwards.
func cutFlows(local map[netip.Addr]bool, denied func(Flow) bool) (cut, restored, marked int, err error) {
	if len(local) == 0 {
		return 0, 0, 0, nil
	}
	var errs []error
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := listConntrack(fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range flows {
			flow, ok := flowOf(f)
			if !ok || f.Zone != 0 || f.TimeOut == 0 || (!local[flow.Src] && !local[flow.Dst]) {
				continue
			}
			was, deny := f.Mark&policy.CutMark != 0, denied(flow)
			if deny {
				marked++
			}
			if deny == was {
				continue
			}
			mark := f.Mark | policy.CutMark
			if was {
				mark = f.Mark &^ policy.CutMark
			}
			// The update carries the whole mark (the library sends no mask)
			// and the entry's remaining timeout, which it would otherwise
			// set to 0.
			upd := &netlink.ConntrackFlow{FamilyType: f.FamilyType, Mark: mark, TimeOut: f.TimeOut,
				Forward: bareTuple(f.Forward), Reverse: bareTuple(f.Reverse)}
			if err := netlink.ConntrackUpdate(netlink.ConntrackTable, fam, upd); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue // ended meanwhile
				}
				errs = append(errs, fmt.Errorf("conntrack mark %s: %w", flowString(flow), err))
				continue
			}
			if was {
				restored++
			} else {
				cut++
			}
		}
	}
	return cut, restored, marked, errors.Join(errs...)
}

// listConntrack dumps one family of the conntrack table, again when the dump
// was interrupted by a concurrent change.
func listConntrack(fam netlink.InetFamily) ([]*netlink.ConntrackFlow, error) {
	var err error
	for range 5 {
		var flows []*netlink.ConntrackFlow
		flows, err = netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err == nil {
			return flows, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list conntrack (family %d): %w", fam, err)
}

// flowOf is the Flow of a conntrack entry: the original direction's source,
// and as destination the reply direction's source, which is the pod a
// Service's DNAT chose (what policy sees in FORWARD). ok is false for
// protocols other than TCP, UDP and SCTP.
func flowOf(f *netlink.ConntrackFlow) (Flow, bool) {
	var proto string
	switch f.Forward.Protocol {
	case unix.IPPROTO_TCP:
		proto = "TCP"
	case unix.IPPROTO_UDP:
		proto = "UDP"
	case unix.IPPROTO_SCTP:
		proto = "SCTP"
	default:
		return Flow{}, false
	}
	src, ok1 := netip.AddrFromSlice(f.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return Flow{}, false
	}
	return Flow{Src: src.Unmap(), Dst: dst.Unmap(), Protocol: proto, DstPort: int32(f.Reverse.SrcPort)}, true
}

// bareTuple is t without its counters, as an update carries it.
func bareTuple(t netlink.IPTuple) netlink.IPTuple {
	return netlink.IPTuple{SrcIP: t.SrcIP, DstIP: t.DstIP, Protocol: t.Protocol, SrcPort: t.SrcPort, DstPort: t.DstPort}
}

func flowString(f Flow) string {
	return fmt.Sprintf("%s %s -> %s", f.Protocol, f.Src, netip.AddrPortFrom(f.Dst, uint16(f.DstPort)))
}

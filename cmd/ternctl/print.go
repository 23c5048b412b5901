package main

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
)

const notRunning = "BGP is not running on this node (standalone mode, --bgp=false, or not ready yet)"

// familyName is how tables show an address family.
func familyName(f string) string {
	switch f {
	case agentapi.FamilyIPv4:
		return "IPv4"
	case agentapi.FamilyIPv6:
		return "IPv6"
	case "":
		return "-"
	}
	return f
}

// familyOrder sorts IPv4 before IPv6.
func familyOrder(a, b string) int {
	rank := func(f string) int {
		switch f {
		case agentapi.FamilyIPv4:
			return 0
		case agentapi.FamilyIPv6:
			return 1
		}
		return 2
	}
	return cmp.Compare(rank(a), rank(b))
}

// joinAddrs writes addrs with sep between them.
func joinAddrs(addrs []netip.Addr, sep string) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}

// or is f, or the family of a when f is empty (an agent older than the
// family fields).
func or(f string, a netip.Addr) string {
	if f == "" {
		return agentapi.Family(a)
	}
	return f
}

// printStatus prints the agent's readiness and the use of its pod CIDRs,
// one per address family.
func printStatus(out io.Writer, st agentapi.Status) error {
	ready := "yes"
	if !st.Ready {
		ready = "no: " + st.Reason
	}
	fmt.Fprintf(out, "node:   %s\nready:  %s\n\n", st.Node, ready)
	pools := slices.Clone(st.Pools)
	slices.SortStableFunc(pools, func(a, b agentapi.PoolUsage) int {
		return familyOrder(or(a.Family, a.CIDR.Addr()), or(b.Family, b.CIDR.Addr()))
	})
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FAMILY\tPOD CIDR\tIN USE\tSIZE")
	for _, p := range pools {
		size := fmt.Sprint(p.Size)
		if p.Size >= 1<<63 { // the agent caps the size of wide IPv6 CIDRs
			size = ">=2^63"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", familyName(or(p.Family, p.CIDR.Addr())), p.CIDR, p.InUse, size)
	}
	return w.Flush()
}

// printNodeStatus prints the node's addresses and BGP identity, a summary
// line per address family, and the sessions, grouped by family.
func printNodeStatus(out io.Writer, b agentapi.BGP, now time.Time) error {
	if !b.Enabled {
		_, err := fmt.Fprintln(out, notRunning)
		return err
	}
	fmt.Fprintf(out, "BGP: AS %d, router ID %s\n", b.ASN, b.RouterID)
	addr := func(a netip.Addr) string {
		if !a.IsValid() {
			return "none"
		}
		return a.String()
	}
	fmt.Fprintf(out, "addresses: IPv4 %s, IPv6 %s\n\n", addr(b.IPv4), addr(b.IPv6))
	for _, f := range b.Families {
		fmt.Fprintf(out, "%s: %d/%d sessions established, %d prefixes received, %d sent; %d announced, %d routes installed\n",
			familyName(f.Family), f.Established, f.Configured, f.Received, f.Sent, f.Announced, f.Routes)
	}
	if len(b.Families) > 0 {
		fmt.Fprintln(out)
	}
	peers := slices.Clone(b.Peers)
	slices.SortStableFunc(peers, func(p, q agentapi.BGPPeer) int {
		return familyOrder(or(p.Family, p.Address), or(q.Family, q.Address))
	})
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FAMILY\tPEER ADDRESS\tAS\tTYPE\tSTATE\tSINCE\tRECEIVED\tSENT")
	for _, p := range peers {
		since := "-"
		if !p.Since.IsZero() {
			since = now.Sub(p.Since).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\n", familyName(or(p.Family, p.Address)), p.Address, p.ASN, p.Kind, p.State, since, p.Received, p.Sent)
	}
	return w.Flush()
}

// printRoutes prints the routes installed from BGP, a section per address
// family with its count; an ECMP route lists each of its next hops.
func printRoutes(out io.Writer, b agentapi.BGP) error {
	if !b.Enabled {
		_, err := fmt.Fprintln(out, notRunning)
		return err
	}
	byFamily := map[string][]agentapi.BGPRoute{}
	var families []string
	for _, f := range b.Families {
		families = append(families, f.Family)
	}
	for _, r := range b.Routes {
		f := or(r.Family, r.Dst.Addr())
		if !slices.Contains(families, f) {
			families = append(families, f)
		}
		byFamily[f] = append(byFamily[f], r)
	}
	slices.SortStableFunc(families, familyOrder)
	for i, f := range families {
		if i > 0 {
			fmt.Fprintln(out)
		}
		routes := byFamily[f]
		switch len(routes) {
		case 0:
			fmt.Fprintf(out, "%s: no routes\n", familyName(f))
			continue
		case 1:
			fmt.Fprintf(out, "%s: 1 route\n", familyName(f))
		default:
			fmt.Fprintf(out, "%s: %d routes\n", familyName(f), len(routes))
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "DESTINATION\tVIA")
		for _, r := range routes {
			fmt.Fprintf(w, "%s\t%s\n", r.Dst, joinAddrs(r.Gateways, ", "))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

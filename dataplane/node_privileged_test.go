package dataplane

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Each family's masquerade follows its own setting: IPv6 is masqueraded
// only with NATOutgoingIPv6, and turning it off removes the IPv6 chain and
// its jump, leaving IPv4's as they are.
func TestNodeNATPerFamily(t *testing.T) {
	eachIPv6Backend(t, func(t *testing.T, b Backend) {
		n := newTestNS(t, b)
		node := NewNode(slog.New(slog.NewTextHandler(io.Discard, nil)))
		node.UseBackend(b)
		apply := func(natV6 bool) ApplyStats {
			t.Helper()
			var st ApplyStats
			var err error
			cfg := NodeConfig{PodCIDRs: prefixes("10.244.1.0/24", "fd10:244:1::/64"), ClusterCIDRs: prefixes("10.244.0.0/16", "fd10:244::/48"),
				NATOutgoing: true, NATOutgoingIPv6: natV6}
			_ = n.ns.Do(func(ns.NetNS) error { st, err = node.Apply(PlanNode(cfg)); return nil })
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		nat := func(v6 bool) string { return n.ipt(v6, "-t", "nat", "-S") }
		const jump = "-A POSTROUTING -m comment --comment \"tern: masquerade pod traffic leaving the cluster\" -j " + ChainNATOutgoing

		apply(false)
		v4 := nat(false)
		if !strings.Contains(v4, jump) || !strings.Contains(v4, "-s 10.244.1.0/24") || !strings.Contains(v4, "-j MASQUERADE") {
			t.Fatalf("IPv4 nat table:\n%s", v4)
		}
		if s := nat(true); strings.Contains(s, ChainNATOutgoing) {
			t.Fatalf("IPv6 masqueraded by default:\n%s", s)
		}

		if st := apply(true); st.ChainsWritten != 1 || st.JumpsInserted != 1 {
			t.Fatalf("IPv6 NAT on: %+v", st)
		}
		v6 := nat(true)
		for _, want := range []string{jump, "-A " + ChainNATOutgoing + " -d fd10:244::/48 ", "-A " + ChainNATOutgoing + " -s fd10:244:1::/64 ", "-j MASQUERADE"} {
			if !strings.Contains(v6, want) {
				t.Fatalf("IPv6 nat table lacks %q:\n%s", want, v6)
			}
		}
		if st := apply(true); st != (ApplyStats{}) {
			t.Fatalf("same plan again: %+v", st)
		}

		node.Resync() // a flag change comes with a restart: read back
		if st := apply(false); st.StaleRemoved != 2 || st.ChainsWritten != 0 {
			t.Fatalf("IPv6 NAT off: %+v, want the chain and its jump removed", st)
		}
		if s := nat(true); strings.Contains(s, ChainNATOutgoing) {
			t.Fatalf("IPv6 NAT chain left:\n%s", s)
		}
		if got := nat(false); got != v4 {
			t.Fatalf("the IPv4 nat table changed:\n%s\nwas:\n%s", got, v4)
		}
	})
}

package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/bgp"
)

// TestSettle: routes not relearned after a restart are swept once every
// graceful-restart peer has sent End-of-RIB, a moment after plain peers came
// up, or when the graceful-restart time is over; never while a peer is down.
func TestSettle(t *testing.T) {
	up := func(gr, eor bool) bgp.PeerStatus {
		return bgp.PeerStatus{State: "Established", GracefulRestart: gr, EndOfRIB: eor}
	}
	down := bgp.PeerStatus{State: "Active"}
	for _, tc := range []struct {
		name       string
		peers      []bgp.PeerStatus
		configured int
		upFor      time.Duration // since the last peer came up
		runFor     time.Duration // since the speaker started
		want       bool
	}{
		{"all sent End-of-RIB", []bgp.PeerStatus{up(true, true), up(true, true)}, 2, 0, time.Second, true},
		{"one End-of-RIB missing", []bgp.PeerStatus{up(true, true), up(true, false)}, 2, time.Minute, time.Minute, false},
		{"a peer down", []bgp.PeerStatus{up(true, true), down}, 2, time.Minute, time.Minute, false},
		{"plain peer just up", []bgp.PeerStatus{up(false, false)}, 1, 0, time.Second, false},
		{"plain peer up a while", []bgp.PeerStatus{up(false, false)}, 1, settleTime, time.Minute, true},
		{"mixed, waiting for the plain one", []bgp.PeerStatus{up(true, true), up(false, false)}, 2, 0, time.Second, false},
		{"no peers", nil, 0, 0, 0, true},
		{"graceful restart time over", []bgp.PeerStatus{down}, 1, 0, 3 * time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &routing{peers: tc.peers, started: time.Now().Add(-tc.runFor)}
			if tc.upFor > 0 {
				r.upSince = time.Now().Add(-tc.upFor)
			}
			r.settle(tc.configured, 2*time.Minute)
			if r.settled != tc.want {
				t.Errorf("settled = %v, want %v", r.settled, tc.want)
			}
		})
	}
}

func TestOutsideClusterCIDRs(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	nodes := []bgp.NodeInfo{
		{Name: "a", PodCIDRs: pfx("10.244.1.0/24", "fd74:6572:6e44:1::/64")},
		{Name: "b", PodCIDRs: pfx("10.244.2.0/24", "fd74:6572:6e44:2::/64")},
	}
	if w := outsideClusterCIDRs(nodes, nil); w != nil {
		t.Errorf("no cluster CIDRs (the nodes' own are used): %q", w)
	}
	if w := outsideClusterCIDRs(nodes, pfx("10.244.0.0/16", "fd74:6572:6e44::/56")); w != nil {
		t.Errorf("both families covered: %q", w)
	}
	// An IPv4-only cluster-cidr in a dual-stack cluster: IPv6 falls back to
	// the nodes' pod CIDRs, both for the import and the warning.
	if w := outsideClusterCIDRs(nodes, pfx("10.244.0.0/16")); w != nil {
		t.Errorf("an IPv4-only cluster-cidr in a dual-stack cluster: %q", w)
	}
	if got := importRanges(nodes, pfx("10.244.0.0/16")); !slices.Equal(got, pfx("10.244.0.0/16", "fd74:6572:6e44:1::/64", "fd74:6572:6e44:2::/64")) {
		t.Errorf("import ranges, IPv4-only cluster-cidr: %v", got)
	}
	if got := importRanges(nodes, nil); !slices.Equal(got, pfx("10.244.1.0/24", "10.244.2.0/24", "fd74:6572:6e44:1::/64", "fd74:6572:6e44:2::/64")) {
		t.Errorf("import ranges without cluster-cidr: %v", got)
	}
	w := outsideClusterCIDRs(nodes, pfx("10.244.1.0/25", "fd74:6572:6e44::/56"))
	if len(w) != 2 || !strings.Contains(w[0], "node a's pod CIDR 10.244.1.0/24 is outside the cluster CIDRs [10.244.1.0/25]") {
		t.Errorf("a cluster CIDR narrower than a pod CIDR does not cover it: %q", w)
	}
}

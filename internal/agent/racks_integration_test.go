package agent_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// TestTwoRacks: each rack is its own subnet behind its own top-of-rack router
// with its own AS (rack A: BIRD, rack B: FRR), the routers peer with each
// other, the node-to-node mesh is off, and each node peers eBGP only with its
// ToR, chosen by a BGPPeer's nodeSelector. Pods in the two racks talk TCP.
func TestTwoRacks(t *testing.T) {
	c := clustertest.NewCluster(t)
	ctx := context.Background()
	manifest := `apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-a}
spec: {peerIP: 10.31.0.254, asNumber: 65001, nodeSelector: {matchLabels: {rack: a}}, holdTimeSeconds: 9}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-b}
spec: {peerIP: 10.32.0.254, asNumber: 65002, nodeSelector: {matchLabels: {rack: b}}, holdTimeSeconds: 9}
`
	c.Apply(manifest)

	fabA, fabB := clustertest.NewFabric(t), clustertest.NewFabric(t)
	torA, torB := clustertest.NewRouter(t), clustertest.NewRouter(t)
	fabA.JoinNS(torA, "tora", "10.31.0.254/24")
	fabB.JoinNS(torB, "torb", "10.32.0.254/24")
	// The routers' own link.
	clustertest.Link(t, torA, "ab", "10.33.0.1/30", torB, "ba", "10.33.0.2/30")
	bird := routertest.StartBIRD(t, torA, `router id 10.31.0.254;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; }; }
protocol bgp nodea { local 10.31.0.254 as 65001; neighbor 10.31.0.1 as 65101; connect retry time 1; error wait time 1, 5; ipv4 { import all; export all; }; }
protocol bgp torb { local 10.33.0.1 as 65001; neighbor 10.33.0.2 as 65002; connect retry time 1; error wait time 1, 5; ipv4 { import all; export all; }; }
`)
	frr := routertest.StartFRR(t, torB, `frr defaults traditional
hostname torb
log stdout informational
router bgp 65002
 bgp router-id 10.32.0.254
 no bgp ebgp-requires-policy
 neighbor 10.32.0.1 remote-as 65102
 neighbor 10.32.0.1 timers connect 1
 neighbor 10.33.0.1 remote-as 65001
 neighbor 10.33.0.1 timers connect 1
`)

	nodeA, nodeB := nodetest.NewNodeNS(t), nodetest.NewNodeNS(t)
	fabA.Join(nodeA, "na", "10.31.0.1/24")
	fabB.Join(nodeB, "nb", "10.32.0.1/24")
	c.Start(nodeA, "10.31.0.1", map[string]string{"rack": "a"}, map[string]string{"tern.io/as-number": "65101"})
	c.Start(nodeB, "10.32.0.1", map[string]string{"rack": "b"}, map[string]string{"tern.io/as-number": "65102"})
	nodeA.WaitReady(30 * time.Second)
	nodeB.WaitReady(30 * time.Second)

	cidrOf := func(n *nodetest.Node) string {
		st, err := n.Client().Status(ctx)
		if err != nil || len(st.PodCIDRs) == 0 {
			t.Fatalf("%+v %v", st, err)
		}
		return st.PodCIDRs[0].String()
	}
	for _, x := range []struct {
		n, other *nodetest.Node
		via, tor string
	}{{nodeA, nodeB, "10.31.0.254", "10.31.0.254"}, {nodeB, nodeA, "10.32.0.254", "10.32.0.254"}} {
		want := fmt.Sprintf("%s via %s dev eth0", cidrOf(x.other), x.via) // listed by protocol 96
		if err := kubetest.Eventually(30*time.Second, func(context.Context) (bool, error) {
			out, err := x.n.Output("ip", "route", "show", "proto", "96")
			return err == nil && strings.Contains(out, want), err
		}); err != nil {
			out, _ := x.n.Output("ip", "route")
			t.Fatalf("%s lacks %q: %v\n%s\nagent:\n%s\nBIRD:\n%s\nFRR:\n%s\n%s", x.n.Name, want, err, out,
				nodetest.Tail(x.n.AgentLog(), 2000), bird.Birdc("show", "protocols"), frr.Vtysh("show bgp summary"), nodetest.Tail(frr.Log(), 1500))
		}
		b, err := x.n.Client().BGP(ctx)
		if err != nil || len(b.Peers) != 1 || b.Peers[0].Kind != "peer" || b.Peers[0].Address.String() != x.tor || b.Peers[0].State != "Established" {
			t.Fatalf("%s peers: %+v %v (want only its ToR)", x.n.Name, b.Peers, err)
		}
	}

	pa := c.AddPod(nodeA, nodeA.ConfList("1.0.0"), "rack-a")
	pb := c.AddPod(nodeB, nodeB.ConfList("1.0.0"), "rack-b")
	srv := net.JoinHostPort(pb.IPs()[0].String(), "8080")
	nodetest.Serve(t, pb.NS, srv, "b")
	got, err := nodetest.Dial(pa.NS, srv)
	if err != nil || !strings.HasPrefix(got, "b from="+pa.IPs()[0].String()+":") {
		t.Fatalf("rack A pod -> rack B pod through both ToRs: %q %v", got, err)
	}
}

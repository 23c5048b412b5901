package agent_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// TestGracefulRestartWithRouters: a top-of-rack router, BIRD or FRR, keeps a
// restarted agent's routes as a graceful-restart helper: a client behind the
// router probing a pod every 100 ms loses nothing over a SIGKILL and restart.
func TestGracefulRestartWithRouters(t *testing.T) {
	c := clustertest.NewCluster(t)
	c.Apply(`apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-bird}
spec: {peerIP: 10.41.0.254, asNumber: 65001, nodeSelector: {matchLabels: {rack: bird}}}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-frr}
spec: {peerIP: 10.42.0.254, asNumber: 65001, nodeSelector: {matchLabels: {rack: frr}}}
`)
	for _, router := range []string{"bird", "frr"} {
		t.Run(router, func(t *testing.T) { gracefulRestartBehind(t, c, router) })
	}
}

func gracefulRestartBehind(t *testing.T, c *clustertest.Cluster, router string) {
	net0 := map[string]string{"bird": "10.41.0", "frr": "10.42.0"}[router]
	fab := clustertest.NewFabric(t)
	tor := clustertest.NewRouter(t)
	fab.JoinNS(tor, "tor", net0+".254/24")
	var routerLog func() string
	if router == "bird" {
		b := routertest.StartBIRD(t, tor, `router id `+net0+`.254;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; }; }
protocol bgp node { local `+net0+`.254 as 65001; neighbor `+net0+`.1 as 64512; graceful restart on;
  connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
`)
		routerLog = func() string { return b.Birdc("show", "route") + b.Log() }
	} else {
		f := routertest.StartFRR(t, tor, `frr defaults traditional
hostname tor
log stdout informational
router bgp 65001
 bgp router-id `+net0+`.254
 no bgp ebgp-requires-policy
 neighbor `+net0+`.1 remote-as 64512
 neighbor `+net0+`.1 timers connect 1
`)
		routerLog = func() string { return f.Vtysh("show ip route") + f.Log() }
	}
	n := nodetest.NewNodeNS(t)
	fab.Join(n, "g", net0+".1/24")
	c.Start(n, net0+".1", map[string]string{"rack": router}, nil)
	n.WaitReady(30 * time.Second)
	p := c.AddPod(n, n.ConfList("1.0.0"), "gr-web-"+router)
	srv := net.JoinHostPort(p.IPs()[0].String(), "8080")
	nodetest.Serve(t, p.NS, srv, "web")
	dial := func() error {
		return tor.Do(func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp", srv, 300*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) { return dial() == nil, nil }); err != nil {
		t.Fatalf("the router cannot reach the pod: %v\n%s", err, routerLog())
	}
	var sent, lost atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if dial() != nil {
				lost.Add(1)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	n.KillAgent()
	killed := time.Now()
	time.Sleep(2 * time.Second) // the agent is down for 2 s
	n.StartAgent()
	// Graceful restart is over when the new session is up, the router has
	// sent its End-of-RIB (where the capability was negotiated: FRR here
	// is a helper without announcing it) and the agent has announced its
	// pod CIDR again; then ten more probes.
	err := kubetest.Eventually(30*time.Second, func(ctx context.Context) (bool, error) {
		b, err := n.Client().BGP(ctx)
		if err != nil || len(b.Peers) != 1 {
			return false, fmt.Errorf("%+v %v", b.Peers, err)
		}
		p := b.Peers[0]
		return p.State == "Established" && !p.Since.Before(killed.Add(-time.Second)) && (p.EndOfRIB || !p.GracefulRestart) && p.Sent > 0,
			fmt.Errorf("session %+v", p)
	})
	if err == nil {
		after := sent.Load()
		err = kubetest.Eventually(10*time.Second, func(context.Context) (bool, error) { return sent.Load() >= after+10, nil })
	}
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("graceful restart did not finish: %v\n%s\n%s", err, routerLog(), nodetest.Tail(n.AgentLog(), 2000))
	}
	t.Logf("%d of %d probes lost over a SIGKILL and restart, %s as helper", lost.Load(), sent.Load(), router)
	if lost.Load() != 0 || sent.Load() < 30 {
		t.Fatalf("%d of %d probes lost\n%s", lost.Load(), sent.Load(), routerLog())
	}
}

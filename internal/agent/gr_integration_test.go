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
)

// TestGracefulRestart kills an agent with SIGKILL while a pod on another node
// probes a pod on its node every 100 ms. With graceful restart (the default)
// the peer keeps the routes and no probe is lost; without it, probes are lost
// until the agent is back.
func TestGracefulRestart(t *testing.T) {
	c := clustertest.NewCluster(t)
	fab := clustertest.NewFabric(t)
	var nodes []*nodetest.Node
	for i := range 2 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.35.0.%d", i+1)
		fab.Join(n, fmt.Sprintf("g%d", i), addr+"/24")
		c.Start(n, addr, nil, nil)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.WaitReady(30 * time.Second)
	}
	a := c.AddPod(nodes[0], nodes[0].ConfList("1.0.0"), "gr-a")
	b := c.AddPod(nodes[1], nodes[1].ConfList("1.0.0"), "gr-b")
	srv := net.JoinHostPort(b.IPs()[0].String(), "8080")
	nodetest.Serve(t, b.NS, srv, "b")
	if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) {
		_, err := nodetest.Dial(a.NS, srv)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("no path from node 1 to node 2's pod: %v\n%s", err, nodetest.Tail(nodes[0].AgentLog(), 2000))
	}

	// probe dials every 100 ms while during runs and until settled holds
	// (and ten more times after), and returns sent and lost probes.
	probe := func(during func(), settled func(context.Context) (bool, error)) (sent, lost int) {
		var stop atomic.Bool
		var count atomic.Int32
		done := make(chan struct{})
		go func() {
			defer close(done)
			for !stop.Load() {
				sent++
				c, err := dialOnce(a, srv)
				if err != nil {
					lost++
				} else {
					c.Close()
				}
				count.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
		}()
		during()
		err := kubetest.Eventually(30*time.Second, settled)
		if err == nil {
			after := count.Load()
			err = kubetest.Eventually(10*time.Second, func(context.Context) (bool, error) { return count.Load() >= after+10, nil })
		}
		stop.Store(true)
		<-done
		if err != nil {
			t.Fatalf("the sessions did not settle after the restart: %v\n%s", err, nodetest.Tail(nodes[1].AgentLog(), 2000))
		}
		return sent, lost
	}
	var killed time.Time
	restart := func() {
		nodes[1].KillAgent()
		killed = time.Now()
		time.Sleep(2 * time.Second) // the agent is down for 2 s
		nodes[1].StartAgent()
	}
	sent, lost := probe(restart, func(ctx context.Context) (bool, error) { return sessionsUp(ctx, nodes, killed, true) })
	t.Logf("graceful restart on: %d of %d probes lost over a SIGKILL and restart", lost, sent)
	if lost != 0 || sent < 30 {
		t.Fatalf("graceful restart on: %d of %d probes lost", lost, sent)
	}

	// Without graceful restart, the peer flushes the routes at once.
	manifest := "apiVersion: tern.io/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {gracefulRestartSeconds: 0}\n"
	c.Apply(manifest)
	// The change resets the sessions (not the speakers): wait until new
	// ones, without graceful restart, carry the routes and the path works.
	applied := time.Now()
	if err := kubetest.Eventually(30*time.Second, func(ctx context.Context) (bool, error) {
		if ok, err := sessionsUp(ctx, nodes, applied, false); !ok {
			return false, err
		}
		c, err := dialOnce(a, srv)
		if err == nil {
			c.Close()
		}
		return err == nil, err
	}); err != nil {
		t.Fatalf("the sessions did not come back without graceful restart: %v", err)
	}
	sent, lost = probe(restart, func(ctx context.Context) (bool, error) { return sessionsUp(ctx, nodes, killed, false) })
	t.Logf("graceful restart off: %d of %d probes lost over a SIGKILL and restart", lost, sent)
	if lost == 0 {
		t.Fatalf("graceful restart off: no probe lost (%d sent); the test cannot tell the two apart", sent)
	}
}

// sessionsUp reports whether every node has its one session Established
// since after (to the second), with graceful restart negotiated and the
// peer's End-of-RIB received when gr, without graceful restart otherwise, and
// a route learned over it installed.
func sessionsUp(ctx context.Context, nodes []*nodetest.Node, after time.Time, gr bool) (bool, error) {
	for _, n := range nodes {
		b, err := n.Client().BGP(ctx)
		if err != nil {
			return false, err
		}
		if len(b.Peers) != 1 {
			return false, fmt.Errorf("%s: %d sessions", n.Name, len(b.Peers))
		}
		p := b.Peers[0]
		if p.State != "Established" || p.Since.Before(after.Add(-time.Second)) || p.GracefulRestart != gr || (gr && !p.EndOfRIB) || len(b.Routes) == 0 {
			return false, fmt.Errorf("%s: session %+v, %d routes", n.Name, p, len(b.Routes))
		}
	}
	return true, nil
}

func dialOnce(p *nodetest.Pod, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 300*time.Millisecond)
		return err
	})
	return c, err
}

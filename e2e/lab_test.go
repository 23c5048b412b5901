package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
)

// The lab's helpers (internal/labtest), as this package calls them.
func ctx(t *testing.T) context.Context                            { return labtest.Ctx(t) }
func state(t *testing.T) lab.State                                { return tl.State(t) }
func kubectl(t *testing.T, stdin string, args ...string) string   { return tl.Kubectl(t, stdin, args...) }
func waitPods(t *testing.T, ids ...string) map[string]lab.PodInfo { return tl.WaitPods(t, ids...) }
func kubectlErr(t *testing.T, stdin string, args ...string) (string, error) {
	return tl.KubectlErr(t, stdin, args...)
}

// podYAML is a pod pinned to node (any node when empty) serving TCP and UDP
// on ports 80 and 81 (named ports).
func podYAML(ns, name, node string, labels map[string]string) string {
	l := fmt.Sprintf("pod: %s", name)
	for k, v := range labels {
		l += fmt.Sprintf(", %s: %s", k, v)
	}
	return serverPodYAML(ns, name, node, l, "")
}

// serverPodYAML is a lab server pod (lab.ServerImage: `tern-lab serve`)
// pinned to node (any node when empty), labelled with labels (a YAML flow
// mapping's inside). It serves as the light lab's pods do: on TCP 80 and 81
// its "namespace/name" line, then an echo of every line; on UDP 80 and 81 the
// same line for every datagram. Its ports are named serve-PORT-PROTO; extraPorts
// (YAML list items) are declared too, and not served.
func serverPodYAML(ns, name, node, labels, extraPorts string) string {
	nodeLine := ""
	if node != "" {
		nodeLine = "  nodeName: " + node + "\n"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %q, namespace: %q, labels: {%s}}
spec:
%s  terminationGracePeriodSeconds: 1
  containers:
  - name: serve
    image: %s
    env:
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    readinessProbe: {tcpSocket: {port: 81}, periodSeconds: 1}
    ports:
    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
%s---
`, name, ns, labels, nodeLine, lab.ServerImage, extraPorts)
}

func namespace(t *testing.T, name string, labels string) {
	t.Helper()
	kubectl(t, fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {%s}}\n", name, labels), "apply", "-f", "-")
	t.Cleanup(func() { _, _ = kubectlErr(t, "", "delete", "namespace", name, "--wait=false") })
}

func probe(t *testing.T, from lab.PodInfo, to lab.PodInfo, port uint16, proto string) (string, error) {
	return lab.Probe(ctx(t), from.NetNS, netip.AddrPortFrom(to.IPs[0], port), proto, 2*time.Second)
}

// families checks that pod p has one address of each of the lab's families,
// the primary first, and returns them.
func families(t *testing.T, p lab.PodInfo) []netip.Addr {
	t.Helper()
	fams := state(t).Config.Families()
	if len(p.IPs) != len(fams) {
		t.Fatalf("pod %s/%s has addresses %v, want one of each of the lab's %d families", p.Namespace, p.Name, p.IPs, len(fams))
	}
	for i, v6 := range fams {
		if p.IPs[i].Is6() != v6 {
			t.Fatalf("pod %s/%s has addresses %v, not in the lab's family order (%s)", p.Namespace, p.Name, p.IPs, ipFamily)
		}
	}
	return p.IPs
}

// TestPodToPod: every pod reaches every other over TCP and UDP, across nodes
// in a rack (behind BIRD), and across racks (BIRD and FRR), at each of its
// addresses (IPv4 and IPv6 in a dual-stack lab).
func TestPodToPod(t *testing.T) {
	s := state(t)
	if len(s.Nodes) < 4 || len(s.Routers) != 2 {
		t.Fatalf("lab: %d nodes %d routers", len(s.Nodes), len(s.Routers))
	}
	namespace(t, "e2e-conn", "e2e: conn")
	var yaml string
	var ids []string
	for i, n := range s.Nodes[:4] {
		name := fmt.Sprintf("p%d", i+1)
		yaml += podYAML("e2e-conn", name, n.Name, nil)
		ids = append(ids, "e2e-conn/"+name)
	}
	kubectl(t, yaml, "apply", "-f", "-")
	pods := waitPods(t, ids...)
	for _, from := range ids {
		for _, to := range ids {
			for _, ip := range families(t, pods[to]) {
				for _, proto := range []string{"TCP", "UDP"} {
					got, err := lab.Probe(ctx(t), pods[from].NetNS, netip.AddrPortFrom(ip, 80), proto, 2*time.Second)
					if err != nil || got != to {
						t.Errorf("%s -> %s %s:80/%s (%s to %s): %q %v", from, to, ip, proto, pods[from].Node, pods[to].Node, got, err)
					}
				}
			}
		}
	}
}

// TestPodRecreated: a deleted pod's namespace and veth go; the pod created
// again under the same name gets an address and is reachable again.
func TestPodRecreated(t *testing.T) {
	s := state(t)
	namespace(t, "e2e-again", "e2e: again")
	kubectl(t, podYAML("e2e-again", "client", s.Nodes[0].Name, nil)+podYAML("e2e-again", "server", s.Nodes[1].Name, nil), "apply", "-f", "-")
	pods := waitPods(t, "e2e-again/client", "e2e-again/server")
	old := pods["e2e-again/server"]
	if got, err := probe(t, pods["e2e-again/client"], old, 80, "TCP"); err != nil || got != "e2e-again/server" {
		t.Fatalf("before: %q %v", got, err)
	}
	kubectl(t, "", "delete", "pod", "-n", "e2e-again", "server", "--wait=true", "--timeout=60s")
	if _, err := os.Stat(old.NetNS); err == nil {
		t.Errorf("the deleted pod's namespace %s is still there", old.NetNS)
	}
	kubectl(t, podYAML("e2e-again", "server", s.Nodes[1].Name, nil), "apply", "-f", "-")
	pods = waitPods(t, "e2e-again/client", "e2e-again/server")
	if pods["e2e-again/server"].NetNS == old.NetNS {
		t.Errorf("the new pod reuses the old namespace %s", old.NetNS)
	}
	if got, err := probe(t, pods["e2e-again/client"], pods["e2e-again/server"], 80, "TCP"); err != nil || got != "e2e-again/server" {
		t.Fatalf("after recreation (%v): %q %v", pods["e2e-again/server"].IPs, got, err)
	}
}

// TestAgentKilled: a 100 ms TCP probe from rack 2 to a pod in rack 1 loses
// nothing while that pod's node agent is killed with SIGKILL and restarted by
// the lab (graceful restart: BIRD keeps the node's routes, the node's kernel
// keeps its own).
func TestAgentKilled(t *testing.T) {
	s := state(t)
	victim, other := s.Nodes[0], s.Nodes[1] // rack 1 (BIRD), rack 2 (FRR)
	if victim.Rack == other.Rack {
		t.Fatalf("nodes %s and %s share a rack", victim.Name, other.Name)
	}
	namespace(t, "e2e-gr", "e2e: gr")
	kubectl(t, podYAML("e2e-gr", "server", victim.Name, nil)+podYAML("e2e-gr", "client", other.Name, nil), "apply", "-f", "-")
	pods := waitPods(t, "e2e-gr/server", "e2e-gr/client")

	// A probe every 100 ms to each of the server's addresses (both
	// families in a dual-stack lab).
	serverIPs := families(t, pods["e2e-gr/server"])
	var sent, lost atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var wg sync.WaitGroup
			for _, ip := range serverIPs {
				sent.Add(1)
				wg.Go(func() {
					got, err := lab.Probe(context.Background(), pods["e2e-gr/client"].NetNS, netip.AddrPortFrom(ip, 80), "TCP", time.Second)
					if err != nil || got != "e2e-gr/server" {
						lost.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%s to %s: %q %v", time.Now().Format("15:04:05.000"), ip, got, err))
					}
				})
			}
			wg.Wait()
		}
	}()
	// Kill once the probe has been seen working: ten rounds sent.
	if err := kubetest.EventuallyErr(10*time.Second, func() error {
		if n := sent.Load(); n < 10*int64(len(serverIPs)) {
			return fmt.Errorf("%d probes sent", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("the probe does not run: %v", err)
	}
	if err := syscall.Kill(victim.AgentPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent %d: %v", victim.AgentPID, err)
	}
	killed := time.Now()
	// The lab restarts it; wait until it is back and has its session up again.
	var restarted bool
	for time.Since(killed) < 30*time.Second {
		for _, n := range state(t).Nodes {
			if n.Name == victim.Name && n.AgentPID != 0 && n.AgentPID != victim.AgentPID {
				restarted = true
			}
		}
		if restarted {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Graceful restart is over when every session of the new agent is up
	// again and, where graceful restart was negotiated, the peer has sent
	// its End-of-RIB; then ten more probes.
	var settled error
	if restarted {
		settled = kubetest.EventuallyErr(60*time.Second, func() error {
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b, err := lab.NewAgentClient(victim.Socket).BGP(c)
			if err != nil {
				return err
			}
			if len(b.Peers) == 0 {
				return fmt.Errorf("no BGP sessions")
			}
			for _, p := range b.Peers {
				if p.State != "Established" || p.Since.Before(killed.Add(-time.Second)) || p.GracefulRestart && !p.EndOfRIB {
					return fmt.Errorf("session %+v", p)
				}
			}
			return nil
		})
		if settled == nil {
			after := sent.Load()
			settled = kubetest.EventuallyErr(10*time.Second, func() error {
				if n := sent.Load(); n < after+10*int64(len(serverIPs)) {
					return fmt.Errorf("%d probes sent since the sessions came back", n-after)
				}
				return nil
			})
		}
	}
	close(stop)
	<-done
	if !restarted {
		t.Fatalf("the lab did not restart the killed agent within 30 s")
	}
	if settled != nil {
		t.Fatalf("the restarted agent's sessions did not come back: %v", settled)
	}
	t.Logf("probes: %d sent, %d lost over the agent's SIGKILL and restart", sent.Load(), lost.Load())
	if lost.Load() != 0 {
		t.Errorf("%d of %d probes lost (first: %v)", lost.Load(), sent.Load(), firstErr.Load())
	}
}

// TestNodeAddRemove: a node added to the running lab is reachable within
// seconds; removed, its pod CIDR leaves every other node's routing table.
func TestNodeAddRemove(t *testing.T) {
	s := state(t)
	t0 := time.Now()
	out, err := tl.Cmd("node", "add", "--rack", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("node add: %v\n%s", err, out)
	}
	var added lab.NodeState
	for _, n := range state(t).Nodes {
		if n.Number > len(s.Nodes) && n.Number > added.Number {
			added = n
		}
	}
	if added.Name == "" || added.Rack != 2 {
		t.Fatalf("added node: %+v (%s)", added, out)
	}
	namespace(t, "e2e-add", "e2e: add")
	kubectl(t, podYAML("e2e-add", "new", added.Name, nil)+podYAML("e2e-add", "old", s.Nodes[0].Name, nil), "apply", "-f", "-")
	pods := waitPods(t, "e2e-add/new", "e2e-add/old")
	var got string
	for time.Since(t0) < 60*time.Second {
		if got, err = probe(t, pods["e2e-add/old"], pods["e2e-add/new"], 80, "TCP"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != "e2e-add/new" {
		t.Fatalf("pod on the added node %s not reachable from rack 1: %q %v", added.Name, got, err)
	}
	t.Logf("node %s added: its pod reachable from rack 1 %s after `node add`", added.Name, time.Since(t0).Round(10*time.Millisecond))

	cidr := ""
	if st, err := lab.NewAgentClient(added.Socket).Status(ctx(t)); err == nil && len(st.PodCIDRs) > 0 {
		cidr = st.PodCIDRs[0].String()
	}
	if cidr == "" {
		t.Fatal("the added node's agent reports no pod CIDR")
	}
	t1 := time.Now()
	if out, err := tl.Cmd("node", "remove", added.Name).CombinedOutput(); err != nil {
		t.Fatalf("node remove: %v\n%s", err, out)
	}
	if _, err := exec.Command("ip", "netns", "pids", added.NetNS).Output(); err == nil {
		t.Errorf("the removed node's namespace %s is still there", added.NetNS)
	}
	for _, n := range s.Nodes {
		for {
			out, err := exec.Command("ip", "-n", n.NetNS, "route", "show", cidr).Output()
			if err == nil && strings.TrimSpace(string(out)) == "" {
				break
			}
			if time.Since(t1) > 30*time.Second {
				t.Fatalf("%s still routes the removed node's %s: %s", n.Name, cidr, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("node %s removed: its pod CIDR %s gone from every node %s after `node remove` began", added.Name, cidr, time.Since(t1).Round(10*time.Millisecond))
}

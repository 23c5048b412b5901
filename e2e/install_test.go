package e2e

// Tests of tern as a user installs and runs it: the DaemonSet on every node,
// real pods across racks, Services through kube-proxy, a rollout restart.

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/lab"
)

// server is an agnhost netexec pod pinned to node: HTTP on 8080, UDP on 8081.
func server(ns, name, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: web, pod: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  containers:
  - name: agnhost
    image: %s
    args: [netexec, --http-port=8080, --udp-port=8081]
    ports: [{containerPort: 8080, protocol: TCP}, {containerPort: 8081, protocol: UDP}]
    readinessProbe: {httpGet: {path: /hostname, port: 8080}, periodSeconds: 1}
---
`, name, ns, name, node, lab.AgnhostImage)
}

// podInfo is a pod as kubectl shows it: IP is its primary address, IPs
// every address (one per family of the lab).
type podInfo struct {
	Name, Node, IP string
	IPs            []string
}

// serverPods creates namespace ns with one server pod per node, and waits
// until all are ready.
func serverPods(t *testing.T, ns string) []podInfo {
	t.Helper()
	kubectl(t, "", "create", "namespace", ns)
	t.Cleanup(func() { kubectlErr(t, "", "delete", "namespace", ns, "--wait=false") })
	var yaml string
	for i, n := range state(t).Nodes {
		yaml += server(ns, fmt.Sprintf("p%d", i+1), n.Name)
	}
	kubectl(t, yaml, "apply", "-f", "-")
	kubectl(t, "", "-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s")
	out := kubectl(t, "", "-n", ns, "get", "pods", "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIPs[*].ip}{"\n"}{end}`)
	var pods []podInfo
	fams := len(state(t).Config.Families())
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 2+fams {
			t.Fatalf("pod line %q: want a name, a node and %d addresses", l, fams)
		}
		pods = append(pods, podInfo{f[0], f[1], f[2], f[2:]})
	}
	if len(pods) != len(state(t).Nodes) {
		t.Fatalf("%d pods, want one per node", len(pods))
	}
	return pods
}

// dial asks pod from (its netexec) to reach host:port over proto and
// returns what answered (netexec's /dial: the target's hostname).
func dial(t *testing.T, ns, from, host string, port int, proto string) (string, error) {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:8080/dial?request=hostname&protocol=%s&host=%s&port=%d&tries=1", proto, host, port)
	out, err := kubectlErr(t, "", "-n", ns, "exec", from, "--", "curl", "-s", "--max-time", "10", url)
	if err != nil {
		return "", err
	}
	var r struct{ Responses, Errors []string }
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return "", fmt.Errorf("dial answer %q: %w", out, err)
	}
	if len(r.Responses) != 1 {
		return "", fmt.Errorf("dial %s:%d/%s from %s: %v", host, port, proto, from, r.Errors)
	}
	return r.Responses[0], nil
}

// TestInstalledByDaemonSet: what an operator checks after `kubectl apply`:
// an agent pod Ready on every node (host network, the image built here), the
// nodes Ready with their network available, the agent's log through
// kubectl logs.
func TestInstalledByDaemonSet(t *testing.T) {
	s := state(t)
	out := kubectl(t, "", "-n", "tern-system", "get", "pods", "-l", "app.kubernetes.io/name=tern-agent", "-o",
		`jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP} {.status.containerStatuses[0].ready} {.spec.containers[0].image}{"\n"}{end}`)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 4 {
			got[f[0]] = strings.Join(f[1:], " ")
		}
	}
	for _, n := range s.Nodes {
		want := fmt.Sprintf("%s true ghcr.io/tern-net/tern:e2e", n.Address())
		if got[n.Name] != want {
			t.Errorf("agent on %s: %q, want %q (pod IP = node address: host network)", n.Name, got[n.Name], want)
		}
	}
	out = kubectl(t, "", "get", "nodes", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="NetworkUnavailable")].status}{"\n"}{end}`)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) != 3 || f[1] != "True" || f[2] != "False" {
			t.Errorf("node: %q, want Ready True and NetworkUnavailable False", l)
		}
	}
	logs := kubectl(t, "", "-n", "tern-system", "logs", "ds/tern-agent", "-c", "tern-agent")
	if !strings.Contains(logs, "node dataplane programmed; ready") {
		t.Errorf("kubectl logs ds/tern-agent does not show the agent ready:\n%s", logs)
	}
}

// TestPodsAcrossRacks: real pods get addresses from their node's pod CIDR,
// and every pod reaches every other over TCP and UDP, within a rack (behind
// BIRD) and across racks (BIRD and FRR).
func TestPodsAcrossRacks(t *testing.T) {
	pods := serverPods(t, "e2e-racks")
	cidrs := map[string][]netip.Prefix{}
	out := kubectl(t, "", "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDRs[*]}{"\n"}{end}`)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		for _, c := range f[1:] {
			cidrs[f[0]] = append(cidrs[f[0]], netip.MustParsePrefix(c))
		}
	}
	for _, p := range pods {
		for i, ip := range p.IPs {
			if a, err := netip.ParseAddr(ip); err != nil || i >= len(cidrs[p.Node]) || !cidrs[p.Node][i].Contains(a) {
				t.Errorf("%s on %s has %s, not from the node's pod CIDRs %v", p.Name, p.Node, ip, cidrs[p.Node])
			}
		}
	}
	// Every pod reaches every other at each of its addresses.
	for _, from := range pods {
		for _, to := range pods {
			for _, ip := range to.IPs {
				for _, c := range []struct {
					proto string
					port  int
				}{{"http", 8080}, {"udp", 8081}} {
					got, err := dial(t, "e2e-racks", from.Name, ip, c.port, c.proto)
					if err != nil || got != to.Name {
						t.Errorf("%s (%s) -> %s %s (%s) %s: %q %v", from.Name, from.Node, to.Name, ip, to.Node, c.proto, got, err)
					}
				}
			}
		}
	}
}

// TestServices: a ClusterIP Service (dual-stack in a dual-stack lab: a
// ClusterIP of each family) answers from every node's pods, a NodePort on
// every node's addresses; the backend sees the client pod's own address
// (pod-to-ClusterIP traffic is not masqueraded), so NetworkPolicy can tell
// clients apart.
func TestServices(t *testing.T) {
	pods := serverPods(t, "e2e-svc")
	kubectl(t, `apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e-svc}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {pod: p1}
  ports: [{name: http, port: 80, targetPort: 8080}]
`, "apply", "-f", "-")
	ips := strings.Fields(kubectl(t, "", "-n", "e2e-svc", "get", "svc", "web", "-o", "jsonpath={.spec.clusterIPs[*]}"))
	if len(ips) != len(pods[0].IPs) {
		t.Fatalf("the Service has ClusterIPs %v, want one per family of the lab (%d)", ips, len(pods[0].IPs))
	}
	nodePort := strings.TrimSpace(kubectl(t, "", "-n", "e2e-svc", "get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"))
	for i, ip := range ips {
		for _, from := range pods {
			servicesClientIP(t, from, ip, from.IPs[i])
		}
	}
	for _, n := range state(t).Nodes {
		for _, a := range n.Addresses() {
			got, err := kubectlErr(t, "", "-n", "e2e-svc", "exec", pods[len(pods)-1].Name, "--", "curl", "-s", "--max-time", "5",
				"http://"+net.JoinHostPort(a.String(), nodePort)+"/hostname")
			if err != nil || got != "p1" {
				t.Errorf("NodePort %s from %s: %q %v", net.JoinHostPort(a.String(), nodePort), pods[len(pods)-1].Name, got, err)
			}
		}
	}
	// A policy on the backend that admits one client pod: that pod passes
	// through the ClusterIP, another is refused (the policy sees clients'
	// own addresses, not a node's), in every family.
	kubectl(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-p2, namespace: e2e-svc}
spec:
  podSelector: {matchLabels: {pod: p1}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: p2}}}], ports: [{port: 8080}]}]
`, "apply", "-f", "-")
	for _, ip := range ips {
		get := func(from string) error {
			out, err := kubectlErr(t, "", "-n", "e2e-svc", "exec", from, "--", "curl", "-s", "--max-time", "2", "http://"+net.JoinHostPort(ip, "80")+"/hostname")
			if err == nil && out != "p1" {
				err = fmt.Errorf("answered %q", out)
			}
			return err
		}
		err := kubetest.EventuallyErr(30*time.Second, func() error {
			if err := get("p3"); err == nil {
				return fmt.Errorf("p3 still reaches the ClusterIP")
			}
			return nil
		})
		if err != nil {
			t.Errorf("policy admitting p2 only, ClusterIP %s: %v", ip, err)
		}
		if err := get("p2"); err != nil {
			t.Errorf("policy admitting p2 only: p2 through the ClusterIP %s: %v", ip, err)
		}
	}
}

// servicesClientIP checks that pod from reaches the Service at ip, and that
// the backend sees from's own address of ip's family, want.
func servicesClientIP(t *testing.T, from podInfo, ip, want string) {
	t.Helper()
	err := kubetest.EventuallyErr(30*time.Second, func() error {
		out, err := kubectlErr(t, "", "-n", "e2e-svc", "exec", from.Name, "--", "curl", "-s", "--max-time", "5", "http://"+net.JoinHostPort(ip, "80")+"/clientip")
		if err != nil {
			return err
		}
		client, _, _ := net.SplitHostPort(strings.TrimSpace(out))
		if from.Name == "p1" {
			// The backend itself (hairpin): kube-proxy masquerades it, as
			// on any cluster, so that the reply comes back through it.
			if client == "" {
				return fmt.Errorf("no answer: %q", out)
			}
			return nil
		}
		if client != want {
			return fmt.Errorf("the backend saw %q, not the client pod's address %s", out, want)
		}
		return nil
	})
	if err != nil {
		t.Errorf("ClusterIP %s from %s on %s: %v", ip, from.Name, from.Node, err)
	}
}

// TestRolloutRestart: `kubectl rollout restart` of the agents, one node at a
// time, while a pod in rack 1 probes a pod in rack 2 every 100 ms: every
// agent pod is replaced and no probe is lost.
func TestRolloutRestart(t *testing.T) {
	pods := serverPods(t, "e2e-rollout")
	s := state(t)
	var from, to podInfo
	for _, p := range pods {
		switch p.Node {
		case s.Nodes[0].Name:
			from = p
		case s.Nodes[1].Name:
			to = p
		}
	}
	before := kubectl(t, "", "-n", "tern-system", "get", "pods", "-l", "app.kubernetes.io/name=tern-agent", "-o", "jsonpath={.items[*].metadata.uid}")
	// The probe runs in the client pod until told to stop: one HTTP request
	// each 100 ms to each of the server's addresses (both families in a
	// dual-stack lab), each line "ok" or "lost" with the time it was given up.
	// Lost means no answer within 2 s: on 2 cores busy with four agents
	// starting, one answer in 88 once took longer than 1 s (CI, 2026-12-03)
	// with no sign of a loss of routes or rules, which lasts longer than 2 s.
	var urls []string
	for _, ip := range to.IPs {
		urls = append(urls, "http://"+net.JoinHostPort(ip, "8080")+"/hostname")
	}
	loop := fmt.Sprintf(`while [ ! -e /tmp/stop ]; do for u in %s; do if curl -s -o /dev/null --max-time 2 "$u"; then echo ok; else echo "lost $u $(date +%%T.%%N)"; fi; done; sleep 0.1; done`, strings.Join(urls, " "))
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := kubectlErr(t, "", "-n", "e2e-rollout", "exec", from.Name, "--", "sh", "-c", loop)
		done <- result{out, err}
	}()
	kubectl(t, "", "-n", "tern-system", "rollout", "restart", "daemonset/tern-agent")
	kubectl(t, "", "-n", "tern-system", "rollout", "status", "daemonset/tern-agent", "--timeout=180s")
	// Ten probes more after the last agent is back.
	kubectl(t, "", "-n", "e2e-rollout", "exec", from.Name, "--", "sh", "-c", "sleep 1; touch /tmp/stop")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	ok, lost := strings.Count(r.out, "ok"), strings.Count(r.out, "lost")
	t.Logf("probe %s -> %s during the rollout: %d answered, %d lost", from.Node, to.Node, ok, lost)
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "lost") {
			t.Logf("probe %s", l)
		}
	}
	if lost != 0 || ok < 20 {
		t.Errorf("%d probes lost of %d (want 0 lost of at least 20)", lost, ok+lost)
	}
	after := kubectl(t, "", "-n", "tern-system", "get", "pods", "-l", "app.kubernetes.io/name=tern-agent", "-o", "jsonpath={.items[*].metadata.uid}")
	for _, uid := range strings.Fields(before) {
		if strings.Contains(after, uid) {
			t.Errorf("agent pod %s was not replaced", uid)
		}
	}
	if n := len(strings.Fields(after)); n != len(s.Nodes) {
		t.Errorf("%d agent pods after the rollout, want %d", n, len(s.Nodes))
	}
}

// TestClusterIPFromOutside: with the cluster IP range advertised (the lab's
// BGPConfiguration has advertise.serviceClusterIPs), a host behind either
// top-of-rack router (BIRD and FRR) reaches a ClusterIP Service. Each router
// routes the range over every node of its rack (ECMP), and no node imports
// it: kube-proxy serves the range on every node.
func TestClusterIPFromOutside(t *testing.T) {
	pods := serverPods(t, "e2e-outside")
	kubectl(t, `apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e-outside}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`, "apply", "-f", "-")
	ips := strings.Fields(kubectl(t, "", "-n", "e2e-outside", "get", "svc", "web", "-o", "jsonpath={.spec.clusterIPs[*]}"))
	backends := map[string]bool{}
	for _, p := range pods {
		backends[p.Name] = true
	}
	s := state(t)
	if len(s.Routers) < 2 {
		t.Fatalf("the lab has %d routers, want 2", len(s.Routers))
	}
	ranges := s.Config.ServiceCIDRs()
	if len(ips) != len(ranges) {
		t.Fatalf("the Service has ClusterIPs %v, want one in each of %v", ips, ranges)
	}
	ipIn := func(netns, svcRange string) (string, error) {
		fam := "-4"
		if strings.Contains(svcRange, ":") {
			fam = "-6"
		}
		out, err := exec.Command("ip", "-n", netns, fam, "route", "show", svcRange).CombinedOutput()
		return string(out), err
	}
	for i, ip := range ips {
		svcRange := ranges[i]
		for _, r := range s.Routers {
			var rack []string
			for _, n := range s.Nodes {
				if n.Rack == r.Rack {
					rack = append(rack, n.Addresses()[i].String())
				}
			}
			slices.Sort(rack)
			err := kubetest.EventuallyErr(30*time.Second, func() error {
				out, err := ipIn(r.NetNS, svcRange)
				if err != nil {
					return err
				}
				var hops []string
				for _, f := range strings.Split(out, "\n") {
					if fs := strings.Fields(f); len(fs) > 2 && (fs[0] == "nexthop" || fs[0] == svcRange) && fs[1] == "via" {
						hops = append(hops, fs[2])
					}
				}
				slices.Sort(hops)
				if !slices.Equal(hops, rack) {
					return fmt.Errorf("next hops %v, want the rack's nodes %v:\n%s", hops, rack, out)
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s router of rack %d, route to %s: %v", r.Kind, r.Rack, svcRange, err)
			}
			client := lab.ClientName(r.Rack)
			url := "http://" + net.JoinHostPort(ip, "80") + "/hostname"
			get := func() (string, error) {
				out, err := tl.Cmd("exec", client, "--", "curl", "-s", "--max-time", "3", url).CombinedOutput()
				if err != nil {
					return "", fmt.Errorf("%w: %s", err, out)
				}
				if !backends[string(out)] {
					return "", fmt.Errorf("answered %q, not a backend of the Service", out)
				}
				return string(out), nil
			}
			if err := kubetest.EventuallyErr(30*time.Second, func() error { _, err := get(); return err }); err != nil {
				t.Errorf("ClusterIP %s from %s (behind rack %d's %s router): %v", ip, client, r.Rack, r.Kind, err)
				continue
			}
			seen := map[string]bool{}
			for range 8 {
				got, err := get()
				if err != nil {
					t.Errorf("ClusterIP %s from %s: %v", ip, client, err)
					break
				}
				seen[got] = true
			}
			t.Logf("ClusterIP %s from %s (rack %d, %s): answered by %v", ip, client, r.Rack, r.Kind, slices.Sorted(maps.Keys(seen)))
		}
		for _, n := range s.Nodes {
			if out, err := ipIn(n.NetNS, svcRange); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("%s has a route for the Service range %s (only kube-proxy should serve it): %q %v", n.Name, svcRange, out, err)
			}
		}
	}
}

package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DemoPods are the demo's pods: two namespaces, spread over the nodes so that
// traffic crosses nodes and, with several racks, racks.
var demoNamespaces = []string{"shop", "bank"}

// DemoManifest places the demo's pods on nodes (by name), each serving TCP
// and UDP 80: on real nodes agnhost containers that answer with their host
// name (<namespace>-<app>), on light ones tern-lab's own server.
func DemoManifest(nodes []NodeState, real bool) string {
	var b strings.Builder
	for _, ns := range demoNamespaces {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {demo: %s}}\n---\n", ns, ns)
	}
	i := 0
	for _, ns := range demoNamespaces {
		for _, app := range []string{"web", "db"} {
			n := nodes[i%len(nodes)]
			// With racks, alternate racks first: nodes are numbered round-robin over racks.
			i++
			if real {
				fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[2]s, labels: {app: %[1]s}}
spec:
  nodeName: %[3]s
  hostname: %[2]s-%[1]s
  terminationGracePeriodSeconds: 0
  containers:
  - name: server
    image: %[4]s
    args: [serve-hostname, --http=false, --tcp, --udp, --port=80]
    ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 80, protocol: UDP}]
---
`, app, ns, n.Name, AgnhostImage)
				continue
			}
			fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  nodeName: %s
  containers:
  - name: server
    image: %s
    ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]
---
`, app, ns, app, n.Name, ServerImage)
		}
	}
	return b.String()
}

// demoPolicy isolates bank/db for ingress: only pods app=web of namespace
// bank may connect.
const demoPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web-only, namespace: bank}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    ports:
    - {protocol: TCP, port: 80}
`

// Demo runs the lab's demo against a ready lab.
func Demo(ctx context.Context, c *Client, out io.Writer) error {
	s, err := c.State(ctx)
	if err != nil {
		return err
	}
	if len(s.Nodes) == 0 {
		return fmt.Errorf("the lab has no nodes")
	}
	kubectl := func(stdin string, args ...string) error {
		fmt.Fprintf(out, "$ kubectl %s\n", strings.Join(args, " "))
		cmd := exec.Command(filepath.Join(kubeBin(s), "kubectl"), append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), out, out
		return cmd.Run()
	}
	fmt.Fprintf(out, "\n== Pods in two namespaces, on different nodes%s\n", map[bool]string{true: " and racks", false: ""}[s.Config.Racks > 1])
	if err := kubectl(DemoManifest(s.Nodes, s.Config.Real), "apply", "-f", "-"); err != nil {
		return err
	}
	var want []string
	for _, ns := range demoNamespaces {
		for _, app := range []string{"web", "db"} {
			want = append(want, ns+"/"+app)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		pods, err := c.Pods(ctx)
		if err == nil && countRunning(pods, want) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo pods not running after 90 s")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err := kubectl("", "get", "pods", "-A", "-o", "wide", "-l", "app in (web,db)"); err != nil {
		return err
	}
	fmt.Fprintln(out, "\n== Connectivity: every pod to every pod's TCP port 80 (ok = answered by that pod)")
	if err := Matrix(ctx, c, want, 80, "TCP", out); err != nil {
		return err
	}
	fmt.Fprintln(out, "\n== NetworkPolicy: bank/db accepts connections only from pods app=web of its own namespace")
	if err := kubectl(demoPolicy, "apply", "-f", "-"); err != nil {
		return err
	}
	// The agents apply it within a reconcile; wait until shop/web is refused.
	all, _ := c.Pods(ctx)
	var from, to PodInfo
	for _, p := range all {
		switch p.Namespace + "/" + p.Name {
		case "shop/web":
			from = p
		case "bank/db":
			to = p
		}
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && len(to.IPs) > 0; {
		if _, err := Probe(ctx, from.NetNS, netip.AddrPortFrom(to.IPs[0], 80), "TCP", 300*time.Millisecond); err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := Matrix(ctx, c, want, 80, "TCP", out); err != nil {
		return err
	}
	for _, n := range s.Nodes {
		if n.Name == to.Node {
			fmt.Fprintf(out, "\n$ ternctl policy show bank/db   (on %s)\n", n.Name)
			cmd := NSCommand(n.NetNS, filepath.Join(s.Config.BinDir, "ternctl"), "--socket", n.Socket, "policy", "show", "bank/db")
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Run(); err != nil {
				return err
			}
		}
	}
	node := s.Nodes[0]
	fmt.Fprintf(out, "\n== BGP on %s (ternctl node status, run inside the node)\n", node.Name)
	cmd := NSCommand(node.NetNS, filepath.Join(s.Config.BinDir, "ternctl"), "--socket", node.Socket, "node", "status")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nTry: export KUBECONFIG=%s; kubectl get nodes -o wide\n     tern-lab probe shop/web bank/db:80   (refused by the policy)\n     kubectl delete networkpolicy -n bank db-from-web-only\n     tern-lab down\n", s.Kubeconfig)
	return nil
}

func kubeBin(s State) string {
	out, err := exec.Command("bash", filepath.Join(s.Config.Root, "hack", "kube-env.sh"), "bindir").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func countRunning(pods []PodInfo, want []string) int {
	n := 0
	for _, p := range pods {
		for _, w := range want {
			if p.Namespace+"/"+p.Name == w && len(p.IPs) > 0 {
				n++
			}
		}
	}
	return n
}

// Matrix probes from every pod to every pod on port/proto and prints the
// result as a matrix.
func Matrix(ctx context.Context, c *Client, pods []string, port uint16, proto string, out io.Writer) error {
	all, err := c.Pods(ctx)
	if err != nil {
		return err
	}
	byID := map[string]PodInfo{}
	for _, p := range all {
		byID[p.Namespace+"/"+p.Name] = p
	}
	res := make([][]string, len(pods))
	var wg sync.WaitGroup
	for i, from := range pods {
		res[i] = make([]string, len(pods))
		for j, to := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				src, dst := byID[from], byID[to]
				if len(dst.IPs) == 0 || src.NetNS == "" {
					res[i][j] = "?"
					return
				}
				reply, err := Probe(ctx, src.NetNS, netip.AddrPortFrom(dst.IPs[0], port), proto, 2*time.Second)
				switch {
				case err == nil && (reply == to || reply == strings.Replace(to, "/", "-", 1)):
					// Light pods answer ns/name, real ones (agnhost) their host name ns-name.
					res[i][j] = "ok"
				case err == nil:
					res[i][j] = "wrong:" + reply
				default:
					res[i][j] = "--"
				}
			}()
		}
	}
	wg.Wait()
	w := 0
	for _, p := range pods {
		w = max(w, len(p))
	}
	fmt.Fprintf(out, "%-*s", w+2, "from \\ to")
	for _, p := range pods {
		fmt.Fprintf(out, "%-*s", w+2, p)
	}
	fmt.Fprintln(out)
	for i, p := range pods {
		fmt.Fprintf(out, "%-*s", w+2, p)
		for j := range pods {
			fmt.Fprintf(out, "%-*s", w+2, res[i][j])
		}
		fmt.Fprintln(out)
	}
	_ = os.Stdout.Sync()
	return nil
}

package lab

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/tern-net/tern/internal/conformance"
)

// ControlPlaneNetNS is the name of the control plane's network namespace in
// a lab of real nodes whose namespaces carry prefix.
func ControlPlaneNetNS(prefix string) string { return prefix + "-cp" }

// Conformance prepares runs of Kubernetes' e2e suite on the running lab s:
// e2e.test and the ginkgo CLI (built into the cache when missing, which
// takes minutes), the suite inside the control plane's namespace with the
// control plane's own kubeconfig (from there the API server is on loopback
// and the nodes, pods and Services are across the fabric, as from a
// machine in the data centre), and a report that names what ran: the
// versions of every part and the lab's topology.
func Conformance(ctx context.Context, s State, outDir string, procs int) (conformance.Options, conformance.Report, error) {
	var o conformance.Options
	var r conformance.Report
	if !s.Config.Real {
		return o, r, errors.New("Kubernetes' e2e suite needs real nodes (a lab started without --light)")
	}
	if s.Phase != PhaseReady {
		return o, r, fmt.Errorf("the lab is %s, not ready", s.Phase)
	}
	hack := func(script string, args ...string) (string, error) {
		return hackScript(ctx, s.Config.Root, script, args...)
	}
	if _, err := hack("kube-env.sh", "build", "e2e"); err != nil {
		return o, r, err
	}
	bin, err := hack("kube-env.sh", "bindir")
	if err != nil {
		return o, r, err
	}
	o = conformance.Options{
		E2ETest:    filepath.Join(bin, "e2e.test"),
		Ginkgo:     filepath.Join(bin, "ginkgo"),
		Kubeconfig: filepath.Join(s.KubeDir, "kubeconfig"),
		NetNS:      NSPath(ControlPlaneNetNS(s.Config.Prefix)),
		Procs:      procs,
		OutDir:     outDir,
		Family:     cmp.Or(s.Config.IPFamily, IPv4),
	}

	versions, err := hack("node-env.sh", "versions")
	if err != nil {
		return o, r, err
	}
	commit := "unknown"
	if out, err := exec.CommandContext(ctx, "git", "-C", s.Config.Root, "describe", "--always", "--dirty").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	r.Versions = append(r.Versions, [2]string{"tern", commit})
	for _, l := range strings.Split(versions, "\n") {
		if name, v, ok := strings.Cut(l, " "); ok {
			if name == "kubernetes" {
				name = "Kubernetes (control plane, kubelet, kube-proxy, e2e.test)"
			}
			r.Versions = append(r.Versions, [2]string{name, v})
		}
	}
	if v, err := hack("npapi.sh", "version"); err == nil {
		r.Versions = append(r.Versions, [2]string{"network-policy-api (ClusterNetworkPolicy CRD and conformance suite)", v})
	}
	if out, err := exec.CommandContext(ctx, o.Ginkgo, "version").Output(); err == nil {
		r.Versions = append(r.Versions, [2]string{"ginkgo", strings.TrimSpace(string(out))})
	}
	for _, pkg := range [][2]string{{"BIRD", "bird2"}, {"FRR", "frr"}} {
		if out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Version}", pkg[1]).Output(); err == nil {
			r.Versions = append(r.Versions, [2]string{pkg[0], pkg[1] + " " + string(out) + " (Debian)"})
		}
	}
	if out, err := exec.CommandContext(ctx, "uname", "-r").Output(); err == nil {
		r.Versions = append(r.Versions, [2]string{"Linux kernel", strings.TrimSpace(string(out))})
	}
	r.Versions = append(r.Versions, [2]string{"Go (tern-lab)", runtime.Version()})
	r.Lab = describe(s)
	return o, r, nil
}

// hackScript runs one of tern's hack/ scripts and returns its output,
// trimmed; its error carries the end of the script's stderr.
func hackScript(ctx context.Context, root, script string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(root, "hack", script)}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, tail(string(ee.Stderr), 2000))
		}
		return "", fmt.Errorf("hack/%s %s: %w", script, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// describe says in words what the lab is.
func describe(s State) string {
	var b strings.Builder
	c := s.Config
	proxy := c.ProxyMode
	if proxy == "" {
		proxy = "iptables"
	}
	family := map[string]string{"": "IPv4", IPv4: "IPv4", IPv6: "IPv6-only", Dual: "dual-stack (IPv4 primary)"}[c.IPFamily]
	fmt.Fprintf(&b, "`tern-lab up --nodes %d --racks %d --router %s --ip-family %s`: %d real %s nodes (each its own kubelet, containerd, runc and kube-proxy in %s mode; tern installed by `kubectl apply -k` and run by its DaemonSet)",
		c.Nodes, c.Racks, c.Router, cmp.Or(c.IPFamily, IPv4), len(s.Nodes), family, proxy)
	if len(s.Routers) == 0 {
		b.WriteString(" on one segment, in a node-to-node BGP mesh.")
	} else {
		var rs []string
		for _, r := range s.Routers {
			n := 0
			for _, x := range s.Nodes {
				if x.Rack == r.Rack {
					n++
				}
			}
			kind := map[string]string{RouterBIRD: "BIRD", RouterFRR: "FRR"}[r.Kind]
			nodes := "nodes"
			if n == 1 {
				nodes = "node"
			}
			rs = append(rs, fmt.Sprintf("rack %d (%d %s) behind %s (AS %d)", r.Rack, n, nodes, kind, r.AS))
		}
		fmt.Fprintf(&b, " in %s; the routers peer on a spine, so traffic between racks crosses both.", strings.Join(rs, " and "))
	}
	b.WriteString(" The suite runs in the control plane's network namespace, on the spine.")
	return b.String()
}

// Package manifests holds the YAML that `kubectl apply -f manifests/` installs;
// its tests apply it to a real API server.
package manifests_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/tern-net/tern/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

const agentSA = "system:serviceaccount:tern-system:tern-agent"

// TestManifestsInstall applies the manifests to a real API server: a
// server-side dry run first, then for real, then proves the agent's grants
// and refusals with kubectl auth can-i.
func TestManifestsInstall(t *testing.T) {
	env := kubetest.Start(t)
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := env.Kubectl(t, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	// A dry run needs the namespace to exist for the namespaced objects.
	kubectl("apply", "-f", "00-namespace.yaml")
	out := kubectl("apply", "--dry-run=server", "-f", ".")
	for _, want := range []string{
		"customresourcedefinition.apiextensions.k8s.io/bgppeers.tern.io created (server dry run)",
		"daemonset.apps/tern-agent created (server dry run)",
		"clusterrole.rbac.authorization.k8s.io/tern-agent created (server dry run)",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run lacks %q:\n%s", want, out)
		}
	}
	kubectl("apply", "-f", ".")
	kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/bgppeers.tern.io", "crd/bgpconfigurations.tern.io",
		"crd/clusternetworkpolicies.policy.networking.k8s.io")

	for _, c := range []struct {
		verb, resource, ns string
		want               string
	}{
		{"list", "nodes", "", "yes"},
		{"watch", "nodes", "", "yes"},
		{"watch", "namespaces", "", "yes"},
		{"watch", "networkpolicies.networking.k8s.io", "", "yes"},
		{"watch", "bgpconfigurations.tern.io", "", "yes"},
		{"watch", "pods", "", "yes"},
		{"list", "networkpolicies.networking.k8s.io", "", "yes"},
		{"list", "endpointslices.discovery.k8s.io", "", "yes"},
		{"watch", "bgppeers.tern.io", "", "yes"},
		{"watch", "clusternetworkpolicies.policy.networking.k8s.io", "", "yes"},
		{"list", "clusternetworkpolicies.policy.networking.k8s.io", "", "yes"},
		{"patch", "clusternetworkpolicies.policy.networking.k8s.io --subresource=status", "", "yes"},
		{"patch", "clusternetworkpolicies.policy.networking.k8s.io", "", "no"},
		{"create", "clusternetworkpolicies.policy.networking.k8s.io", "", "no"},
		{"update", "leases.coordination.k8s.io/tern-agent-status", "tern-system", "yes"},
		{"get", "leases.coordination.k8s.io/tern-agent-status", "tern-system", "yes"},
		{"create", "leases.coordination.k8s.io", "tern-system", "yes"},
		{"update", "leases.coordination.k8s.io/kube-controller-manager", "kube-system", "no"},
		{"update", "leases.coordination.k8s.io/other", "tern-system", "no"},
		{"patch", "nodes --subresource=status", "", "yes"},
		{"update", "nodes --subresource=status", "", "no"},
		{"list", "secrets", "tern-system", "yes"},
		{"watch", "secrets", "tern-system", "yes"},
		{"get", "secrets", "tern-system", "yes"},
		{"list", "secrets", "kube-system", "no"},
		{"watch", "secrets", "default", "no"},
		{"list", "secrets", "", "no"},
		{"get", "secrets", "kube-system", "no"},
		{"create", "pods", "default", "no"},
		{"delete", "pods", "default", "no"},
		{"update", "nodes", "", "no"},
		{"patch", "nodes", "", "no"},
		{"create", "bgppeers.tern.io", "", "no"},
		{"update", "configmaps", "tern-system", "no"},
	} {
		args := append([]string{"auth", "can-i", c.verb}, strings.Fields(c.resource)...)
		args = append(args, "--as", agentSA)
		if c.ns != "" {
			args = append(args, "-n", c.ns)
		}
		out, _ := env.Kubectl(t, args...) // exit code 1 means "no"
		lines := strings.Fields(out)      // warnings about cluster-scoped resources come first
		if len(lines) == 0 {
			t.Errorf("kubectl auth can-i %v printed nothing", args)
			continue
		}
		if got := lines[len(lines)-1]; got != c.want {
			t.Errorf("can tern-agent %s %s (ns %q)? %q, want %q", c.verb, c.resource, c.ns, got, c.want)
		}
	}
}

// TestCustomResourcesValidate proves that the API server rejects bad
// BGPConfiguration and BGPPeer objects with messages a person understands,
// and accepts good ones (with defaults filled in).
func TestCustomResourcesValidate(t *testing.T) {
	env := kubetest.Start(t)
	if out, err := env.Kubectl(t, "apply", "-f", "01-crds.yaml"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=30s", "crd/bgppeers.tern.io", "crd/bgpconfigurations.tern.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	peer := func(name, spec string) string {
		return fmt.Sprintf("apiVersion: tern.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: %s}\nspec: %s\n", name, spec)
	}
	config := func(name, spec string) string {
		return fmt.Sprintf("apiVersion: tern.io/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: %s}\nspec: %s\n", name, spec)
	}
	cases := []struct {
		name, yaml string
		reject     string // "" accepts
	}{
		{"peer ok", peer("tor1", "{peerIP: 10.0.0.1, asNumber: 65001, nodeSelector: {matchLabels: {rack: r1}}, holdTimeSeconds: 90, keepaliveSeconds: 30}"), ""},
		{"peer ok IPv6 4-byte AS", peer("tor2", "{peerIP: '2001:db8::1', asNumber: 4200000001, node: node-1, ebgpMultihop: 2}"), ""},
		{"peer IP", peer("bad-ip", "{peerIP: 10.0.0.300, asNumber: 65001}"), "peerIP must be an IP address"},
		{"peer AS 0", peer("bad-as", "{peerIP: 10.0.0.1, asNumber: 0}"), "spec.asNumber: Invalid value: 0: spec.asNumber in body should be greater than or equal to 1"},
		{"peer AS too big", peer("bad-as2", "{peerIP: 10.0.0.1, asNumber: 4294967296}"), "should be less than or equal to 4294967295"},
		{"peer without AS", peer("no-as", "{peerIP: 10.0.0.1}"), "spec.asNumber: Required value"},
		{"peer node and selector", peer("both", "{peerIP: 10.0.0.1, asNumber: 65001, node: n1, nodeSelector: {matchLabels: {a: b}}}"), "set node or nodeSelector, not both"},
		{"peer hold time 2", peer("hold", "{peerIP: 10.0.0.1, asNumber: 65001, holdTimeSeconds: 2}"), "holdTimeSeconds must be 0 or at least 3"},
		{"peer keepalive", peer("ka", "{peerIP: 10.0.0.1, asNumber: 65001, holdTimeSeconds: 9, keepaliveSeconds: 5}"), "keepaliveSeconds must be at most a third of holdTimeSeconds"},
		{"peer keepalive vs default hold", peer("ka2", "{peerIP: 10.0.0.1, asNumber: 65001, keepaliveSeconds: 120}"), "(90 when not set)"},
		{"peer keepalive ok with default hold", peer("ka3", "{peerIP: 10.0.0.1, asNumber: 65001, keepaliveSeconds: 30}"), ""},
		{"peer no keepalives", peer("ka4", "{peerIP: 10.0.0.1, asNumber: 65001, holdTimeSeconds: 0, keepaliveSeconds: 0}"), ""},
		{"peer selector operator", peer("sel", "{peerIP: 10.0.0.1, asNumber: 65001, nodeSelector: {matchExpressions: [{key: rack, operator: In}]}}"), "In and NotIn need values"},
		{"peer secret ref", peer("pw", "{peerIP: 10.0.0.1, asNumber: 65001, passwordSecretRef: {name: bgp}}"), "spec.passwordSecretRef.key: Required value"},
		{"config ok", config("default", "{asNumber: 64512, nodeToNodeMesh: false, communities: ['64512:100', '4200000000:1:2'], advertise: {serviceClusterIPs: [10.96.0.0/12]}}"), ""},
		{"config name", config("mine", "{asNumber: 64512}"), `the BGPConfiguration must be named "default"`},
		{"config community", config("default", "{communities: ['70000:1']}"), `a community is "AS:value"`},
		{"config CIDR", config("default", "{advertise: {serviceExternalIPs: [10.0.0.1]}}"), "must be a CIDR"},
		{"config two IPv4 cluster IP ranges", config("default", "{advertise: {serviceClusterIPs: [10.96.0.0/12, 10.112.0.0/12]}}"), "at most one Service cluster IP range per address family"},
		{"config dual-stack cluster IP ranges", config("default", "{advertise: {serviceClusterIPs: [10.96.0.0/12, 'fd96::/108']}}"), ""},
		{"config graceful restart", config("default", "{gracefulRestartSeconds: 5000}"), "should be less than or equal to 4095"},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, fmt.Sprintf("obj%d.yaml", i))
			if err := os.WriteFile(f, []byte(c.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := env.Kubectl(t, "apply", "--dry-run=server", "-f", f)
			switch {
			case c.reject == "" && err != nil:
				t.Fatalf("rejected a good object: %v\n%s", err, out)
			case c.reject != "" && err == nil:
				t.Fatalf("accepted a bad object:\n%s", out)
			case c.reject != "" && !strings.Contains(out, c.reject):
				t.Fatalf("rejected, but the message lacks %q:\n%s", c.reject, out)
			}
		})
	}
	// Defaults are filled in by the server.
	f := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(f, []byte(config("default", "{}")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := env.Kubectl(t, "apply", "--dry-run=server", "-o", "jsonpath={.spec}", "-f", f)
	if err != nil || !strings.Contains(out, `"asNumber":64512`) || !strings.Contains(out, `"nodeToNodeMesh":true`) || !strings.Contains(out, `"gracefulRestartSeconds":120`) {
		t.Fatalf("defaults: %v %s", err, out)
	}
}

// TestDaemonSetReadsConfig checks, without an API server, that every
// setting of the agent in the ConfigMap reaches it: each key the DaemonSet's
// environment takes from tern-config exists there, each $(VAR) of the
// agent's arguments is in its environment, and the NAT settings are passed
// per family with their defaults (IPv4 on, IPv6 off: README, "IPv6 and NAT").
func TestDaemonSetReadsConfig(t *testing.T) {
	var cm corev1.ConfigMap
	var ds appsv1.DaemonSet
	for f, obj := range map[string]any{"03-config.yaml": &cm, "04-daemonset.yaml": &ds} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	var agent *corev1.Container
	for i, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "agent" || strings.Contains(c.Image, "tern") {
			agent = &ds.Spec.Template.Spec.Containers[i]
			break
		}
	}
	if agent == nil {
		t.Fatal("no agent container in the DaemonSet")
	}
	env := map[string]string{} // variable → ConfigMap key
	for _, e := range agent.Env {
		env[e.Name] = ""
		if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil && r.ConfigMapKeyRef.Name == cm.Name {
			env[e.Name] = r.ConfigMapKeyRef.Key
			if _, ok := cm.Data[r.ConfigMapKeyRef.Key]; !ok {
				t.Errorf("env %s: key %q is not in ConfigMap %s", e.Name, r.ConfigMapKeyRef.Key, cm.Name)
			}
		}
	}
	args := map[string]string{} // flag → ConfigMap key
	for _, a := range append(slices.Clone(agent.Command), agent.Args...) {
		flag, val, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(val, "$(") {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(val, "$("), ")")
		key, ok := env[name]
		if !ok {
			t.Errorf("argument %s: $(%s) is not in the agent's environment", a, name)
		}
		args[flag] = key
	}
	for flag, want := range map[string]struct{ key, value string }{
		"--nat-outgoing":      {"nat-outgoing", "true"},
		"--nat-outgoing-ipv6": {"nat-outgoing-ipv6", "false"},
		"--cluster-cidr":      {"cluster-cidr", "10.244.0.0/16"},
	} {
		if args[flag] != want.key {
			t.Errorf("%s comes from ConfigMap key %q, want %q", flag, args[flag], want.key)
		}
		if got := cm.Data[want.key]; got != want.value {
			t.Errorf("ConfigMap %s: %s is %q, want %q", cm.Name, want.key, got, want.value)
		}
	}
}

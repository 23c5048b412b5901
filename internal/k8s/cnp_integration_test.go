package k8s_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/internal/kubetest"
)

// experimentalCRD is the module's experimental-channel CRD (it has the
// nodes and domainNames peers tern does not support, which the standard
// channel's schema prunes).
func experimentalCRD(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("go mod download: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	return filepath.Join(mod.Dir, "config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml")
}

// TestClusterPoliciesWatchedAndStatusWritten: without the API the policy
// snapshot has no ClusterNetworkPolicies (and is not held back); once the
// CRD is installed, the agent watches it, the policies reach the snapshot
// as typed objects, and the agent holding the Lease writes each one's
// condition: Enforced, or FailedClosed saying what is not supported.
func TestClusterPoliciesWatchedAndStatusWritten(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.NewNamespace(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	w := k8s.NewWatcher(env.Client, dyn, "status-node", "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.WriteClusterPolicyStatus(ns)
	if _, err := w.ClusterPolicies(); err != k8s.ErrClusterPoliciesNotSynced {
		t.Fatalf("before the watch: %v, want ErrClusterPoliciesNotSynced", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	if err := w.Start(wctx, func() {}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.EventuallyErr(15*time.Second, func() error {
		ps, err := w.ClusterPolicies()
		if err == nil && len(ps) != 0 {
			return fmt.Errorf("%d policies without the API", len(ps))
		}
		return err
	}); err != nil {
		t.Fatalf("without the ClusterNetworkPolicy API: %v", err)
	}

	if out, err := env.Kubectl(t, "apply", "-f", experimentalCRD(t)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = env.Kubectl(t, "delete", "crd", "clusternetworkpolicies.policy.networking.k8s.io") })
	if out, err := env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=30s", "crd/clusternetworkpolicies.policy.networking.k8s.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gvr := k8s.ClusterNetworkPolicyVersions[0]
	create := func(name string, spec map[string]any) {
		t.Helper()
		u := unstructuredOf(map[string]any{"apiVersion": gvr.GroupVersion().String(), "kind": "ClusterNetworkPolicy",
			"metadata": map[string]any{"name": name}, "spec": spec})
		if _, err := dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	create("deny-ops", map[string]any{"tier": "Admin", "priority": int64(10),
		"subject": map[string]any{"namespaces": map[string]any{}},
		"ingress": []any{map[string]any{"action": "Deny", "from": []any{map[string]any{"namespaces": map[string]any{"matchLabels": map[string]any{"team": "ops"}}}},
			"protocols": []any{map[string]any{"tcp": map[string]any{"destinationPort": map[string]any{"range": map[string]any{"start": int64(8000), "end": int64(8100)}}}}}}}})
	create("nodes-pass", map[string]any{"tier": "Baseline", "priority": int64(1),
		"subject": map[string]any{"pods": map[string]any{"namespaceSelector": map[string]any{}, "podSelector": map[string]any{"matchLabels": map[string]any{"app": "db"}}}},
		"egress":  []any{map[string]any{"action": "Pass", "to": []any{map[string]any{"nodes": map[string]any{}}}}}})

	// The snapshot has both, typed.
	var got map[string]*cnpv1.ClusterNetworkPolicy
	if err := kubetest.EventuallyErr(30*time.Second, func() error {
		ps, err := w.ClusterPolicies()
		if err != nil {
			return err
		}
		got = map[string]*cnpv1.ClusterNetworkPolicy{}
		for _, p := range ps {
			got[p.Name] = p
		}
		if len(got) != 2 {
			return fmt.Errorf("policies %v", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("after the CRD: %v", err)
	}
	if p := got["deny-ops"]; p.Spec.Tier != cnpv1.AdminTier || p.Spec.Priority != 10 || len(p.Spec.Ingress) != 1 ||
		p.Spec.Ingress[0].Protocols[0].TCP.DestinationPort.Range.End != 8100 {
		t.Errorf("deny-ops as the snapshot has it: %+v", p.Spec)
	}
	in, err := w.PolicyInput()
	if err != nil || len(in.ClusterPolicies) != 2 {
		t.Fatalf("PolicyInput: %d ClusterPolicies, %v", len(in.ClusterPolicies), err)
	}

	// The condition of each, written by this agent (the Lease's holder).
	cond := func(name string) (*metav1.Condition, error) {
		u, err := dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		var p cnpv1.ClusterNetworkPolicy
		data, _ := u.MarshalJSON()
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, err
		}
		c := apimeta.FindStatusCondition(p.Status.Conditions, k8s.ClusterPolicyCondition)
		if c == nil {
			return nil, fmt.Errorf("%s: no %s condition yet", name, k8s.ClusterPolicyCondition)
		}
		if c.ObservedGeneration != p.Generation {
			return nil, fmt.Errorf("%s: condition of generation %d, the policy's is %d", name, c.ObservedGeneration, p.Generation)
		}
		return c, nil
	}
	for name, want := range map[string]struct {
		status  metav1.ConditionStatus
		reason  string
		message string
	}{
		"deny-ops":   {metav1.ConditionTrue, k8s.ReasonEnforced, "as written"},
		"nodes-pass": {metav1.ConditionFalse, k8s.ReasonFailedClosed, "selects nodes or domain names, which tern does not support yet: the Pass rule denies everything"},
	} {
		var c *metav1.Condition
		if err := kubetest.EventuallyErr(30*time.Second, func() (err error) { c, err = cond(name); return err }); err != nil {
			t.Fatal(err)
		}
		if c.Status != want.status || c.Reason != want.reason || !strings.Contains(c.Message, want.message) {
			t.Errorf("%s: condition %+v, want %s %s %q", name, c, want.status, want.reason, want.message)
		}
	}
	lease, err := env.Client.CoordinationV1().Leases(ns).Get(ctx, k8s.StatusLease, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "status-node" {
		t.Errorf("Lease %s/%s: %+v %v", ns, k8s.StatusLease, lease, err)
	}

	// A new generation gets its condition again.
	if out, err := env.Kubectl(t, "patch", "clusternetworkpolicies.policy.networking.k8s.io", "deny-ops", "--type=merge", "-p", `{"spec":{"priority":20}}`); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := kubetest.EventuallyErr(30*time.Second, func() error { _, err := cond("deny-ops"); return err }); err != nil {
		t.Fatal(err)
	}
}

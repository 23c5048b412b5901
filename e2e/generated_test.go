package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/netpolgen"
)

// TestGeneratedPolicies applies random NetworkPolicies (with label changes
// of pods and namespaces) on the policy fixture, and checks every probe of
// the matrix against netpolgen's reference model of the API. Each run draws
// a new seed; a failure prints it, and
//
//	TERN_NETPOL_SEED=S TERN_NETPOL_CASES=N go test ./e2e -run 'TestGeneratedPolicies'
//
// replays the same cases. TERN_NETPOL_CASES (default 10) is how many.
func TestGeneratedPolicies(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TERN_NETPOL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TERN_NETPOL_SEED=%q: want an unsigned integer", s)
		}
		seed = v
	}
	cases := envCount(t, "TERN_NETPOL_CASES", 10)
	fx := policyPods(t)
	w := fixtureWorld(t, fx)
	t.Logf("seed %d, %d cases; replay: TERN_NETPOL_SEED=%d TERN_NETPOL_CASES=%d go test ./e2e -run TestGeneratedPolicies", seed, cases, seed, cases)
	// ClusterNetworkPolicies among the NetworkPolicies, without named
	// ports (an experimental-channel field the lab's CRD does not keep).
	g := netpolgen.NewGenerator(seed, w).WithClusterPolicies(false)
	t0 := time.Now()
	cnps := 0
	for i := range cases {
		c := g.Next()
		cnps += len(c.ClusterPolicies)
		ok := t.Run(fmt.Sprintf("case%d", i), func(t *testing.T) { runGenerated(t, fx, w, c, fmt.Sprintf("seed %d case %d", seed, i)) })
		if !ok {
			t.Fatalf("seed %d, case %d failed; replay: TERN_NETPOL_SEED=%d TERN_NETPOL_CASES=%d go test ./e2e -run TestGeneratedPolicies\nthe case:\n%s",
				seed, i, seed, i+1, c)
		}
	}
	generated = fmt.Sprintf("%d generated cases of NetworkPolicies and ClusterNetworkPolicies (e2e/generated_test.go, seed %d; %d ClusterNetworkPolicies in all) passed in %s",
		cases, seed, cnps, time.Since(t0).Round(time.Second))
	t.Log(generated)
}

// generated is what TestGeneratedPolicies passed, for the conformance
// report (TestUpstreamSuites runs after it).
var generated string

// envCount is the positive integer in the environment variable name, or def.
func envCount(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// runGenerated applies c, compares the matrix with the model's, and puts
// the labels and policies back as they were.
func runGenerated(t *testing.T, fx *policyFixture, w netpolgen.World, c netpolgen.Case, what string) {
	t.Cleanup(func() {
		for _, l := range c.Labels {
			relabel(t, w, l, true)
		}
		fx.reset(t)
	})
	for _, l := range c.Labels {
		relabel(t, w, l, false)
	}
	items := []any{}
	for _, p := range c.Policies {
		items = append(items, p)
	}
	for _, p := range c.ClusterPolicies {
		// Without status: the typed object writes "conditions": null,
		// which kubectl's client-side validation refuses.
		var m map[string]any
		j, err := json.Marshal(p)
		if err == nil {
			err = json.Unmarshal(j, &m)
		}
		if err != nil {
			t.Fatal(err)
		}
		delete(m, "status")
		items = append(items, m)
	}
	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
	j, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := tl.KubectlErr(t, string(j), "apply", "-f", "-"); err != nil {
		t.Fatalf("the API server refused a generated policy (a generator bug): %v\n%s\n%s", err, out, c)
	}
	cw := w.Apply(c.Labels)
	byID := map[string]netpolgen.Pod{}
	for _, p := range cw.Pods {
		byID[p.ID()] = p
	}
	fx.expect(t, what, func(from, to podRef, tg target) bool {
		src := byID[from.String()]
		// The probes go to the pods' first addresses (the model's only ones).
		return c.Allowed(cw, src, byID[to.String()], netpolgen.Target{Port: int32(tg.Port), Protocol: corev1.Protocol(tg.Proto), IPv6: src.IPs[0].Is6()})
	})
	// Every ClusterNetworkPolicy's status says tern enforces it as
	// written (the agent holding the status Lease wrote it).
	for _, p := range c.ClusterPolicies {
		var got string
		if err := kubetest.EventuallyErr(30*time.Second, func() error {
			got = kubectl(t, "", "get", "clusternetworkpolicies.policy.networking.k8s.io", p.Name, "-o",
				`jsonpath={.metadata.generation} {range .status.conditions[?(@.type=="tern.io/Accepted")]}{.observedGeneration} {.status} {.reason}{end}`)
			f := strings.Fields(got)
			if len(f) != 4 || f[0] != f[1] || f[2] != "True" || f[3] != "Enforced" {
				return fmt.Errorf("%s: generation, condition: %q", p.Name, got)
			}
			return nil
		}); err != nil {
			t.Errorf("the status of a generated ClusterNetworkPolicy: %v", err)
		}
	}
}

// relabel makes a label change on the lab, or with undo puts back what w
// had before it.
func relabel(t *testing.T, w netpolgen.World, l netpolgen.LabelChange, undo bool) {
	t.Helper()
	kind, name, ns := "namespace", l.Namespace, ""
	before := map[string]string{}
	for _, n := range w.Namespaces {
		if l.Pod == "" && n.Name == l.Namespace {
			before = n.Labels
		}
	}
	if l.Pod != "" {
		for _, p := range w.Pods {
			if p.ID() == l.Pod {
				kind, name, ns, before = "pod", p.Name, p.Namespace, p.Labels
			}
		}
	}
	arg := l.Key + "=" + l.Value
	switch {
	case undo && hadKey(before, l.Key):
		arg = l.Key + "=" + before[l.Key]
	case undo || l.Remove:
		arg = l.Key + "-"
	}
	args := []string{"label", "--overwrite", kind, name, arg}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	if undo {
		kubectlAnyway(t, args...)
		return
	}
	kubectl(t, "", args...)
}

func hadKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// fixtureWorld reads the fixture's namespaces and pods from the API server
// as the model sees them: labels, addresses, declared ports.
func fixtureWorld(t *testing.T, fx *policyFixture) netpolgen.World {
	t.Helper()
	var w netpolgen.World
	for _, ns := range policyNamespaces {
		var n corev1.Namespace
		if err := json.Unmarshal([]byte(kubectl(t, "", "get", "namespace", ns, "-o", "json")), &n); err != nil {
			t.Fatal(err)
		}
		w.Namespaces = append(w.Namespaces, netpolgen.Namespace{Name: ns, Labels: n.Labels})
		var pods corev1.PodList
		if err := json.Unmarshal([]byte(kubectl(t, "", "get", "pods", "-n", ns, "-o", "json")), &pods); err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			info, ok := fx.info[ns+"/"+p.Name]
			if !ok {
				continue
			}
			var ports []corev1.ContainerPort
			for _, c := range p.Spec.Containers {
				ports = append(ports, c.Ports...)
			}
			w.Pods = append(w.Pods, netpolgen.Pod{Namespace: ns, Name: p.Name, Labels: p.Labels, IPs: info.IPs[:1], Ports: ports})
		}
	}
	if len(w.Pods) != len(fx.pods) {
		t.Fatalf("found %d of the fixture's %d pods", len(w.Pods), len(fx.pods))
	}
	return w
}

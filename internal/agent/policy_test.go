package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/ipam"
	"github.com/tern-net/tern/policy"
)

// TestLocalPolicyPods: a local pod gets its host veth and the address its
// allocation has (before the API shows it), never an earlier same-named pod's.
func TestLocalPolicyPods(t *testing.T) {
	now := time.Now()
	a := clusterAgent(t, &fakeCluster{synced: true}, time.Minute,
		ipam.Allocation{Key: ipam.Key{ContainerID: "c1", IfName: "eth0"}, Namespace: "x", Pod: "a", PodUID: "uid-a", HostIf: "terna", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Created: now},
		ipam.Allocation{Key: ipam.Key{ContainerID: "c0", IfName: "eth0"}, Namespace: "x", Pod: "b", PodUID: "old-b", HostIf: "ternb", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.6")}, Created: now},
	)
	in := policy.Input{Pods: []policy.Pod{
		{Namespace: "x", Name: "a", UID: "uid-a", Node: "n1"},
		{Namespace: "x", Name: "b", UID: "new-b", Node: "n1"},
		{Namespace: "x", Name: "c", Node: "n2", IPs: []netip.Addr{netip.MustParseAddr("10.244.2.9")}},
		{Namespace: "x", Name: "h", Node: "n1", HostNetwork: true},
	}}
	a.localPolicyPods(&in)
	if p := in.Pods[0]; p.HostIf != "terna" || !slices.Equal(p.IPs, []netip.Addr{netip.MustParseAddr("10.244.1.5")}) {
		t.Errorf("x/a: %+v, want its allocation's veth and address", p)
	}
	want := hostveth.Name("x", "b", "", "eth0")
	if p := in.Pods[1]; p.HostIf != want || len(p.IPs) != 0 {
		t.Errorf("x/b (new UID): %+v, want veth %s and no address of the old pod", p, want)
	}
	if p := in.Pods[2]; p.HostIf != "" {
		t.Errorf("remote pod got a host veth: %+v", p)
	}
	if p := in.Pods[3]; p.HostIf != "" {
		t.Errorf("hostNetwork pod got a host veth: %+v", p)
	}
}

// TestPodPolicyView: what `ternctl policy show` prints comes from the ruleset.
func TestPodPolicyView(t *testing.T) {
	in := policy.Input{Node: "n1",
		Pods: []policy.Pod{
			{Namespace: "x", Name: "a", Node: "n1", HostIf: "terna", Labels: map[string]string{"pod": "a"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}},
			{Namespace: "x", Name: "b", Node: "n2", Labels: map[string]string{"pod": "b"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.2.5")}},
		},
		Namespaces: []policy.Namespace{{Name: "x"}},
		Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-b"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}}}}}}},
	}
	rs := policy.Compile(in)
	v, err := podPolicyView(&rs, "x/a")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Ingress, []string{"x/from-b"}) || len(v.Egress) != 0 || v.IngressChain == "" || len(v.IngressRules) < 2 || len(v.Sets) != 1 || v.Sets[0].Members != 1 {
		t.Errorf("view: %+v", v)
	}
	if last := v.IngressRules[len(v.IngressRules)-1]; last != "-j DROP" {
		t.Errorf("last ingress rule %q, want the drop", last)
	}
	if _, err := podPolicyView(&rs, "x/b"); err == nil || !strings.Contains(err.Error(), "not on this node") {
		t.Errorf("remote pod: %v", err)
	}
	if _, err := podPolicyView(&rs, "nonsense"); err == nil || !strings.Contains(err.Error(), "NAMESPACE/POD") {
		t.Errorf("bad id: %v", err)
	}
}

// TestWaitPass: a CNI ADD waits for a pass that started after it and
// succeeded; a failing pass keeps it waiting, and its error comes back when
// the wait ends (the ADD then fails closed).
func TestWaitPass(t *testing.T) {
	for _, tc := range []struct {
		name string
		errs []error // results of the passes the loop runs, in turn
		want error
	}{
		{"first pass succeeds", []error{nil}, nil},
		{"a failure, then success", []error{errors.New("ipset: boom"), nil}, nil},
		{"always failing", []error{errors.New("ipset: boom")}, errors.New("ipset: boom")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Agent{trigger: make(chan struct{}, 1), passCh: make(chan struct{})}
			stop := make(chan struct{})
			defer close(stop)
			go func() { // the reconcile loop, as far as waitPass sees it
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-a.trigger:
					case <-time.After(20 * time.Millisecond): // the loop's backoff retrigger
					}
					a.passStarted()
					a.passFinished(tc.errs[min(i, len(tc.errs)-1)])
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := a.waitPass(ctx)
			if (err == nil) != (tc.want == nil) || (err != nil && err.Error() != tc.want.Error()) {
				t.Errorf("waitPass: %v, want %v", err, tc.want)
			}
		})
	}
}

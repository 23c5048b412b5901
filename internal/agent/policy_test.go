package agent

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/k8s"
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
	if len(v.IngressRulesIPv6) != 0 || v.Sets[0].Family != agentapi.FamilyIPv4 {
		t.Errorf("IPv4-only node: IPv6 rules %q, set family %q", v.IngressRulesIPv6, v.Sets[0].Family)
	}
	// Dual-stack: the IPv6 chain of the same name, and a set per family.
	in.IPv6 = true
	in.Pods[0].IPs = append(in.Pods[0].IPs, netip.MustParseAddr("fd74:6572:6e44:1::5"))
	in.Pods[1].IPs = append(in.Pods[1].IPs, netip.MustParseAddr("fd74:6572:6e44:2::5"))
	rs6 := policy.Compile(in)
	v6, err := podPolicyView(&rs6, "x/a")
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]int{}
	for _, s := range v6.Sets {
		fams[s.Family] += s.Members
	}
	if len(v6.IngressRules) < 2 || len(v6.IngressRulesIPv6) != len(v6.IngressRules) || fams[agentapi.FamilyIPv4] != 1 || fams[agentapi.FamilyIPv6] != 1 {
		t.Errorf("dual-stack view: rules %q / IPv6 %q, sets %+v", v6.IngressRules, v6.IngressRulesIPv6, v6.Sets)
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

// lateCluster is a fakeCluster whose cache gets a pod while a CNI ADD waits.
type lateCluster struct {
	*fakeCluster
	mu sync.Mutex
}

func (l *lateCluster) LocalPods() (map[string]k8s.Pod, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.cache), nil
}

func (l *lateCluster) put(p k8s.Pod) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cache[p.Namespace+"/"+p.Name] = p
}

// TestAwaitPolicy: a CNI ADD whose pod (by UID) is not in the cache is
// refused once the wait is over, never let through unpoliced; one whose pod
// arrives in time waits for a pass and goes on.
func TestAwaitPolicy(t *testing.T) {
	const wait = 150 * time.Millisecond
	web := k8s.Pod{Namespace: "x", Name: "web", UIDs: []string{"uid-1"}}
	for _, tc := range []struct {
		name          string
		cached        []k8s.Pod
		late          *k8s.Pod // put into the cache 30 ms into the wait
		ns, pod, uid  string
		policyOff     bool
		wantNotKnown  bool
		wantPassFirst bool // the answer comes only after a pass
	}{
		{name: "pod in the cache", cached: []k8s.Pod{web}, ns: "x", pod: "web", uid: "uid-1", wantPassFirst: true},
		{name: "pod arrives while the ADD waits", late: &web, ns: "x", pod: "web", uid: "uid-1", wantPassFirst: true},
		{name: "pod never arrives: refused", ns: "x", pod: "web", uid: "uid-1", wantNotKnown: true},
		{name: "only an earlier pod of the name: refused", cached: []k8s.Pod{{Namespace: "x", Name: "web", UIDs: []string{"uid-0"}}}, ns: "x", pod: "web", uid: "uid-1", wantNotKnown: true},
		{name: "no UID given: the name decides", cached: []k8s.Pod{web}, ns: "x", pod: "web", wantPassFirst: true},
		{name: "no pod identity: not a Kubernetes pod", ns: "", pod: ""},
		{name: "network policy off", ns: "x", pod: "web", uid: "uid-1", policyOff: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &lateCluster{fakeCluster: &fakeCluster{synced: true, cache: map[string]k8s.Pod{}}}
			for _, p := range tc.cached {
				f.put(p)
			}
			a := clusterAgent(t, f.fakeCluster, time.Minute)
			a.cluster, a.podWait = f, wait
			a.cfg.NetworkPolicy = !tc.policyOff
			a.trigger, a.passCh = make(chan struct{}, 1), make(chan struct{})
			var passes atomic.Int32
			stop := make(chan struct{})
			defer close(stop)
			go func() { // the reconcile loop, as far as awaitPolicy sees it
				for {
					select {
					case <-stop:
						return
					case <-a.trigger:
					}
					a.passStarted()
					passes.Add(1)
					a.passFinished(nil)
				}
			}()
			if tc.late != nil {
				time.AfterFunc(30*time.Millisecond, func() { f.put(*tc.late) })
			}
			t0 := time.Now()
			err := a.awaitPolicy(context.Background(), tc.ns, tc.pod, tc.uid)
			took := time.Since(t0)
			switch {
			case tc.wantNotKnown:
				if !errors.Is(err, errPodNotKnown) || !strings.Contains(err.Error(), "x/web (UID uid-1)") {
					t.Fatalf("err %v, want the pod refused as not known", err)
				}
				if took < wait {
					t.Errorf("refused after %s, before the wait of %s was over", took, wait)
				}
				if passes.Load() != 0 {
					t.Errorf("%d passes waited for, want none for a pod not known", passes.Load())
				}
			case err != nil:
				t.Fatalf("err %v, want the ADD to go on", err)
			case tc.wantPassFirst && passes.Load() == 0:
				t.Errorf("the ADD went on without a reconcile pass")
			case !tc.wantPassFirst && passes.Load() != 0:
				t.Errorf("%d passes waited for, want none", passes.Load())
			}
		})
	}
}

package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/ipam"
	"github.com/tern-net/tern/policy"
)

// fakeCluster is a Cluster of values; PodGone answers from live (the API
// server), LocalPods from cache (the informer), so tests can make them differ.
type fakeCluster struct {
	synced  bool
	node    k8s.Node
	nodeErr error
	cache   map[string]k8s.Pod
	live    map[string]k8s.Pod
	liveErr error
	// block, when not nil, holds the API calls until it is closed.
	block    chan struct{}
	patches  atomic.Int32
	patchErr error
}

var _ Cluster = (*fakeCluster)(nil)

func (f *fakeCluster) Start(context.Context, func()) error { return nil }
func (f *fakeCluster) Synced() bool                        { return f.synced }
func (f *fakeCluster) LocalNode() (k8s.Node, error)        { return f.node, f.nodeErr }
func (f *fakeCluster) LocalPods() (map[string]k8s.Pod, error) {
	return f.cache, nil
}
func (f *fakeCluster) PodGone(_ context.Context, ns, name, uid string) (bool, error) {
	if f.block != nil {
		<-f.block
	}
	if f.liveErr != nil {
		return false, f.liveErr
	}
	p, ok := f.live[ns+"/"+name]
	return !ok || (uid != "" && !p.HasUID(uid)), nil
}
func (f *fakeCluster) SetNetworkAvailable(context.Context) error {
	if f.block != nil {
		<-f.block
	}
	f.patches.Add(1)
	return f.patchErr
}
func (f *fakeCluster) ServiceIPs() ([]bgp.ServiceIP, error) { return nil, nil }
func (f *fakeCluster) PolicyInput() (policy.Input, error)   { return policy.Input{}, nil }
func (f *fakeCluster) BGPInput() ([]bgp.NodeInfo, bgp.Config, []bgp.PeerSpec, []error) {
	return nil, bgp.DefaultConfig(), nil, nil
}

func clusterAgent(t *testing.T, f *fakeCluster, grace time.Duration, allocs ...ipam.Allocation) *Agent {
	t.Helper()
	alloc, err := ipam.New(ipam.NewMemStore(allocs...), []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	return &Agent{cfg: Config{NodeName: "n1", PodReleaseGrace: grace}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ipam: alloc, cluster: f, missing: map[ipam.Key]time.Time{}}
}

func podAlloc(cid, ns, pod, uid, ip string, age time.Duration) ipam.Allocation {
	return ipam.Allocation{Key: ipam.Key{ContainerID: cid, IfName: "eth0"}, Namespace: ns, Pod: pod, PodUID: uid,
		IPs: []netip.Addr{netip.MustParseAddr(ip)}, Created: time.Now().Add(-age)}
}

func left(a *Agent) []string {
	var out []string
	for _, al := range a.ipam.List() {
		out = append(out, al.ContainerID)
	}
	slices.Sort(out)
	return out
}

func TestReleaseGone(t *testing.T) {
	const grace = 50 * time.Millisecond
	pod := func(ns, name string, uids ...string) k8s.Pod { return k8s.Pod{Namespace: ns, Name: name, UIDs: uids} }
	cases := []struct {
		name    string
		allocs  []ipam.Allocation
		cache   map[string]k8s.Pod
		live    map[string]k8s.Pod
		liveErr error
		grace   time.Duration // default 50 ms
		left    []string
	}{
		{
			name:   "pod there: kept",
			allocs: []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour)},
			cache:  map[string]k8s.Pod{"default/web": pod("default", "web", "u1")},
			live:   map[string]k8s.Pod{"default/web": pod("default", "web", "u1")},
			left:   []string{"c1"},
		},
		{
			name:   "pod gone: released",
			allocs: []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour)},
			left:   nil,
		},
		{
			name:   "recreated under the same name: the old sandbox's address released",
			allocs: []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour)},
			cache:  map[string]k8s.Pod{"default/web": pod("default", "web", "u2")},
			live:   map[string]k8s.Pod{"default/web": pod("default", "web", "u2")},
			left:   nil,
		},
		{
			name:   "static pod: kubelet's UID is the mirror pod's annotation: kept",
			allocs: []ipam.Allocation{podAlloc("c1", "kube-system", "etcd-n1", "hash1", "10.244.1.2", time.Hour)},
			cache:  map[string]k8s.Pod{"kube-system/etcd-n1": pod("kube-system", "etcd-n1", "mirror-uid", "hash1")},
			live:   map[string]k8s.Pod{"kube-system/etcd-n1": pod("kube-system", "etcd-n1", "mirror-uid", "hash1")},
			left:   []string{"c1"},
		},
		{
			name:   "stale cache, the API server still has the pod: kept",
			allocs: []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour)},
			live:   map[string]k8s.Pod{"default/web": pod("default", "web", "u1")},
			left:   []string{"c1"},
		},
		{
			name:    "API server unreachable: kept",
			allocs:  []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour)},
			liveErr: errors.New("connection refused"),
			left:    []string{"c1"},
		},
		{
			name:   "young allocation (its pod may not be cached yet): kept",
			allocs: []ipam.Allocation{podAlloc("c1", "default", "web", "u1", "10.244.1.2", 0)},
			grace:  time.Hour,
			left:   []string{"c1"},
		},
		{
			name:   "no pod name (not from Kubernetes): left to CNI DEL and GC",
			allocs: []ipam.Allocation{podAlloc("c1", "", "", "", "10.244.1.2", time.Hour)},
			left:   []string{"c1"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeCluster{synced: true, cache: c.cache, live: c.live, liveErr: c.liveErr}
			g := grace
			if c.grace != 0 {
				g = c.grace
			}
			a := clusterAgent(t, f, g, c.allocs...)
			// The first pass only notes what is missing; nothing goes before
			// it has been missing for the grace period.
			_ = a.releaseGone(context.Background())
			if got := left(a); len(got) != len(c.allocs) {
				t.Fatalf("first pass released at once: left %v", got)
			}
			time.Sleep(2 * grace)
			err := settle(t, a, func() error { return a.releaseGone(context.Background()) })
			if (c.liveErr != nil) != (err != nil) {
				t.Fatalf("err %v", err)
			}
			if got := left(a); !slices.Equal(got, c.left) {
				t.Fatalf("left %v, want %v", got, c.left)
			}
		})
	}
}

// settle runs step, a part of a pass, until the calls to the API server it
// started have been answered and taken in; it returns the error of the last run.
func settle(t *testing.T, a *Agent, step func() error) error {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := step()
		if !a.api.checking && !a.api.patching {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatal("the API calls of the pass are not answered")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestAPICallsDoNotBlock: a pass does not wait for the API server; its
// answers are taken in by a later pass.
func TestAPICallsDoNotBlock(t *testing.T) {
	const grace = 10 * time.Millisecond
	f := &fakeCluster{synced: true, node: k8s.Node{Name: "n1"}, block: make(chan struct{})}
	a := clusterAgent(t, f, grace, podAlloc("c1", "default", "web", "u1", "10.244.1.2", time.Hour))
	_ = a.releaseGone(context.Background())
	time.Sleep(2 * grace)
	t0 := time.Now()
	if err := a.afterProgrammed(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Fatalf("the pass waited %v for the API server", d)
	}
	if !a.api.patching || !a.api.checking || len(left(a)) != 1 || a.networkAvailable {
		t.Fatalf("patching %v, checking %v, left %v, available %v", a.api.patching, a.api.checking, left(a), a.networkAvailable)
	}
	close(f.block) // the API server answers
	if err := settle(t, a, func() error { return a.afterProgrammed(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	if len(left(a)) != 0 || !a.networkAvailable || f.patches.Load() != 1 {
		t.Fatalf("left %v, available %v, patches %d", left(a), a.networkAvailable, f.patches.Load())
	}
}

func TestClusterPools(t *testing.T) {
	f := &fakeCluster{}
	a := clusterAgent(t, f, time.Minute)
	if err := a.clusterPools(); !errors.Is(err, errNotSynced) {
		t.Fatalf("before sync: %v", err)
	}
	f.synced = true
	f.nodeErr = errors.New(`node "n1" does not exist in the API`)
	if err := a.clusterPools(); err == nil {
		t.Fatal("no node: no error")
	}
	f.nodeErr = nil
	f.node = k8s.Node{Name: "n1"}
	if err := a.clusterPools(); err == nil || !strings.Contains(err.Error(), "no spec.podCIDRs yet") {
		t.Fatalf("no podCIDR: %v", err)
	}
	f.node.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}
	if err := a.clusterPools(); err != nil {
		t.Fatal(err)
	}
	if got := a.ipam.Pools(); len(got) != 1 || got[0] != f.node.PodCIDRs[0] {
		t.Fatalf("pools %v", got)
	}
	// The condition is patched whenever the Node does not say False.
	after := func() error { return settle(t, a, func() error { return a.afterProgrammed(context.Background()) }) }
	if err := after(); err != nil || f.patches.Load() != 1 || !a.networkAvailable {
		t.Fatalf("patches %d, %v", f.patches.Load(), err)
	}
	_ = a.clusterPools()
	_ = after()
	if f.patches.Load() != 2 {
		t.Fatalf("a Node without the condition was not patched again: %d", f.patches.Load())
	}
	f.node.NetworkAvailable = true
	_ = a.clusterPools()
	_ = after()
	if f.patches.Load() != 2 {
		t.Fatalf("patched a Node that says so already: %d", f.patches.Load())
	}
	// A failed patch fails the pass, and the next one tries again.
	f.node.NetworkAvailable, f.patchErr = false, errors.New("connection refused")
	_ = a.clusterPools()
	if err := after(); err == nil || a.networkAvailable {
		t.Fatalf("a failed patch: %v, available %v", err, a.networkAvailable)
	}
	f.patchErr = nil
	if err := after(); err != nil || !a.networkAvailable || f.patches.Load() != 4 {
		t.Fatalf("after a failed patch: %v, available %v, patches %d", err, a.networkAvailable, f.patches.Load())
	}
}

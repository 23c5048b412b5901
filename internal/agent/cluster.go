package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/ipam"
	"github.com/tern-net/tern/policy"
)

// Cluster is what the agent needs of the Kubernetes API.
type Cluster interface {
	// Start runs the watches and calls changed after every event.
	Start(ctx context.Context, changed func()) error
	// Synced reports whether the caches hold their initial lists.
	Synced() bool
	LocalNode() (k8s.Node, error)
	// LocalPods returns the pods bound to this node by "namespace/name".
	LocalPods() (map[string]k8s.Pod, error)
	// PodGone asks the API server (not a cache) whether the pod with uid is gone.
	PodGone(ctx context.Context, namespace, name, uid string) (bool, error)
	// BGPInput returns every node, the BGPConfiguration and the BGPPeers.
	// It reads caches only, never the API server.
	BGPInput() ([]bgp.NodeInfo, bgp.Config, []bgp.PeerSpec, []error)
	// ServiceIPs returns the Services' external and load-balancer IPs.
	ServiceIPs() ([]bgp.ServiceIP, error)
	SetNetworkAvailable(ctx context.Context) error
	// PolicyInput is the NetworkPolicy snapshot: every pod, namespace and policy.
	PolicyInput() (policy.Input, error)
}

var _ Cluster = (*k8s.Watcher)(nil)

// errNotSynced holds back every kernel write until the caches are complete.
var errNotSynced = errors.New("waiting for the Kubernetes caches to sync")

// clusterPools returns the node's pod CIDRs as the API has them, and gives
// them to the IPAM when they changed.
func (a *Agent) clusterPools() error {
	if !a.cluster.Synced() {
		return errNotSynced
	}
	node, err := a.cluster.LocalNode()
	if errors.Is(err, k8s.ErrNodeNotFound) {
		a.leaveBGP(a.runCtx)
	}
	if err != nil {
		return err
	}
	if len(node.PodCIDRs) == 0 {
		return fmt.Errorf("node %s has no spec.podCIDRs yet (kube-controller-manager --allocate-node-cidrs assigns them)", node.Name)
	}
	if !slices.Equal(node.PodCIDRs, a.ipam.Pools()) {
		if err := a.ipam.SetPools(node.PodCIDRs); err != nil {
			return fmt.Errorf("node %s: %w", node.Name, err)
		}
		a.log.Info("pod CIDRs from the node", "node", node.Name, "podCIDRs", node.PodCIDRs)
		if stray := a.outsidePools(); stray > 0 {
			// A re-created Node with another podCIDR: the old addresses stay
			// with their pods, and the old CIDR may be another node's now.
			a.log.Error("allocations outside the node's pod CIDRs: their pods need recreating", "count", stray, "podCIDRs", node.PodCIDRs)
		}
	}
	a.networkAvailable = node.NetworkAvailable
	a.localNode = node
	return nil
}

// outsidePools counts allocations none of whose addresses is in a pool.
func (a *Agent) outsidePools() int {
	pools := a.ipam.Pools()
	n := 0
	for _, al := range a.ipam.List() {
		in := false
		for _, ip := range al.IPs {
			for _, p := range pools {
				in = in || p.Contains(ip)
			}
		}
		if !in {
			n++
		}
	}
	return n
}

// afterProgrammed does what follows a successful dataplane pass: tell the API
// the node's network is up (whenever the Node says otherwise: it may have
// been re-created), and release the addresses of pods gone. Neither waits
// for the API server (see apiCalls).
func (a *Agent) afterProgrammed(ctx context.Context) error {
	if !a.networkAvailable {
		done, err := a.setNetworkAvailable(ctx)
		if err != nil {
			return err
		}
		if done {
			a.networkAvailable = true
			a.log.Info("node condition NetworkUnavailable set to False")
		}
	}
	return a.releaseGone(ctx)
}

// releaseGone releases the allocations of pods that no longer exist on this
// node (deleted, or recreated under the same name with a new UID) once they
// have been missing for the grace period. The runtime's DEL normally does
// this; this catches DELs that never came. Allocations without pod names
// (made outside Kubernetes) are left to CNI DEL and GC. The API server's
// word, which it takes last, comes from a goroutine: a pass asks, a later
// pass releases.
func (a *Agent) releaseGone(ctx context.Context) error {
	pods, err := a.cluster.LocalPods()
	if err != nil {
		return err
	}
	now := time.Now()
	seen := map[ipam.Key]bool{}
	var errs []error
	var ask []ipam.Allocation
	for _, al := range a.ipam.List() {
		if al.Pod == "" {
			continue
		}
		p, ok := pods[al.Namespace+"/"+al.Pod]
		if ok && (al.PodUID == "" || p.HasUID(al.PodUID)) {
			continue
		}
		seen[al.Key] = true
		if now.Sub(al.Created) < a.cfg.PodReleaseGrace {
			continue // the pod may not be in the cache yet
		}
		first, known := a.missing[al.Key]
		if !known {
			a.missing[al.Key] = now
			continue
		}
		if now.Sub(first) < a.cfg.PodReleaseGrace {
			continue
		}
		// The cache can be stale (a broken watch): the API server decides.
		ans, answered := a.podAnswer(al, &ask)
		if !answered {
			continue
		}
		if ans.err != nil || !ans.gone {
			if ans.err != nil {
				errs = append(errs, fmt.Errorf("check pod %s/%s: %w", al.Namespace, al.Pod, ans.err))
			}
			delete(a.missing, al.Key)
			continue
		}
		if err := a.releaseAllocation(al); err != nil {
			errs = append(errs, err)
		}
	}
	for k := range a.missing {
		if !seen[k] {
			delete(a.missing, k)
		}
	}
	a.askPods(ctx, ask, seen)
	return errors.Join(errs...)
}

// releaseAllocation releases the address of a gone pod as DEL does: its veth
// down first (found from the pod's namespace, never by name: a new sandbox of
// a pod of the same name has the same veth name), then the address.
func (a *Agent) releaseAllocation(al ipam.Allocation) error {
	var host hostveth.Link
	if al.Netns != "" {
		var err error
		if host, err = hostveth.Detach(al.Netns, al.IfName); err != nil {
			return fmt.Errorf("release %s of gone pod %s/%s: %w", al.Key, al.Namespace, al.Pod, err)
		}
	}
	if host.Index == 0 && al.HostIf != "" && hostveth.Up(al.HostIf) {
		// Its namespace cannot be opened from here, and a live veth of its
		// name exists: its owner cannot be told, so nothing is released.
		return fmt.Errorf("gone pod %s/%s: cannot open %s to find its veth, and an up veth %s exists; left for CNI DEL or GC",
			al.Namespace, al.Pod, al.Netns, al.HostIf)
	}
	if _, err := a.ipam.Release(al.Key); err != nil && !errors.Is(err, ipam.ErrNotFound) {
		return fmt.Errorf("release %s of gone pod %s/%s: %w", al.Key, al.Namespace, al.Pod, err)
	}
	a.log.Info("released the address of a pod that is gone", "pod", al.Namespace+"/"+al.Pod, "attachment", al.Key, "ips", al.IPs)
	a.releasedGone.Add(1)
	return nil
}

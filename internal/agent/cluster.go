package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/ipam"
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
	SetNetworkAvailable(ctx context.Context) error
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
	}
	return nil
}

// afterProgrammed does what follows a successful dataplane pass: tell the API
// the node's network is up (once), and release the addresses of pods gone.
func (a *Agent) afterProgrammed(ctx context.Context) error {
	if !a.networkAvailable {
		if err := a.cluster.SetNetworkAvailable(ctx); err != nil {
			return err
		}
		a.networkAvailable = true
		a.log.Info("node condition NetworkUnavailable set to False")
	}
	return a.releaseGone()
}

// releaseGone releases the allocations of pods that no longer exist on this
// node (deleted, or recreated under the same name with a new UID) once they
// have been missing for the grace period. The runtime's DEL normally does
// this; this catches DELs that never came. Allocations without pod names
// (made outside Kubernetes) are left to CNI DEL and GC.
func (a *Agent) releaseGone() error {
	pods, err := a.cluster.LocalPods()
	if err != nil {
		return err
	}
	now := time.Now()
	seen := map[ipam.Key]bool{}
	var errs []error
	for _, al := range a.ipam.List() {
		if al.Pod == "" {
			continue
		}
		p, ok := pods[al.Namespace+"/"+al.Pod]
		if ok && (al.PodUID == "" || p.UID == al.PodUID) {
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
		// As DEL does: the veth down first, then the address.
		if al.Netns != "" {
			if _, err := dataplane.DetachHostVeth(al.Netns, al.IfName); err != nil {
				errs = append(errs, fmt.Errorf("release %s of gone pod %s/%s: %w", al.Key, al.Namespace, al.Pod, err))
				continue
			}
		}
		if _, err := a.ipam.Release(al.Key); err != nil && !errors.Is(err, ipam.ErrNotFound) {
			errs = append(errs, fmt.Errorf("release %s of gone pod %s/%s: %w", al.Key, al.Namespace, al.Pod, err))
			continue
		}
		a.log.Info("released the address of a pod that is gone", "pod", al.Namespace+"/"+al.Pod, "attachment", al.Key, "ips", al.IPs)
		a.releasedGone.Add(1)
	}
	for k := range a.missing {
		if !seen[k] {
			delete(a.missing, k)
		}
	}
	a.deleteDisposed()
	return errors.Join(errs...)
}

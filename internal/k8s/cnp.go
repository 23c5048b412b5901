package k8s

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// ClusterNetworkPolicyVersions are the versions of ClusterNetworkPolicy
// (policy.networking.k8s.io) tern reads, the one to prefer first: they
// have the same schema, and the agent watches the first the API serves.
var ClusterNetworkPolicyVersions = []schema.GroupVersionResource{
	{Group: "policy.networking.k8s.io", Version: "v1beta1", Resource: "clusternetworkpolicies"},
	{Group: "policy.networking.k8s.io", Version: "v1alpha2", Resource: "clusternetworkpolicies"},
}

// The ClusterNetworkPolicy watch's states. Until discovery has answered,
// and from when the API serves them until their cache has its list, the
// policy snapshot cannot be taken: writing NetworkPolicy without the Admin
// tier's Deny rules would open what an operator closed.
const (
	cnpUnknown  int32 = iota // discovery has not answered
	cnpAbsent                // the API does not serve them: no ClusterNetworkPolicies
	cnpStarting              // served; the cache is filling
	cnpSynced
)

// cnpWatch is the Watcher's part for ClusterNetworkPolicies.
type cnpWatch struct {
	state atomic.Int32
	gvr   atomic.Pointer[schema.GroupVersionResource]
	inf   atomic.Pointer[cache.SharedIndexInformer]
	// statusNS is where the Lease of the status writer is ("" writes no
	// status); kicks wakes the writer.
	statusNS string
	kicks    chan struct{}
}

// ErrClusterPoliciesNotSynced holds back the policy snapshot until the
// ClusterNetworkPolicies are known (or known not to be served).
var ErrClusterPoliciesNotSynced = fmt.Errorf("the ClusterNetworkPolicies are not listed yet")

// discoverClusterPolicies returns the version of ClusterNetworkPolicy to
// watch, nil when the API serves none (err: discovery did not answer).
func (w *Watcher) discoverClusterPolicies() (*schema.GroupVersionResource, error) {
	for _, gvr := range ClusterNetworkPolicyVersions {
		list, err := w.client.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == gvr.Resource }) {
			return &gvr, nil
		}
	}
	return nil, nil
}

// watchClusterPolicies finds the ClusterNetworkPolicy API, watches it once
// it is served (it may be installed after the agent), and calls h after
// every event and on each change of state.
func (w *Watcher) watchClusterPolicies(ctx context.Context, h cache.ResourceEventHandler) {
	slow := time.AfterFunc(30*time.Second, func() {
		if st := w.cnp.state.Load(); st == cnpUnknown || st == cnpStarting {
			w.log.Warn("ClusterNetworkPolicies are not listed yet, so network policy is not written: may tern-agent list and watch clusternetworkpolicies.policy.networking.k8s.io? (manifests/02-rbac.yaml)")
		}
	})
	defer slow.Stop()
	var gvr *schema.GroupVersionResource
	for {
		var err error
		gvr, err = w.discoverClusterPolicies()
		if gvr != nil {
			break
		}
		wait := 2 * time.Second
		if err != nil {
			w.log.Debug("discovery of policy.networking.k8s.io", "err", err)
		} else {
			wait = 10 * time.Second
			if w.cnp.state.Swap(cnpAbsent) == cnpUnknown {
				w.log.Info("the ClusterNetworkPolicy API is not installed: NetworkPolicy alone (kubectl apply -f manifests/ installs it)")
				h.OnAdd(nil, false)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	w.cnp.gvr.Store(gvr)
	w.cnp.state.Store(cnpStarting)
	factory := dynamicinformer.NewDynamicSharedInformerFactory(w.dynamic, 0)
	inf := factory.ForResource(*gvr).Informer()
	_ = inf.SetTransform(toClusterPolicy) // before start, it cannot fail
	if _, err := inf.AddEventHandler(h); err != nil {
		w.log.Error("informer handler", "resource", gvr.Resource, "err", err)
		return
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { w.kickStatus() }, UpdateFunc: func(any, any) { w.kickStatus() }, DeleteFunc: func(any) { w.kickStatus() },
	})
	w.cnp.inf.Store(&inf)
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return
	}
	w.cnp.state.Store(cnpSynced)
	w.log.Info("watching ClusterNetworkPolicies", "version", gvr.Version)
	h.OnAdd(nil, false)
	w.kickStatus() // the events of the initial list came before the state said synced
}

// kickStatus wakes the status writer, if this agent runs one.
func (w *Watcher) kickStatus() {
	if w.cnp.kicks == nil {
		return
	}
	select {
	case w.cnp.kicks <- struct{}{}:
	default:
	}
}

// toClusterPolicy keeps a ClusterNetworkPolicy in the cache as the typed
// object, made once per version of it (the policy compiler knows an
// unchanged policy by pointer and resourceVersion). One the converter
// cannot read (the API server validated it, so it should not happen) is
// kept with its name and an empty spec, which selects no pod, and its
// status says why.
func toClusterPolicy(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil // a tombstone
	}
	p := &cnpv1.ClusterNetworkPolicy{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
		p = &cnpv1.ClusterNetworkPolicy{}
		p.Name, p.ResourceVersion, p.Generation, p.UID = u.GetName(), u.GetResourceVersion(), u.GetGeneration(), u.GetUID()
		p.Spec.Tier = cnpv1.Tier("unreadable: " + strings.ReplaceAll(err.Error(), "\n", " "))
	}
	p.ManagedFields = nil
	return p, nil
}

// ClusterPolicies returns the cached ClusterNetworkPolicies: none when the
// API does not serve them, ErrClusterPoliciesNotSynced while that is not
// known or their cache is filling.
func (w *Watcher) ClusterPolicies() ([]*cnpv1.ClusterNetworkPolicy, error) {
	switch w.cnp.state.Load() {
	case cnpAbsent:
		return nil, nil
	case cnpSynced:
	default:
		return nil, ErrClusterPoliciesNotSynced
	}
	inf := *w.cnp.inf.Load()
	objs := inf.GetStore().List()
	out := make([]*cnpv1.ClusterNetworkPolicy, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*cnpv1.ClusterNetworkPolicy); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

package k8s

import (
	"context"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/tern-net/tern/policy"
)

// The status tern writes on each ClusterNetworkPolicy: one condition of
// its own type, so that an operator sees (kubectl describe cnp) whether
// tern enforces the policy as written, and what it does instead where not.
const (
	// ClusterPolicyCondition is the condition's type.
	ClusterPolicyCondition = "tern.io/Accepted"
	// ReasonEnforced: the policy is enforced as written.
	ReasonEnforced = "Enforced"
	// ReasonFailedClosed: part of it is not understood or not supported,
	// and that part fails closed (policy.ClusterPolicyProblem).
	ReasonFailedClosed = "FailedClosed"
	// StatusLease names the Lease (in the agent's namespace) whose holder
	// writes the status; StatusFieldManager is its field manager.
	StatusLease        = "tern-agent-status"
	StatusFieldManager = "tern-agent"
)

// WriteClusterPolicyStatus makes the Watcher take part, once started, in
// the election of the agent that writes the ClusterNetworkPolicies' status
// (the holder of Lease StatusLease in namespace). Call it before Start.
func (w *Watcher) WriteClusterPolicyStatus(namespace string) {
	w.cnp.statusNS = namespace
	w.cnp.kicks = make(chan struct{}, 1)
}

// ClusterPolicyStatus is the condition tern reports for a policy.
func ClusterPolicyStatus(p *cnpv1.ClusterNetworkPolicy) metav1.Condition {
	c := metav1.Condition{Type: ClusterPolicyCondition, Status: metav1.ConditionTrue, Reason: ReasonEnforced,
		Message: "tern enforces the policy as written", ObservedGeneration: p.Generation}
	if problem := policy.ClusterPolicyProblem(p); problem != "" {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonFailedClosed, problem
	}
	return c
}

// runStatus campaigns for the Lease until ctx ends; while it holds it, it
// keeps every ClusterNetworkPolicy's condition up to date.
func (w *Watcher) runStatus(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: StatusLease, Namespace: w.cnp.statusNS},
		Client:     w.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: w.nodeName},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
			ReleaseOnCancel: true, Name: StatusLease,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					w.log.Info("this agent writes the ClusterNetworkPolicies' status", "lease", w.cnp.statusNS+"/"+StatusLease)
					w.writeStatusLoop(ctx)
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			w.log.Error("ClusterNetworkPolicy status: leader election", "err", err)
			return
		}
		le.Run(ctx) // returns when the lease is lost or ctx ends
	}
}

// writeStatusLoop writes the conditions that differ, after every change
// of the policies and every minute (a write that failed is tried again).
func (w *Watcher) writeStatusLoop(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		if w.cnp.state.Load() == cnpSynced {
			w.writeStatus(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-w.cnp.kicks:
		case <-tick.C:
		}
	}
}

// writeStatus applies tern's condition to each policy whose condition is
// missing or differs, server-side, as field manager StatusFieldManager: the
// conditions of others stay as they are.
func (w *Watcher) writeStatus(ctx context.Context) {
	gvr := w.cnp.gvr.Load()
	policies, err := w.ClusterPolicies()
	if err != nil || gvr == nil {
		return
	}
	for _, p := range policies {
		if ctx.Err() != nil {
			return // the Lease was lost, or the agent stops
		}
		want := ClusterPolicyStatus(p)
		if have := apimeta.FindStatusCondition(p.Status.Conditions, want.Type); have != nil &&
			have.Status == want.Status && have.Reason == want.Reason && have.Message == want.Message && have.ObservedGeneration == want.ObservedGeneration {
			continue
		}
		want.LastTransitionTime = metav1.Now()
		if have := apimeta.FindStatusCondition(p.Status.Conditions, want.Type); have != nil && have.Status == want.Status {
			want.LastTransitionTime = have.LastTransitionTime
		}
		cond, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&want)
		if err != nil {
			w.log.Error("ClusterNetworkPolicy status", "policy", p.Name, "err", err)
			continue
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gvr.GroupVersion().String(),
			"kind":       "ClusterNetworkPolicy",
			"metadata":   map[string]any{"name": p.Name},
			"status":     map[string]any{"conditions": []any{cond}},
		}}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = w.dynamic.Resource(*gvr).ApplyStatus(cctx, p.Name, obj, metav1.ApplyOptions{FieldManager: StatusFieldManager, Force: true})
		cancel()
		if err != nil {
			w.log.Warn("ClusterNetworkPolicy status not written", "policy", p.Name, "err", err)
			continue
		}
		w.log.Info("ClusterNetworkPolicy status", "policy", p.Name, "status", want.Status, "reason", want.Reason, "message", want.Message)
	}
}

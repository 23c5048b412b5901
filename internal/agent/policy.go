package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/policy"
)

// syncPolicy compiles the NetworkPolicy snapshot for this node and applies
// it: ipsets, then chains, then the cut of established flows the new rules
// deny. It runs in the reconcile goroutine, before the node's chains (whose
// TERN-FORWARD jumps to TERN-POLICY first).
func (a *Agent) syncPolicy(resync bool) error {
	in, err := a.cluster.PolicyInput()
	if errors.Is(err, k8s.ErrClusterPoliciesNotSynced) {
		return errNotSynced // the watch asks for a pass once they are listed
	}
	if err != nil {
		return fmt.Errorf("policy snapshot: %w", err)
	}
	in.Node, in.LogDrops = a.cfg.NodeName, a.cfg.LogDrops
	for _, p := range a.ipam.Pools() {
		if p.Addr().Is6() {
			in.IPv6 = true
		}
	}
	a.localPolicyPods(&in)
	t0 := time.Now()
	rs := a.compiler.Compile(in) // reuses what did not change since the last pass
	compiled := time.Since(t0)
	ev := rs.Evaluator()
	if resync {
		a.policyDP.Resync()
	}
	st, err := a.policyDP.Apply(rs, func(f dataplane.Flow) bool {
		ok, _ := ev.Allowed(policy.Flow{Src: f.Src, Dst: f.Dst, Protocol: corev1.Protocol(f.Protocol), DstPort: f.DstPort})
		return !ok
	})
	a.metrics.policyErrors.Add(boolFloat(err != nil))
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.ruleset = &rs
	a.mu.Unlock()
	if st.Changed() {
		a.log.Info("network policy applied", "policies", len(in.Policies), "clusterPolicies", len(in.ClusterPolicies), "localPods", len(rs.Pods), "sets", len(rs.Sets), "chains", len(rs.Chains),
			"compile", compiled.Round(time.Microsecond), "apply", (time.Since(t0) - compiled).Round(time.Microsecond),
			"membersAdded", st.MembersAdded, "membersDeleted", st.MembersDeleted, "chainsWritten", st.ChainsWritten, "flowsCut", st.FlowsCut)
	}
	return nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// localPolicyPods gives this node's pods their host veth and the addresses
// the IPAM gave them: the API shows a pod's address only after kubelet
// writes it, and the pod must be policed (and be a peer) from its first
// packet. An allocation counts only if it is the pod's (by any of its UIDs:
// a static pod's runtime knows it by its mirror's config hash), not an
// earlier pod's of the same name.
func (a *Agent) localPolicyPods(in *policy.Input) {
	local, err := a.cluster.LocalPods()
	if err != nil {
		local = nil
	}
	byPod := map[string][]int{}
	allocs := a.ipam.List()
	for i, al := range allocs {
		if al.Namespace != "" && al.Pod != "" {
			byPod[al.Namespace+"/"+al.Pod] = append(byPod[al.Namespace+"/"+al.Pod], i)
		}
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		if p.Node != a.cfg.NodeName || p.HostNetwork {
			continue
		}
		key := p.Namespace + "/" + p.Name
		p.HostIf = hostveth.Name(p.Namespace, p.Name, "", "eth0")
		for _, j := range byPod[key] {
			al := allocs[j]
			if al.PodUID != "" {
				kp, ok := local[key]
				if (ok && !kp.HasUID(al.PodUID)) || (!ok && p.UID != "" && al.PodUID != p.UID) {
					continue // an earlier pod of the same name, not yet released
				}
			}
			if al.IfName == "eth0" || al.IfName == "" {
				p.HostIf = al.HostIf
			}
			for _, ip := range al.IPs {
				if !slices.Contains(p.IPs, ip) {
					p.IPs = append(p.IPs, ip)
				}
			}
		}
	}
}

// errPolicyNotInForce: a new pod's rules could not be put in force in time.
var errPolicyNotInForce = errors.New("the pod's network policy is not in force yet")

// errPodNotKnown: the pod of a CNI ADD is not in the agent's cache, so the
// policies that select it cannot be known yet.
var errPodNotKnown = errors.New("the pod is not in the agent's cache yet, so its network policy cannot be put in force")

// podCacheWait bounds how long a CNI ADD waits for its pod to reach the
// agent's cache; the plugin asks again within its own bound.
const podCacheWait = 5 * time.Second

// awaitPolicy holds a CNI ADD until the policy rules for the pod are in
// force (fail closed: a pod is never reachable, nor sends, before the rules
// of the policies selecting it are in place): it waits for the pod (this
// UID) to be in the cache, then for a reconcile pass that started after the
// allocation to succeed. A pod the cache does not show in time (the watch
// lags; a static pod's mirror is not created yet) is refused, as is one
// whose pass fails or does not come within 5 s: the ADD fails with "try
// again later" and the runtime retries, so a pod never carries traffic that
// the agent has not judged. Only an attachment with no pod identity (no
// K8S_POD_NAMESPACE/K8S_POD_NAME: not a Kubernetes pod, so no policy can
// select it) is not waited for.
func (a *Agent) awaitPolicy(ctx context.Context, namespace, pod, uid string) error {
	if a.cluster == nil || !a.cfg.NetworkPolicy || namespace == "" || pod == "" {
		return nil
	}
	wait := a.podWait
	if wait <= 0 {
		wait = podCacheWait
	}
	seen, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	t0 := time.Now()
	for {
		if a.cluster.Synced() {
			pods, err := a.cluster.LocalPods()
			if p, ok := pods[namespace+"/"+pod]; ok && err == nil && (uid == "" || p.HasUID(uid)) {
				break
			}
		}
		select {
		case <-seen.Done():
			what := namespace + "/" + pod
			if uid != "" {
				what += " (UID " + uid + ")"
			}
			return fmt.Errorf("%w: pod %s, waited %s", errPodNotKnown, what, time.Since(t0).Round(time.Millisecond))
		case <-time.After(10 * time.Millisecond):
		}
	}
	passed, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if err := a.waitPass(passed); err != nil {
		return fmt.Errorf("%w: %w", errPolicyNotInForce, err)
	}
	return nil
}

// waitPass triggers a reconcile and waits until a pass that started after
// the call has succeeded; a failed pass is retried (the loop backs off and
// triggers again) until ctx ends, and then its error is returned.
func (a *Agent) waitPass(ctx context.Context) error {
	a.passMu.Lock()
	target := a.passesStarted + 1
	a.passMu.Unlock()
	var stopped <-chan struct{} // nil (never) when the agent is not running
	if a.runCtx != nil {
		stopped = a.runCtx.Done()
	}
	a.Trigger()
	for {
		a.passMu.Lock()
		done, passErr, ch := a.passesDone >= target, a.passErr, a.passCh
		a.passMu.Unlock()
		if done && passErr == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if done {
				return passErr
			}
			return ctx.Err()
		case <-stopped:
			return errors.New("the agent is stopping")
		}
	}
}

// passStarted and passFinished count the reconcile passes for waitPass.
func (a *Agent) passStarted() {
	a.passMu.Lock()
	a.passesStarted++
	a.passMu.Unlock()
}

func (a *Agent) passFinished(err error) {
	a.passMu.Lock()
	a.passesDone = a.passesStarted
	a.passErr = err
	close(a.passCh)
	a.passCh = make(chan struct{})
	a.passMu.Unlock()
}

// servePolicy answers `ternctl policy show NS/POD`.
func (a *Agent) servePolicy(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("pod")
	a.mu.Lock()
	rs := a.ruleset
	a.mu.Unlock()
	if rs == nil {
		msg := "network policy is not compiled yet"
		if !a.cfg.NetworkPolicy || a.cluster == nil {
			msg = "network policy is off on this node"
		}
		writeError(w, http.StatusServiceUnavailable, agentapi.CodeNotReady, msg)
		return
	}
	view, err := podPolicyView(rs, id)
	if err != nil {
		writeError(w, http.StatusNotFound, agentapi.CodeBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, view)
}

// podPolicyView is the policy in force for one local pod: the policies that
// select it and the rules of its chains, with the sets they use.
func podPolicyView(rs *policy.Ruleset, id string) (agentapi.PodPolicy, error) {
	pp, ok := rs.Pods[id]
	if !ok {
		if !strings.Contains(id, "/") {
			return agentapi.PodPolicy{}, errors.New("want NAMESPACE/POD")
		}
		return agentapi.PodPolicy{}, fmt.Errorf("pod %s is not a pod of this node's network (not on this node, hostNetwork, or unknown)", id)
	}
	v := agentapi.PodPolicy{Pod: id, HostIf: pp.HostIf, IPs: pp.IPs, Ingress: pp.Ingress, Egress: pp.Egress,
		AdminIngress: pp.AdminIngress, AdminEgress: pp.AdminEgress, BaselineIngress: pp.BaselineIngress, BaselineEgress: pp.BaselineEgress,
		IngressTailChain: pp.IngressTailChain, EgressTailChain: pp.EgressTailChain}
	for _, d := range []struct {
		chain     string
		out, out6 *[]string
	}{{pp.IngressChain, &v.IngressRules, &v.IngressRulesIPv6}, {pp.EgressChain, &v.EgressRules, &v.EgressRulesIPv6},
		{pp.IngressTailChain, &v.IngressTailRules, &v.IngressTailRulesIPv6}, {pp.EgressTailChain, &v.EgressTailRules, &v.EgressTailRulesIPv6}} {
		for _, c := range rs.Chains {
			if c.Name != d.chain || d.chain == "" {
				continue
			}
			out := d.out
			if c.IPv6 {
				out = d.out6
			}
			for _, r := range c.Rules {
				*out = append(*out, r.String())
			}
		}
	}
	for _, n := range pp.Sets {
		var s policy.Set // rs.Sets is sorted by name
		if i, ok := slices.BinarySearchFunc(rs.Sets, n, func(s policy.Set, n string) int { return strings.Compare(s.Name, n) }); ok {
			s = rs.Sets[i]
		}
		fam := agentapi.FamilyIPv4
		if s.IPv6 {
			fam = agentapi.FamilyIPv6
		}
		v.Sets = append(v.Sets, agentapi.PolicySet{Name: n, Type: s.Type, Family: fam, Comment: s.Comment, Members: len(s.Members)})
	}
	v.IngressChain, v.EgressChain = pp.IngressChain, pp.EgressChain
	return v, nil
}

package k8s

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/policy"
)

// PolicyInput is the policy snapshot from the caches: every pod of the
// cluster that has or may get an address (not finished), every namespace's
// labels, every NetworkPolicy and ClusterNetworkPolicy (it fails with
// ErrClusterPoliciesNotSynced until those are known). Node is this node; HostIf and the IPs of local
// pods that the API does not show yet are the caller's to fill in.
func (w *Watcher) PolicyInput() (policy.Input, error) {
	in := policy.Input{Node: w.nodeName}
	cnps, err := w.ClusterPolicies()
	if err != nil {
		return in, err
	}
	in.ClusterPolicies = cnps
	for _, o := range w.podsInf.GetStore().List() {
		p := o.(*corev1.Pod)
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		pp := policy.Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, Labels: p.Labels, HostNetwork: p.Spec.HostNetwork}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				pp.IPs = append(pp.IPs, a)
			}
		}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name != "" {
					pp.Ports = append(pp.Ports, policy.NamedPort{Name: cp.Name, Protocol: cp.Protocol, Port: cp.ContainerPort})
				}
			}
		}
		in.Pods = append(in.Pods, pp)
	}
	nss, err := w.nsList.List(everything)
	if err != nil {
		return in, err
	}
	for _, n := range nss {
		in.Namespaces = append(in.Namespaces, policy.Namespace{Name: n.Name, Labels: n.Labels})
	}
	in.Policies, err = w.netpols.List(everything)
	return in, err
}

package policy

import (
	"fmt"
	"slices"
	"strings"
)

// String renders the ruleset as text for people (ternctl, golden files):
// sets with their members, chains with their rules, then the pods.
func (rs *Ruleset) String() string {
	if rs == nil {
		return "<nil ruleset>\n"
	}
	var b strings.Builder
	for _, s := range rs.Sets {
		fmt.Fprintf(&b, "set %s %s family %s  # %s\n", s.Name, s.Type, familyName(s.IPv6), s.Comment)
		for _, m := range s.Members {
			fmt.Fprintf(&b, "  %s\n", m)
		}
	}
	for _, c := range rs.Chains {
		fmt.Fprintf(&b, "chain %s %s  # %s\n", c.Name, ipFamily(c.IPv6), c.Comment)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "  %s\n", r.String())
		}
	}
	keys := make([]string, 0, len(rs.Pods))
	for k := range rs.Pods {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := rs.Pods[k]
		ips := make([]string, len(p.IPs))
		for i, a := range p.IPs {
			ips[i] = a.String()
		}
		fmt.Fprintf(&b, "pod %s hostIf %s ips [%s]\n", k, p.HostIf, strings.Join(ips, " "))
		fmt.Fprintf(&b, "  ingress: %s\n", describeDirection(p.IngressChain, p.IngressTailChain, p.AdminIngress, p.Ingress, p.BaselineIngress))
		fmt.Fprintf(&b, "  egress: %s\n", describeDirection(p.EgressChain, p.EgressTailChain, p.AdminEgress, p.Egress, p.BaselineEgress))
	}
	return b.String()
}

// describeDirection: "open", or the chains and the policies of each tier
// in the order they are evaluated ("TERN-PI-x by ns/p" for NetworkPolicy
// alone).
func describeDirection(chain, tail string, admin, policies, baseline []string) string {
	if chain == "" {
		return "open"
	}
	var parts []string
	if len(admin) > 0 {
		parts = append(parts, "Admin "+strings.Join(admin, ", "))
	}
	if len(policies) > 0 {
		parts = append(parts, "by "+strings.Join(policies, ", "))
	}
	if len(baseline) > 0 {
		parts = append(parts, "Baseline "+strings.Join(baseline, ", "))
	}
	if tail != "" {
		chain += " then " + tail
	}
	return chain + " " + strings.Join(parts, "; ")
}

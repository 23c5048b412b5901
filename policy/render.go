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
		fmt.Fprintf(&b, "  ingress: %s\n", describeDirection(p.IngressChain, p.Ingress))
		fmt.Fprintf(&b, "  egress: %s\n", describeDirection(p.EgressChain, p.Egress))
	}
	return b.String()
}

func describeDirection(chain string, policies []string) string {
	if len(policies) == 0 {
		return "open"
	}
	return chain + " by " + strings.Join(policies, ", ")
}

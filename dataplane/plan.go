package dataplane

import (
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"slices"
	"strings"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/policy"
)

// Chain names; all of tern's chains start with "TERN-".
const (
	ChainNATOutgoing = "TERN-NAT-OUTGOING"
	ChainForward     = "TERN-FORWARD"
)

// NodeConfig is what the node's dataplane is computed from.
type NodeConfig struct {
	// PodCIDRs are the node's own pod CIDRs (at most one per family).
	PodCIDRs []netip.Prefix
	// ClusterCIDRs are every pod CIDR of the cluster; traffic to them is not
	// masqueraded. Empty means PodCIDRs.
	ClusterCIDRs []netip.Prefix
	// NATOutgoing masquerades IPv4 pod traffic leaving ClusterCIDRs.
	NATOutgoing bool
	// NATOutgoingIPv6 masquerades IPv6 pod traffic leaving ClusterCIDRs.
	// Off by default: IPv6 pod addresses are meant to be globally routable
	// and announced by BGP, and masquerading hides pods behind the node's
	// address; it is for ULA pod ranges that nothing routes back to.
	NATOutgoingIPv6 bool
	// Policy enforces NetworkPolicy: TERN-FORWARD's first rule jumps to
	// policy.ChainPolicy, so policy sees pod traffic before TERN-FORWARD
	// accepts it. The policy driver owns that chain and must have created it
	// (Policy.Apply) before Node.Apply writes the jump.
	Policy bool
}

// Route is a route tern owns, as a value.
type Route struct {
	Dst       netip.Prefix
	Blackhole bool
}

// Plan is the desired node state.
type Plan struct {
	IPv4, IPv6 bool
	Routes     []Route
	Chains     []Chain // per family, see Chain.IPv6
	Jumps      []Jump
}

// Chain is one of tern's iptables chains with its whole content.
type Chain struct {
	IPv6  bool
	Table string
	Name  string
	Rules []Rule
}

// Rule is one rule of a chain: its match and target, without "-A CHAIN".
type Rule []string

// Jump is the one rule tern inserts into a built-in chain: a jump to its own.
type Jump struct {
	IPv6    bool
	Table   string
	From    string
	To      string
	Comment string
}

// Spec is the rule specification of the jump.
func (j Jump) Spec() []string {
	return []string{"-m", "comment", "--comment", j.Comment, "-j", j.To}
}

// Hash marks a rule as tern's and identifies its content: "tern:" and 16
// base64 characters of a SHA-256 of the chain name and the rule.
func (r Rule) Hash(chain string) string {
	h := sha256.Sum256([]byte(chain + "\x00" + strings.Join(r, "\x00")))
	return "tern:" + base64.RawURLEncoding.EncodeToString(h[:12])
}

// PlanNode computes the desired node state. It does no I/O.
func PlanNode(cfg NodeConfig) Plan {
	var p Plan
	for _, c := range cfg.PodCIDRs {
		if c.Addr().Is4() {
			p.IPv4 = true
		} else {
			p.IPv6 = true
		}
		r := Route{Dst: c.Masked(), Blackhole: true}
		if !slices.Contains(p.Routes, r) {
			p.Routes = append(p.Routes, r)
		}
	}
	slices.SortFunc(p.Routes, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })

	for _, v6 := range []bool{false, true} {
		if (v6 && !p.IPv6) || (!v6 && !p.IPv4) {
			continue
		}
		fwd := Chain{IPv6: v6, Table: "filter", Name: ChainForward}
		if cfg.Policy {
			fwd.Rules = append(fwd.Rules, Rule{"-j", policy.ChainPolicy})
		}
		fwd.Rules = append(fwd.Rules,
			Rule{"-i", hostveth.Prefix + "+", "-j", "ACCEPT"},
			Rule{"-o", hostveth.Prefix + "+", "-j", "ACCEPT"},
		)
		p.Chains = append(p.Chains, fwd)
		p.Jumps = append(p.Jumps, Jump{IPv6: v6, Table: "filter", From: "FORWARD", To: ChainForward, Comment: "tern: pod forwarding"})
		if (!v6 && !cfg.NATOutgoing) || (v6 && !cfg.NATOutgoingIPv6) {
			continue
		}
		nat := Chain{IPv6: v6, Table: "nat", Name: ChainNATOutgoing}
		// Per family, the cluster CIDRs default to the node's pod CIDRs.
		cluster := familyOf(cfg.ClusterCIDRs, v6)
		if len(cluster) == 0 {
			cluster = familyOf(cfg.PodCIDRs, v6)
		}
		for _, c := range cluster {
			if c.Addr().Is6() == v6 {
				nat.Rules = append(nat.Rules, Rule{"-d", c.Masked().String(), "-j", "RETURN"})
			}
		}
		for _, c := range cfg.PodCIDRs {
			if c.Addr().Is6() == v6 {
				nat.Rules = append(nat.Rules, Rule{"-s", c.Masked().String(), "-j", "MASQUERADE"})
			}
		}
		p.Chains = append(p.Chains, nat)
		p.Jumps = append(p.Jumps, Jump{IPv6: v6, Table: "nat", From: "POSTROUTING", To: ChainNATOutgoing, Comment: "tern: masquerade pod traffic leaving the cluster"})
	}
	return p
}

// DiffRoutes returns the routes to add and to delete to go from installed to
// desired. Both are routes tern owns.
func DiffRoutes(desired, installed []Route) (add, del []Route) {
	have := map[Route]bool{}
	for _, r := range installed {
		have[r] = true
	}
	want := map[Route]bool{}
	for _, r := range desired {
		if !have[r] && !want[r] {
			add = append(add, r)
		}
		want[r] = true
	}
	for _, r := range installed {
		if !want[r] {
			del = append(del, r)
		}
	}
	return add, del
}

func familyOf(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

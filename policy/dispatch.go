package policy

import (
	"strings"

	"github.com/tern-net/tern/hostveth"
)

// The dispatch from ChainPolicy to the pod chains is a tree keyed on the
// host veth's name, as Calico's is: tern's host veths are hostveth.Prefix
// ("tern") and hostveth.HexLen (11) lowercase hex characters, and iptables
// matches an interface name prefix with a trailing "+" ("-i tern3a+"). Per
// family and direction, ChainPolicy jumps ("-j") to the root, TERN-PDF (from
// pods: "-i", egress) or TERN-PDT (to pods: "-o", ingress); a dispatch chain
// holding more than dispatchLeafMax veths splits them by their next hex
// character into chains TERN-PDF-<prefix> (one per character that more than
// one of them has; a lone veth keeps its exact rule), and a leaf holds one
// exact rule per veth, "-i <veth> -g TERN-PE-<hash>". A child is named
// after the longest prefix its veths share, so a chain's name depends only
// on its own veths: adding or removing a pod rewrites its leaf (and, when a
// leaf splits or merges, the leaf's parent and the leaf's children), never
// the whole dispatch.
//
// Inside the tree every rule goes to ("-g"), so that when the pod chain
// RETURNs, the packet is back in ChainPolicy right after the rule that
// jumped to the root: a packet that the source's egress chain allows goes
// on to the ingress dispatch, and one that the destination's ingress chain
// allows returns from ChainPolicy. A packet from no policed veth falls off
// the tree's end and is back in ChainPolicy the same way. A packet walks at
// most dispatchLeafMax rules per level: with 1,000 pods, two levels and a
// leaf.
//
// Veths whose name does not have tern's shape (not from tern's CNI plugin)
// get exact rules at the root's start, before any prefix rule could catch
// them; if one does not even start with hostveth.Prefix, ChainPolicy jumps
// to the root unconditionally instead of on "tern+".

const (
	// dispatchFromPrefix and dispatchToPrefix name the dispatch chains of
	// egress ("-i", from pods) and ingress ("-o", to pods): the root is the
	// bare prefix, a child adds "-" and its veths' common hex prefix
	// (at most 9 + 11 = 20 characters).
	dispatchFromPrefix = ChainPrefix + "DF"
	dispatchToPrefix   = ChainPrefix + "DT"
	// dispatchLeafMax is the most veths a leaf holds, and the most rules
	// a packet walks in one dispatch chain (16 hex characters).
	dispatchLeafMax = 16
)

// dispatchEntry is one policed pod of a direction: its veth and its chain.
type dispatchEntry struct {
	hostIf, chain string
}

// dispatchChainName names the dispatch chain of direction d for veths
// sharing the hex prefix (the root for "").
func dispatchChainName(d direction, prefix string) string {
	base := dispatchToPrefix
	if d == egress {
		base = dispatchFromPrefix
	}
	if prefix == "" {
		return base
	}
	return base + "-" + prefix
}

// dispatchTree builds the dispatch of one family and direction: the rule
// of ChainPolicy that enters it (none, the zero Rule, without entries) and
// its chains.
// entries are sorted by veth name (duplicates, which a consistent snapshot
// does not have, next to each other).
func dispatchTree(v6 bool, d direction, entries []dispatchEntry) (Rule, []Chain) {
	if len(entries) == 0 {
		return Rule{}, nil
	}
	b := dispatchBuilder{v6: v6, d: d}
	root := Chain{Name: dispatchChainName(d, ""), IPv6: v6, Kind: DispatchChain, Comment: "tern: " + d.String() + " dispatch"}
	guarded := true
	var hex []dispatchEntry
	var odd []dispatchEntry
	for _, e := range entries {
		if hostveth.IsTern(e.hostIf) {
			hex = append(hex, e)
			continue
		}
		odd = append(odd, e)
		if !strings.HasPrefix(e.hostIf, hostveth.Prefix) {
			guarded = false
		}
	}
	root.Rules = b.exact(nil, odd)
	root.Rules = b.node(root.Rules, "", hex)
	b.chains = append(b.chains, root)
	enter := b.rule(hostveth.Prefix+"+", root.Name, false)
	if !guarded {
		enter = Rule{Target: root.Name}.Render()
	}
	return enter, b.chains
}

type dispatchBuilder struct {
	v6     bool
	d      direction
	chains []Chain
}

// exact appends one rule per entry going to its pod chain. Of entries of
// the same veth all but the last jump ("-j"), so each pod chain of that
// veth is passed, as when every pod had its own veth.
func (b *dispatchBuilder) exact(rules []Rule, es []dispatchEntry) []Rule {
	for i, e := range es {
		goTo := i+1 == len(es) || es[i+1].hostIf != e.hostIf
		rules = append(rules, b.rule(e.hostIf, e.chain, goTo))
	}
	return rules
}

// node appends the rules of a dispatch chain for the entries es, all of
// whose hex parts start with prefix, creating the child chains.
func (b *dispatchBuilder) node(rules []Rule, prefix string, es []dispatchEntry) []Rule {
	if distinctHostIfs(es) <= dispatchLeafMax {
		return b.exact(rules, es)
	}
	at := len(hostveth.Prefix) + len(prefix)
	for i := 0; i < len(es); {
		j := i + 1
		for j < len(es) && es[j].hostIf[at] == es[i].hostIf[at] {
			j++
		}
		group := es[i:j]
		i = j
		if group[0].hostIf == group[len(group)-1].hostIf {
			rules = b.exact(rules, group) // one veth: no chain of its own
			continue
		}
		// The group's common prefix: sorted, so that of its first and last.
		first, last := group[0].hostIf, group[len(group)-1].hostIf
		n := at + 1
		for n < len(first) && first[n] == last[n] {
			n++
		}
		sub := first[len(hostveth.Prefix):n]
		child := Chain{Name: dispatchChainName(b.d, sub), IPv6: b.v6, Kind: DispatchChain, Comment: "tern: " + b.d.String() + " dispatch " + hostveth.Prefix + sub}
		child.Rules = b.node(nil, sub, group)
		b.chains = append(b.chains, child)
		rules = append(rules, b.rule(first[:n]+"+", child.Name, true))
	}
	return rules
}

// rule is the dispatch rule sending the packets of the interface ifc (or
// of the prefix, with a trailing "+") to target.
func (b *dispatchBuilder) rule(ifc, target string, goTo bool) Rule {
	r := Rule{Target: target, Goto: goTo}
	if b.d == egress {
		r.In = ifc
	} else {
		r.Out = ifc
	}
	return r.Render()
}

// distinctHostIfs counts the veths of sorted entries.
func distinctHostIfs(es []dispatchEntry) int {
	n := 0
	for i := range es {
		if i == 0 || es[i].hostIf != es[i-1].hostIf {
			n++
		}
	}
	return n
}

package dataplane

import (
	"strings"

	"github.com/tern-net/tern/policy"
)

// The dispatch as the cut pass sees it. policy.Compile sends a pod's packets
// from ChainPolicy to its pod chains through a tree of dispatch chains keyed
// on the host veth's name: ChainPolicy enters a root ("-i tern+ -j
// TERN-PDF"), inside the tree rules go ("-g") to the chain of a name prefix
// ("-i tern3+ -g TERN-PDF-3") and the leaves to the pod chains ("-i <veth>
// -g TERN-PE-<h>"). A change to one leaf (a pod added or removed, a leaf
// split or merged) rewrites dispatch chains that many pods walk through,
// without changing where any other pod's packets go. So the cut pass does
// not ask whether a dispatch chain was rewritten but where the packets of
// each local pod's interface go: dispatchWalker.trace follows them, for the
// rules before and after a change, and only a pod whose trace differs has
// had its dispatch changed.
//
// The walker knows the shape by the rules' values, not by names: a dispatch
// rule matches nothing but one interface or prefix (In or Out) and jumps or
// goes to a chain of the ruleset; a dispatch chain holds
// nothing but dispatch rules; in ChainPolicy a dispatch rule, or an
// unconditional jump or goto to a dispatch chain, is a dispatch rule, and
// any other rule is one of ChainPolicy's own (the cut mark, established
// connections, anything else), which the trace records by position. A
// chain a dispatch rule leads to that is not a dispatch chain is a pod
// chain: the trace records its name, and the classifier how its content
// and sets changed.

// traceStep is one step of a packet's way through ChainPolicy: one of its
// own rules (by index among them; chain "") or a pod chain (rule -1).
type traceStep struct {
	rule  int32
	chain string
}

// isDispatchRule reports whether r sends the packets of an interface, or of
// the interfaces starting with a prefix ("tern3+"), to a chain of the
// ruleset.
func isDispatchRule(r policy.Rule) bool {
	if (r.In == "") == (r.Out == "") || !r.MatchesOnlyInterfaces() || !strings.HasPrefix(r.Target, policy.ChainPrefix) {
		return false
	}
	name := strings.TrimSuffix(r.In+r.Out, "+")
	return name != "" && !strings.ContainsAny(name, "+!")
}

// ruleIface is the interface a rule matches for flag ("-i": In, "-o": Out).
func ruleIface(r policy.Rule, flag string) string {
	if flag == "-i" {
		return r.In
	}
	return r.Out
}

// ifMatches reports whether the interface pattern pat (iptables' "-i": a
// name, or a prefix with a trailing "+") matches the interface ifc.
func ifMatches(pat, ifc string) bool {
	if p, ok := strings.CutSuffix(pat, "+"); ok {
		return strings.HasPrefix(ifc, p)
	}
	return pat == ifc
}

// dispatchWalker follows packets through the policy chains of one family,
// as one version of them (before or after a change) holds them.
type dispatchWalker struct {
	// view is the content of a chain: ok false when it is not known (read
	// back as hashes only); nil, true for an absent or empty one.
	view    func(name string) (rules []policy.Rule, ok bool)
	written map[string]bool
	entry   []policy.Rule
	// own maps the index of a rule of entry to its index among
	// ChainPolicy's own rules, -1 for a dispatch rule.
	own  []int32
	tree map[string]bool // memo of isTree
	// touched says the last trace entered a chain in written.
	touched bool
}

// walkDepth bounds the chains a trace enters in a row (iptables refuses
// loops; the compiler's trees are at most 12 deep).
const walkDepth = 32

// newDispatchWalker returns a walker over view; ok is false when
// ChainPolicy's content or that of a chain it enters directly is unknown.
func newDispatchWalker(view func(string) ([]policy.Rule, bool), written map[string]bool) (*dispatchWalker, bool) {
	w := &dispatchWalker{view: view, written: written, tree: map[string]bool{}}
	entry, ok := view(policy.ChainPolicy)
	if !ok {
		return nil, false
	}
	w.entry, w.own = entry, make([]int32, len(entry))
	n := int32(0)
	for i, r := range entry {
		d, ok := w.isEntryDispatch(r)
		if !ok {
			return nil, false
		}
		if d {
			w.own[i] = -1
			continue
		}
		w.own[i] = n
		n++
	}
	return w, true
}

// isEntryDispatch reports whether a rule of ChainPolicy is dispatch.
func (w *dispatchWalker) isEntryDispatch(r policy.Rule) (bool, bool) {
	if isDispatchRule(r) {
		return true, true
	}
	if r.In == "" && r.Out == "" && r.MatchesOnlyInterfaces() && strings.HasPrefix(r.Target, policy.ChainPrefix) {
		return w.isTree(r.Target)
	}
	return false, true
}

// ownRules are ChainPolicy's rules that are not dispatch, in order.
func (w *dispatchWalker) ownRules() []policy.Rule {
	var out []policy.Rule
	for i, r := range w.entry {
		if w.own[i] >= 0 {
			out = append(out, r)
		}
	}
	return out
}

// isTree reports whether the chain name is a dispatch chain: it has rules,
// all of them dispatch rules. ok is false when its content is unknown.
func (w *dispatchWalker) isTree(name string) (tree, ok bool) {
	if t, seen := w.tree[name]; seen {
		return t, true
	}
	if name == policy.ChainPolicy {
		return false, true
	}
	rules, ok := w.view(name)
	if !ok {
		return false, false
	}
	tree = len(rules) > 0
	for _, r := range rules {
		if !isDispatchRule(r) {
			tree = false
			break
		}
	}
	w.tree[name] = tree
	return tree, true
}

// trace appends to out the way through ChainPolicy of a packet coming from
// the interface ifc (flag "-i") or going to it ("-o"), as far as the
// interface decides it: ChainPolicy's own rules and the pod chains, in the
// order the packet meets them should each rule let it go on. ok is false
// when a chain on the way is unknown, or the way is too deep.
func (w *dispatchWalker) trace(ifc, flag string, out []traceStep) ([]traceStep, bool) {
	w.touched = w.written[policy.ChainPolicy]
	for i, r := range w.entry {
		if w.own[i] >= 0 {
			out = append(out, traceStep{rule: w.own[i]})
			continue
		}
		if r.In != "" || r.Out != "" {
			if pat := ruleIface(r, flag); pat == "" || !ifMatches(pat, ifc) {
				continue
			}
		}
		var ok bool
		if out, ok = w.enter(r.Target, ifc, flag, out, 0); !ok {
			return out, false
		}
		if r.Goto {
			return out, true // the target's return leaves ChainPolicy
		}
	}
	return out, true
}

// enter follows the packet into the chain name until that returns.
func (w *dispatchWalker) enter(name, ifc, flag string, out []traceStep, depth int) ([]traceStep, bool) {
	tree, ok := w.isTree(name)
	if !ok || depth > walkDepth {
		return out, false
	}
	if !tree {
		return append(out, traceStep{rule: -1, chain: name}), true
	}
	if w.written[name] {
		w.touched = true
	}
	rules, _ := w.view(name)
	for _, r := range rules {
		if pat := ruleIface(r, flag); pat == "" || !ifMatches(pat, ifc) {
			continue
		}
		if out, ok = w.enter(r.Target, ifc, flag, out, depth+1); !ok {
			return out, false
		}
		if r.Goto {
			return out, true
		}
	}
	return out, true
}

// hasChain reports whether a trace reaches a pod chain.
func hasChain(t []traceStep) bool {
	for _, s := range t {
		if s.rule < 0 {
			return true
		}
	}
	return false
}

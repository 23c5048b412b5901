package dataplane

import (
	"net/netip"
	"slices"

	"github.com/tern-net/tern/policy"
)

// The cut pass, step 4 of Policy.Apply, has two halves: which established
// flows a change of the rules may have denied or allowed again (scopeOf,
// here: pure, from the rules before and after), and judging and marking
// those flows in the conntrack table (cutFlows, conntrack.go).
//
// Reading the table costs about the same whatever it holds: the kernel
// walks every bucket of its hash table, which all network namespaces share
// (with 262,144 buckets, about 10 ms). So a pass runs only when
// some flow's verdict may have changed, reads both families in one dump,
// and reads nothing when the namespace holds no entry at all.

// flowScope is whose established flows a change of the rules may have
// denied, or allowed again: every flow whose verdict may have changed, for
// a denied function that judges by the rules themselves, as
// policy.Evaluator does. The verdict on a flow's first packet depends only
// on ChainPolicy's rules that are not one pod's dispatch, on the dispatch
// rules of the host interfaces of its two addresses (as rs.Pods maps them),
// on the chains those lead to and on the sets those match.
type flowScope struct {
	// all: any flow of a local pod (ChainPolicy changed otherwise than in
	// some pods' dispatch rules, or its former content is not known).
	all bool
	// narrowed: flows of these addresses may be denied now.
	narrowed map[netip.Addr]bool
	// widened: flows of these addresses may be allowed now where they were
	// not, which matters only to flows carrying policy.CutMark.
	widened map[netip.Addr]bool
	// widenedAll: any flow may be allowed now where it was not.
	widenedAll bool
}

// ruleChange is what one Apply writes, as scopeOf needs it.
type ruleChange struct {
	// old are the chains of each family that the Apply rewrites, creates
	// or deletes, as they were before it (chains it leaves are as they
	// are now).
	old [2]map[string]entryState
	// written are the chains each family's restore rewrites or creates.
	written [2]map[string]bool
	// narrowedSets may match less than before: members deleted, nomatch
	// entries added, members added where a rule uses the set so that a
	// member narrows (validateRuleset), refilled, or new (every chain
	// using a new set is written too). widenedSets only gained members.
	narrowedSets, widenedSets map[string]bool
}

func newRuleChange() *ruleChange {
	return &ruleChange{old: [2]map[string]entryState{{}, {}}, written: [2]map[string]bool{{}, {}}, narrowedSets: map[string]bool{}, widenedSets: map[string]bool{}}
}

// empty reports whether the Apply wrote no chain and changed no set.
func (c *ruleChange) empty() bool {
	return len(c.written[0]) == 0 && len(c.written[1]) == 0 && len(c.narrowedSets) == 0 && len(c.widenedSets) == 0
}

// onlyWidens reports whether the Apply only added members to sets used to
// allow.
func (c *ruleChange) onlyWidens() bool {
	return len(c.written[0]) == 0 && len(c.written[1]) == 0 && len(c.narrowedSets) == 0
}

// noteSets records how the sets plan changes (plan.next, before it has
// run) change what they match; have is what is installed.
func (c *ruleChange) noteSets(have map[string]*ipsetState, plan *setPlan, narrowOnAdd map[string]bool) {
	for name, next := range plan.next {
		old := have[name]
		narrows := old == nil || plan.narrows && (old.maxelem < setMaxElem || narrowOnAdd[name] ||
			dropsMembers(old.members, next.members) || addsNomatch(next.members, old.members))
		if narrows {
			c.narrowedSets[name] = true
		} else {
			c.widenedSets[name] = true
		}
	}
}

// dropsMembers reports whether have holds an element that want lacks.
func dropsMembers(have, want map[string]bool) bool {
	for elem := range have {
		if _, ok := want[elem]; !ok {
			return true
		}
	}
	return false
}

// entryState is a policy chain as installed.
type entryState struct {
	known bool          // rules is its content, values and arguments; false: only its hashes were read back
	rules []policy.Rule // nil when empty or absent
}

// noteOld records chain name of family f as it is before the Apply changes
// it, unless an earlier pass of the Apply did.
func (c *ruleChange) noteOld(f int, name string, st *chainState) {
	if _, ok := c.old[f][name]; !ok {
		c.old[f][name] = entryOf(st)
	}
}

func entryOf(c *chainState) entryState {
	switch {
	case c == nil:
		return entryState{known: true}
	case c.known:
		return entryState{known: true, rules: c.applied}
	}
	return entryState{}
}

// podIfs maps the addresses of the local pods of rs to their host
// interfaces; an address several pods claim goes to the smallest
// "ns/name", as policy.Evaluator resolves it.
func podIfs(pods map[string]policy.PodPolicy) map[netip.Addr]string {
	type owner struct{ key, hostIf string }
	owners := make(map[netip.Addr]owner, len(pods))
	for key, pp := range pods {
		for _, a := range pp.IPs {
			a = a.Unmap()
			if o, ok := owners[a]; ok && o.key < key {
				continue
			}
			owners[a] = owner{key, pp.HostIf}
		}
	}
	byIP := make(map[netip.Addr]string, len(owners))
	for a, o := range owners {
		byIP[a] = o.hostIf
	}
	return byIP
}

// scopeOf is whose flows the change ch may have denied or allowed again:
// rs is the ruleset written, before and after the local pods' host
// interfaces (podIfs) the flows were last judged with and are judged with
// now (before nil: none known), and simple whether the rules before and
// after are simple (rulesetFacts; otherwise every change may deny).
//
// For each local pod's interface and direction, the dispatch is followed
// through the rules before and after (dispatchWalker.trace; only when a
// dispatch chain on its way now was rewritten). A pod's flows are narrowed
// when its trace changed and still reaches a pod chain (it became
// isolated, or is policed by another chain), when a pod chain on its way
// (or one that chain jumps to) was rewritten or uses a narrowed set, or
// when its address is newly on a policed interface. They are widened when
// its trace no longer reaches a pod chain (it is open now), a pod chain on
// its way uses a widened set, or its address is newly local on an
// interface nothing polices, or left. A change of ChainPolicy's own rules
// (not dispatch), or a way that cannot be followed (a chain's former
// content unknown), affects all flows.
func scopeOf(ch *ruleChange, rs policy.Ruleset, before, after map[netip.Addr]string, simple bool) flowScope {
	sc := scopeOfAny(ch, rs, before, after)
	if !simple {
		// What would only allow more in a simple ruleset may deny in
		// another (rulesetFacts).
		for a := range sc.widened {
			sc.narrowed[a] = true
		}
		clear(sc.widened)
		sc.all, sc.widenedAll = sc.all || sc.widenedAll, false
	}
	return sc
}

// ifScope is how the policing of one interface changed.
type ifScope struct {
	fresh            bool // an address is newly on it
	narrows, widens  bool
	policed, checked bool // policed: a pod chain polices it now (checked: known)
}

// scopeOfAny is scopeOf as if the rules before and after were simple.
func scopeOfAny(ch *ruleChange, rs policy.Ruleset, before, after map[netip.Addr]string) flowScope {
	sc := flowScope{narrowed: map[netip.Addr]bool{}, widened: map[netip.Addr]bool{}}
	// The interfaces of the local addresses, per family.
	ifs := [2]map[string]*ifScope{{}, {}}
	note := func(a netip.Addr, ifc string, fresh bool) {
		m := ifs[famIndex(a.Is6())]
		s := m[ifc]
		if s == nil {
			s = &ifScope{}
			m[ifc] = s
		}
		s.fresh = s.fresh || fresh
	}
	for a, ifc := range before {
		note(a, ifc, false)
	}
	for a, ifc := range after {
		old, ok := before[a]
		note(a, ifc, !ok || old != ifc)
	}
	setsChanged := len(ch.narrowedSets) > 0 || len(ch.widenedSets) > 0
	var cur, prev []traceStep
	for f, v6 := range []bool{false, true} {
		changed := setsChanged || len(ch.written[f]) > 0
		if !changed && !hasFresh(ifs[f]) {
			continue
		}
		cl := newClassifier(ch, ch.written[f], rs.Chains, v6)
		now := func(name string) ([]policy.Rule, bool) {
			if i, ok := cl.index[name]; ok {
				return rs.Chains[i].Rules, true
			}
			return nil, true
		}
		nw, ok := newDispatchWalker(now, ch.written[f])
		if !ok {
			sc.all = true
			return sc
		}
		var ow *dispatchWalker // the rules before, when needed
		oldWalker := func() bool {
			if ow != nil {
				return true
			}
			was := func(name string) ([]policy.Rule, bool) {
				if st, ok := ch.old[f][name]; ok {
					return st.rules, st.known
				}
				return now(name) // not written: as it was
			}
			ow, ok = newDispatchWalker(was, ch.written[f])
			return ok
		}
		if changed {
			if ch.written[f][policy.ChainPolicy] {
				if !oldWalker() || !slices.EqualFunc(ow.ownRules(), nw.ownRules(), policy.Rule.Equal) {
					sc.all = true
					return sc
				}
			}
			for _, r := range nw.ownRules() {
				switch cl.rule(r) {
				case narrows:
					sc.all = true
					return sc
				case widens:
					sc.widenedAll = true
				}
			}
		}
		for ifc, s := range ifs[f] {
			if !changed && !s.fresh {
				continue
			}
			s.checked = true
			for _, flag := range []string{"-i", "-o"} {
				if cur, ok = nw.trace(ifc, flag, cur[:0]); !ok {
					sc.all = true
					return sc
				}
				reaches := hasChain(cur)
				s.policed = s.policed || reaches
				if !changed {
					continue
				}
				if nw.touched {
					if !oldWalker() {
						sc.all = true
						return sc
					}
					if prev, ok = ow.trace(ifc, flag, prev[:0]); !ok {
						sc.all = true
						return sc
					}
					if !slices.Equal(prev, cur) {
						if reaches || !hasChain(prev) {
							s.narrows = true
						} else {
							s.widens = true
						}
						continue
					}
				}
				for _, st := range cur {
					if st.rule >= 0 {
						continue
					}
					switch cl.chain(st.chain) {
					case narrows:
						s.narrows = true
					case widens:
						s.widens = true
					}
				}
			}
		}
	}
	for a, ifc := range after {
		s := ifs[famIndex(a.Is6())][ifc]
		if old, ok := before[a]; !ok || old != ifc {
			// Newly this interface's: judged by its rules from now on.
			// An interface of no pod has no flows a denied function can
			// tell (nor can it judge them by its rules).
			if s.policed || !s.checked {
				sc.narrowed[a] = true
			} else {
				sc.widened[a] = true
			}
		}
	}
	for _, m := range []map[netip.Addr]string{before, after} {
		for a, ifc := range m {
			s := ifs[famIndex(a.Is6())][ifc]
			if s.narrows {
				sc.narrowed[a] = true
			} else if s.widens {
				sc.widened[a] = true
			}
		}
	}
	for a := range before {
		if _, ok := after[a]; !ok && !sc.narrowed[a] {
			sc.widened[a] = true
		}
	}
	return sc
}

// hasFresh reports whether an address is newly on one of the interfaces.
func hasFresh(ifs map[string]*ifScope) bool {
	for _, s := range ifs {
		if s.fresh {
			return true
		}
	}
	return false
}

// change is how a chain or rule may match now compared to before.
type change int8

const (
	unchanged change = iota
	widens
	narrows
)

// classifier tells how the chains of one family changed.
type classifier struct {
	ch      *ruleChange
	written map[string]bool
	chains  []policy.Chain
	index   map[string]int // chain name → position in chains
	memo    []change
	done    []bool
}

func newClassifier(ch *ruleChange, written map[string]bool, chains []policy.Chain, v6 bool) *classifier {
	c := &classifier{ch: ch, written: written, chains: chains, index: make(map[string]int, len(chains)),
		memo: make([]change, len(chains)), done: make([]bool, len(chains))}
	for i := range chains {
		if chains[i].IPv6 == v6 {
			c.index[chains[i].Name] = i
		}
	}
	return c
}

// chain is how a chain changed: narrows when it was written or a rule of
// it narrows, widens when one widens. A target that is not a chain of the
// ruleset (DROP, RETURN) is unchanged.
func (c *classifier) chain(name string) change {
	i, ok := c.index[name]
	if !ok {
		return unchanged
	}
	if c.done[i] {
		return c.memo[i]
	}
	c.done[i], c.memo[i] = true, narrows // a loop, which iptables refuses, would narrow
	v := unchanged
	if c.written[name] {
		v = narrows
	}
	for _, r := range c.chains[i].Rules {
		if v == narrows {
			break
		}
		v = max(v, c.rule(r))
	}
	c.memo[i] = v
	return v
}

// rule is how the sets a rule matches and the chain it jumps to changed.
func (c *classifier) rule(r policy.Rule) change {
	v := unchanged
	for _, m := range r.Sets {
		if c.ch.narrowedSets[m.Name] {
			return narrows
		}
		if c.ch.widenedSets[m.Name] {
			v = widens
		}
	}
	if r.Target != "" {
		v = max(v, c.chain(r.Target))
	}
	return v
}

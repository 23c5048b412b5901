package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/tern-net/tern/policy"
)

// Policy applies a compiled policy.Ruleset to the network namespace of the
// calling thread: tern's ipsets (policy.SetPrefix) and the policy chains of
// the filter table (policy.ChainPrefix), both families. It reads back what is
// installed at its first Apply and after Resync, and otherwise diffs against
// what it last wrote, so an Apply that changes only set members runs a single
// `ipset restore`. Nothing without tern's prefixes is touched, and nothing is
// written before the first Apply: a restarted agent leaves the installed
// rules in place until it knows the desired ones.
//
// Each Apply writes in an order that never opens a hole:
//  1. one `ipset restore`: new sets, new members, removed members (removing
//     members only narrows what the installed rules allow, and rules never
//     refer to a set before it exists);
//  2. per family, one iptables-restore transaction that rewrites the changed
//     chains and deletes the stale ones atomically, so a pod's new allow
//     rules and its drop land together (should a rule that is not tern's
//     hold a stale chain, the rewrite runs again alone and the stale chain
//     is reported);
//  3. one `ipset restore` that destroys sets no rule refers to any more;
//  4. established flows of local pods that the new ruleset denies are cut
//     (conntrack mark policy.CutMark, which ChainPolicy's first rule drops),
//     and cut ones it allows again are let go. This reads the whole
//     conntrack table (one dump, both families; about 10 ms however few
//     entries it holds), so it runs only when some flow's verdict may have
//     changed, and judges only the flows of the pods whose policing
//     changed (scopeOf): at the first Apply (flows older than the driver
//     were judged by rules it does not know, or by none) and after a
//     failure, every local pod's; otherwise those of pods whose policing
//     may now deny more (their packets' way through ChainPolicy and the
//     dispatch tree leads to other pod chains, which rewriting a dispatch
//     chain for other pods' veths does not do; a pod chain on it was
//     rewritten or uses a set that may match less; or their address is
//     newly on a policed interface), and those of
//     pods whose policing may allow more while one of their flows is cut.
//     Members added to sets used only to allow, pods that no policy
//     selects, and pods on other nodes trigger no pass. A namespace whose
//     conntrack table is empty is not read at all.
//
// A Policy is not safe for concurrent use: one reconcile goroutine owns it.
type Policy struct {
	log     *slog.Logger
	run     runner
	backend *Backend
	// synced says sets and chains hold what the kernel has; false before
	// the first Apply, after Resync and after a failed write.
	synced bool
	sets   map[string]*ipsetState
	chains [2]map[string]*chainState // IPv4, IPv6
	// ct is the namespace's conntrack table (a fake in tests).
	ct conntrackTable
	// pods maps the local pods' addresses to their host interfaces as of
	// the last Apply (podIfs): how the flows were last judged.
	pods map[netip.Addr]string
	// simple says the rules last written are simple (rulesetFacts).
	simple bool
	// judgeAll says the next pass judges every flow of a local pod: true
	// until the first pass succeeds (flows older than this driver were
	// judged by rules it does not know, or by none) and after a failure.
	judgeAll bool
	// judge are the addresses whose flows the next pass judges (besides
	// the flows carrying the mark).
	judge map[netip.Addr]bool
	// marked are the addresses (original source, reply source) of the
	// flows carrying policy.CutMark after the last pass: a change that may
	// allow more is judged only for them.
	marked map[netip.Addr]bool
}

// chainState is what one of the policy chains holds in the kernel.
type chainState struct {
	// known: applied is the chain's content, the rules (values and
	// arguments) the driver wrote or found matching their hashes.
	// Otherwise only the hash comments of its rules are known (a
	// read-back).
	known   bool
	applied []policy.Rule
	hashes  []string
}

// Flow is an established connection as the policy evaluator judges it: the
// first packet's source, destination after DNAT, protocol ("TCP", "UDP" or
// "SCTP", as corev1.Protocol) and destination port.
type Flow struct {
	Src, Dst netip.Addr
	Protocol string
	DstPort  int32
}

// PolicyStats says what an Apply changed.
type PolicyStats struct {
	SetsCreated, SetsDestroyed   int
	MembersAdded, MembersDeleted int
	ChainsWritten, ChainsDeleted int
	Restores                     int // iptables-restore runs
	SetRestores                  int // ipset restore runs
	FlowsCut                     int // established flows given policy.CutMark
	FlowsRestored                int // flows allowed again, mark cleared
	ConntrackDumps               int // reads of the conntrack table (both families each)
	FlowsJudged                  int // flows handed to the denied function
}

// Changed reports whether the Apply wrote anything to the kernel.
func (s PolicyStats) Changed() bool {
	return s.SetRestores > 0 || s.Restores > 0 || s.FlowsCut > 0 || s.FlowsRestored > 0
}

// NewPolicy returns a policy driver for the current network namespace. It
// writes nothing until Apply.
func NewPolicy(log *slog.Logger) *Policy {
	return &Policy{log: log, run: execRun, ct: kernelConntrack{}, judgeAll: true,
		judge: map[netip.Addr]bool{}, marked: map[netip.Addr]bool{}}
}

// UseBackend makes the driver write through backend b instead of detecting
// one at its first Apply. Give the node and the policy driver the same one.
func (p *Policy) UseBackend(b Backend) {
	p.backend = &b
	p.synced = false
}

// Resync makes the next Apply read the installed sets and chains back
// instead of trusting what it last wrote, repairing any drift.
func (p *Policy) Resync() { p.synced = false }

// Apply brings tern's sets and policy chains to rs, writing only what
// differs, then cuts the established flows of local pods (rs.Pods) for which
// denied returns true (nil denied: none; the flows a pass would have judged
// wait for the next Apply that has one). denied must judge by the rules of
// rs, as policy.Evaluator does: flows whose verdict under those rules cannot
// have changed are not asked about. ChainPolicy always exists afterwards in
// every family it existed in or rs has: with no ChainPolicy in rs for a
// family, an installed one is emptied, not deleted, since the node's
// TERN-FORWARD may jump to it.
//
// Apply keeps the rules and members of rs: do not modify them in place
// afterwards. It runs commands and netlink requests in the network namespace
// of the calling thread.
func (p *Policy) Apply(rs policy.Ruleset, denied func(Flow) bool) (PolicyStats, error) {
	var st PolicyStats
	if p.backend == nil {
		b, err := DetectBackend()
		if err != nil {
			return st, err
		}
		p.log.Info("iptables backend", "mode", b.Mode)
		p.backend = &b
	}
	facts, err := validateRuleset(rs, p.backend.v6.has())
	if err != nil {
		return st, fmt.Errorf("invalid ruleset: %w", err)
	}
	if !p.synced {
		if err := p.readBack(); err != nil {
			return st, err
		}
		p.synced = true
	}
	ch := newRuleChange()
	err = p.apply(rs, facts.narrowOnAdd, &st, ch)
	pods := podIfs(rs.Pods)
	simple := p.simple && facts.simple // the rules before and after
	switch {
	case err != nil:
		// A restore may have stopped half-way: read back next time, and
		// judge every flow.
		p.synced, p.judgeAll = false, true
	case !p.judgeAll && simple && len(p.marked) == 0 && ch.onlyWidens() && maps.Equal(pods, p.pods):
		// Only members added to sets used to allow, and no flow is cut:
		// nothing to judge.
	case !p.judgeAll && (!ch.empty() || !maps.Equal(pods, p.pods)):
		p.await(scopeOf(ch, rs, p.pods, pods, simple))
	}
	p.pods, p.simple = pods, facts.simple && err == nil
	if err == nil && denied != nil && (p.judgeAll || len(p.judge) > 0) {
		if cerr := p.cutPass(denied, &st); cerr != nil {
			err = fmt.Errorf("cut denied flows: %w", cerr)
		}
	}
	if st.Changed() || err != nil {
		p.log.Info("policy applied", "setsCreated", st.SetsCreated, "setsDestroyed", st.SetsDestroyed,
			"membersAdded", st.MembersAdded, "membersDeleted", st.MembersDeleted,
			"chainsWritten", st.ChainsWritten, "chainsDeleted", st.ChainsDeleted,
			"conntrackDumps", st.ConntrackDumps, "flowsJudged", st.FlowsJudged,
			"flowsCut", st.FlowsCut, "flowsRestored", st.FlowsRestored, "error", err)
	}
	return st, err
}

// await records whose flows the next pass judges: those sc narrowed, and
// those sc widened that some cut flow involves (only a cut flow can be
// allowed again).
func (p *Policy) await(sc flowScope) {
	if sc.all || (sc.widenedAll && len(p.marked) > 0) {
		p.judgeAll = true
	}
	if p.judgeAll {
		clear(p.judge)
		return
	}
	for a := range sc.narrowed {
		p.judge[a] = true
	}
	for a := range sc.widened {
		if p.marked[a] {
			p.judge[a] = true
		}
	}
}

// cutPass judges the flows await recorded (every local pod's with
// judgeAll), and those carrying the mark. A namespace without conntrack
// entries has nothing to judge.
func (p *Policy) cutPass(denied func(Flow) bool, st *PolicyStats) error {
	if n, ok := p.ct.count(); ok && n == 0 {
		p.judgeAll = false
		clear(p.judge)
		clear(p.marked)
		return nil
	}
	r, err := cutFlows(p.ct, p.pods, p.judgeAll, p.judge, denied)
	st.ConntrackDumps += r.dumps
	st.FlowsJudged += r.judged
	st.FlowsCut += r.cut
	st.FlowsRestored += r.restored
	if err != nil {
		p.judgeAll = true
		return err
	}
	p.judgeAll, p.marked = false, r.marked
	clear(p.judge)
	return nil
}

// apply writes rs. A set that exists with another type or family than rs
// wants is replaced in two passes: first under a temporary name that the
// rules are rewritten to (the old set, unreferenced, is destroyed), then
// under its own name again.
func (p *Policy) apply(rs policy.Ruleset, narrowOnAdd map[string]bool, st *PolicyStats, ch *ruleChange) error {
	rename := map[string]string{}
	taken := func(n string) bool {
		return p.sets[n] != nil || slices.ContainsFunc(rs.Sets, func(s policy.Set) bool { return s.Name == n }) ||
			slices.Contains(slices.Collect(maps.Values(rename)), n)
	}
	for i := range rs.Sets {
		s := &rs.Sets[i]
		if have := p.sets[s.Name]; have != nil && (have.typ != s.Type || have.v6 != s.IPv6) {
			rename[s.Name] = tempSetName(s.Name, taken)
		}
	}
	if len(rename) > 0 {
		p.log.Info("replacing sets of another type", "sets", slices.Sorted(maps.Keys(rename)))
		if err := p.applyOnce(renameSets(rs, rename), narrowOnAdd, st, ch); err != nil {
			return err
		}
	}
	return p.applyOnce(rs, narrowOnAdd, st, ch)
}

// applyOnce runs the steps 1 to 3 of Apply's doc for rs, and records in ch
// what it is about to write.
func (p *Policy) applyOnce(rs policy.Ruleset, narrowOnAdd map[string]bool, st *PolicyStats, ch *ruleChange) error {
	sets, err := planSets(p.sets, rs.Sets, narrowOnAdd)
	if err != nil {
		return err
	}
	if len(sets.incompatible) > 0 {
		return fmt.Errorf("sets %v still of another type after the renaming pass", sets.incompatible)
	}
	ch.noteSets(p.sets, sets, narrowOnAdd)
	var chains [2]chainPlan
	for f, v6 := range []bool{false, true} {
		chains[f] = planChains(p.chains[f], rs.Chains, v6)
		for _, c := range chains[f].write {
			ch.noteOld(f, c.Name, p.chains[f][c.Name])
			ch.written[f][c.Name] = true
		}
		for _, name := range chains[f].stale {
			ch.noteOld(f, name, p.chains[f][name])
		}
	}
	if sets.pre.Len() > 0 {
		st.SetRestores++
		if err := runIPSetRestore(p.run, sets.pre.Bytes()); err != nil {
			return err
		}
		sets.applyNext(p.sets)
		st.SetsCreated += sets.created
		st.SetsDestroyed += sets.destroyed
		st.MembersAdded += sets.added
		st.MembersDeleted += sets.deleted
	}
	for f, v6 := range []bool{false, true} {
		c := &chains[f]
		if len(c.write) == 0 && len(c.stale) == 0 {
			continue
		}
		restore := p.backend.bins(v6).restore
		st.Restores++
		err := runRestore(p.run, restore, "policy chains, table filter", c.input())
		if err != nil && len(c.write) > 0 && len(c.stale) > 0 {
			// A rule that is not tern's may hold a stale chain, which
			// fails the whole transaction: the new content must land all
			// the same.
			st.Restores++
			only := chainPlan{write: c.write}
			if err2 := runRestore(p.run, restore, "policy chains, table filter", only.input()); err2 == nil {
				p.wrote(f, c.write, st)
				return fmt.Errorf("delete stale %s chains %v (a rule that is not tern's may still jump to one): %w", family(v6), c.stale, err)
			}
		}
		if err != nil {
			return err
		}
		p.wrote(f, c.write, st)
		for _, name := range c.stale {
			delete(p.chains[f], name)
		}
		st.ChainsDeleted += len(c.stale)
	}
	if len(sets.stale) > 0 {
		st.SetRestores++
		if err := runIPSetRestore(p.run, sets.destroyInput()); err != nil {
			return fmt.Errorf("destroy stale sets (a rule that is not tern's may still refer to one): %w", err)
		}
		for _, name := range sets.stale {
			delete(p.sets, name)
		}
		st.SetsDestroyed += len(sets.stale)
	}
	return nil
}

// wrote records chains of family f as written.
func (p *Policy) wrote(f int, chains []policy.Chain, st *PolicyStats) {
	for _, ch := range chains {
		// Apply's caller does not modify the rules afterwards: no copy.
		p.chains[f][ch.Name] = &chainState{known: true, applied: ch.Rules}
	}
	st.ChainsWritten += len(chains)
}

// readBack reads tern's sets and the hash comments of the policy chains of
// both families.
func (p *Policy) readBack() error {
	out, err := p.run(nil, "ipset", "save")
	if err != nil {
		return fmt.Errorf("ipset save: %w", err)
	}
	sets, err := parseIPSetSave(out)
	if err != nil {
		return err
	}
	var chains [2]map[string]*chainState
	for f, v6 := range []bool{false, true} {
		chains[f] = map[string]*chainState{}
		bins := p.backend.bins(v6)
		if !bins.has() {
			continue // no ip6tables: none of tern's chains either
		}
		out, err := p.run(nil, bins.save, "-t", "filter")
		if err != nil {
			return fmt.Errorf("%s -t filter: %w", bins.save, err)
		}
		chains[f] = parsePolicyChains(out)
	}
	p.sets, p.chains = sets, chains
	return nil
}

// parsePolicyChains reads iptables-save output of the filter table and
// returns the policy chains (policy.ChainPrefix) with the hash comments of
// their rules; a rule without one reads as "foreign", so its chain is
// rewritten. Nothing else of the output is kept.
func parsePolicyChains(out []byte) map[string]*chainState {
	chains := map[string]*chainState{}
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ":"+policy.ChainPrefix):
			name, _, _ := strings.Cut(line[1:], " ")
			if chains[name] == nil {
				chains[name] = &chainState{}
			}
		case strings.HasPrefix(line, "-A "+policy.ChainPrefix):
			name, rest, _ := strings.Cut(line[3:], " ")
			c := chains[name]
			if c == nil {
				c = &chainState{}
				chains[name] = c
			}
			h := "foreign"
			if m := hashComment.FindStringSubmatch(rest); m != nil {
				h = m[1]
			}
			c.hashes = append(c.hashes, h)
		}
	}
	return chains
}

// chainPlan is what one Apply writes to the policy chains of one family.
type chainPlan struct {
	write []policy.Chain
	stale []string
}

// planChains returns the chains of family v6 whose installed content differs
// from want, and the installed ones want does not have. ChainPolicy is never
// stale: it is emptied instead. It records in have the content of chains it
// found already right.
func planChains(have map[string]*chainState, want []policy.Chain, v6 bool) chainPlan {
	var p chainPlan
	wanted := map[string]bool{}
	for _, c := range want {
		if c.IPv6 != v6 {
			continue
		}
		wanted[c.Name] = true
		if st := have[c.Name]; st != nil && st.matches(c) {
			continue
		}
		p.write = append(p.write, c)
	}
	for name, st := range have {
		switch {
		case wanted[name]:
		case name == policy.ChainPolicy:
			if empty := (policy.Chain{Name: name, IPv6: v6}); !st.matches(empty) {
				p.write = append(p.write, empty)
			}
		default:
			p.stale = append(p.stale, name)
		}
	}
	slices.Sort(p.stale)
	return p
}

// matches reports whether the installed chain holds c's rules; a read-back
// chain whose hashes match is remembered as holding them.
func (s *chainState) matches(c policy.Chain) bool {
	if s.known {
		return slices.EqualFunc(s.applied, c.Rules, policy.Rule.Equal)
	}
	if len(s.hashes) != len(c.Rules) {
		return false
	}
	for i, r := range c.Rules {
		if Rule(r.Args).Hash(c.Name) != s.hashes[i] {
			return false
		}
	}
	s.known, s.applied, s.hashes = true, c.Rules, nil
	return true
}

// input is the iptables-restore transaction of the plan: declaring a chain
// flushes it (--noflush spares everything else); stale chains are flushed
// first, so none refers to another, then deleted.
func (p *chainPlan) input() []byte {
	var b bytes.Buffer
	b.WriteString("*filter\n")
	for _, c := range p.write {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
	}
	for _, c := range p.write {
		writePolicyRules(&b, c.Name, c.Rules)
	}
	for _, name := range p.stale {
		fmt.Fprintf(&b, "-F %s\n", name)
	}
	for _, name := range p.stale {
		fmt.Fprintf(&b, "-X %s\n", name)
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// rulesetFacts is what validateRuleset learns of a ruleset for the cut
// pass, from the rules' values (policy.Rule's fields).
type rulesetFacts struct {
	// narrowOnAdd are the sets where a new member may narrow what is
	// allowed: those some rule matches negated, or in a rule whose target
	// may deny (anything but RETURN, ACCEPT, a log or none: DROP, a
	// chain).
	narrowOnAdd map[string]bool
	// simple: every rule ends in RETURN, DROP, REJECT, a log, nothing, or a
	// jump (not a goto, but for one without matches that ends a chain other
	// than ChainPolicy) to a chain of the ruleset, and only dispatch rules
	// (isDispatchRule: an interface or prefix, then a jump or goto to a
	// chain of the ruleset) in ChainPolicy or in dispatch chains (chains
	// of nothing else) match interfaces, as Compile's rulesets do. A
	// packet is then denied exactly when the path it takes reaches a DROP
	// or REJECT (a goto only returns earlier, to where falling off the
	// chain it left would also return), so a member added to a set only
	// used to RETURN, or a chain no longer jumped to, can only let more
	// through, and a flow depends on its addresses' interfaces only
	// through the dispatch (dispatchWalker). scopeOf infers what allows
	// more only for simple rulesets; any change of another one may deny.
	simple bool
}

// validateRuleset checks what the driver relies on before it writes
// anything: names carry tern's prefixes and fit, set types are supported,
// every set and policy chain a rule refers to is in rs, of its family, and
// every rule has arguments (rules are made by policy.Rule.Render).
func validateRuleset(rs policy.Ruleset, haveV6 bool) (rulesetFacts, error) {
	facts := rulesetFacts{narrowOnAdd: map[string]bool{}, simple: true}
	var errs []error
	sets := make(map[string]bool, len(rs.Sets)) // name → IPv6
	for _, s := range rs.Sets {
		if !strings.HasPrefix(s.Name, policy.SetPrefix) || len(s.Name) > 31 {
			errs = append(errs, fmt.Errorf("set name %q: want prefix %s and at most 31 characters", s.Name, policy.SetPrefix))
		}
		if _, dup := sets[s.Name]; dup {
			errs = append(errs, fmt.Errorf("set %s twice", s.Name))
		}
		if s.Type != "hash:ip" && s.Type != "hash:net" && s.Type != "hash:ip,port" {
			errs = append(errs, fmt.Errorf("set %s: type %q not supported", s.Name, s.Type))
		}
		sets[s.Name] = s.IPv6
	}
	var chains [2]map[string]bool
	for _, c := range rs.Chains {
		f := famIndex(c.IPv6)
		if chains[f] == nil {
			chains[f] = map[string]bool{}
		}
		if !strings.HasPrefix(c.Name, policy.ChainPrefix) || len(c.Name) > 28 {
			errs = append(errs, fmt.Errorf("chain name %q: want prefix %s and at most 28 characters", c.Name, policy.ChainPrefix))
		}
		if chains[f][c.Name] {
			errs = append(errs, fmt.Errorf("%s chain %s twice", family(c.IPv6), c.Name))
		}
		if c.IPv6 && !haveV6 {
			errs = append(errs, fmt.Errorf("chain %s: ip6tables is not installed", c.Name))
		}
		chains[f][c.Name] = true
	}
	for _, c := range rs.Chains {
		tree := c.Name != policy.ChainPolicy && len(c.Rules) > 0 && !slices.ContainsFunc(c.Rules, func(r policy.Rule) bool { return !isDispatchRule(r) })
		for j, r := range c.Rules {
			if len(r.Args) == 0 {
				errs = append(errs, fmt.Errorf("chain %s: a rule without arguments (not rendered)", c.Name))
			}
			for _, a := range r.Args {
				if strings.ContainsAny(a, "\n\r\x00") {
					errs = append(errs, fmt.Errorf("chain %s: argument %q", c.Name, a))
				}
			}
			dispatch := (tree || c.Name == policy.ChainPolicy) && isDispatchRule(r)
			allows := true
			if t := r.Target; t != "" {
				allows = t == "RETURN" || t == "ACCEPT" || t == "NFLOG" || t == "LOG"
				// A goto that ends a chain (not ChainPolicy) and matches
				// nothing returns where falling off would: a jump (a
				// pod chain going to its tail chain).
				final := r.Goto && j == len(c.Rules)-1 && c.Name != policy.ChainPolicy && r.In == "" && r.Out == "" && r.MatchesOnlyInterfaces()
				chain := (dispatch || !r.Goto || final) && strings.HasPrefix(t, policy.ChainPrefix)
				if !chain && (dispatch || t != "RETURN" && t != "DROP" && t != "REJECT" && t != "NFLOG" && t != "LOG") {
					facts.simple = false
				}
				if strings.HasPrefix(t, policy.ChainPrefix) && !chains[famIndex(c.IPv6)][t] {
					errs = append(errs, fmt.Errorf("%s chain %s jumps to %s, not in the ruleset for its family", family(c.IPv6), c.Name, t))
				}
			}
			if (r.In != "" || r.Out != "") && !dispatch {
				facts.simple = false
			}
			for _, m := range r.Sets {
				if v6, ok := sets[m.Name]; !ok || v6 != c.IPv6 {
					errs = append(errs, fmt.Errorf("%s chain %s refers to set %s, not in the ruleset for its family", family(c.IPv6), c.Name, m.Name))
				}
				if !allows || m.Negated {
					facts.narrowOnAdd[m.Name] = true
				}
			}
		}
	}
	return facts, errors.Join(errs...)
}

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// renameSets returns rs with the sets in rename under their new names, in
// the sets and in every rule that matches them (its values and its
// arguments).
func renameSets(rs policy.Ruleset, rename map[string]string) policy.Ruleset {
	out := rs
	out.Sets = slices.Clone(rs.Sets)
	for i := range out.Sets {
		if n, ok := rename[out.Sets[i].Name]; ok {
			out.Sets[i].Name = n
		}
	}
	renamed := func(m policy.SetMatch) bool { _, ok := rename[m.Name]; return ok }
	out.Chains = slices.Clone(rs.Chains)
	for i := range out.Chains {
		c := &out.Chains[i]
		if !slices.ContainsFunc(c.Rules, func(r policy.Rule) bool { return slices.ContainsFunc(r.Sets, renamed) }) {
			continue
		}
		rules := slices.Clone(c.Rules)
		for j := range rules {
			r := &rules[j]
			if !slices.ContainsFunc(r.Sets, renamed) {
				continue
			}
			r.Sets = slices.Clone(r.Sets)
			for k, m := range r.Sets {
				if n, ok := rename[m.Name]; ok {
					r.Sets[k].Name = n
				}
			}
			*r = r.Render()
		}
		c.Rules = rules
	}
	return out
}

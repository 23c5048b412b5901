package policy

import (
	"cmp"
	"maps"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Compile compiles the policies of a snapshot into the ruleset of in.Node.
//
// Only local pods (Pod.Node == in.Node, not host-network, with a HostIf) are
// policed. A pod that some policy selects for a direction gets a chain for
// that direction, TERN-PI-<hash> (ingress, reached on "-o HostIf") or
// TERN-PE-<hash> (egress, on "-i HostIf") through a dispatch tree keyed on
// the veth's name (see dispatch.go), whose rules RETURN what a rule of one
// of those policies allows and DROP the rest. Peers are ipsets shared by
// every rule with the same meaning. The IPv4 ruleset is always compiled, the
// IPv6 one when in.IPv6 is set or some pod has an IPv6 address.
//
// Compile is pure and deterministic: the order of in's slices and maps does
// not change the result. It never panics on odd input; what the API server
// would have rejected (unknown operators or protocols, bad CIDRs) matches
// nothing. Chains may share Rule values: treat the result as read-only. To
// compile snapshot after snapshot, a Compiler gives the same result faster.
func Compile(in Input) Ruleset {
	c := Compiler{oneShot: true}
	return c.Compile(in)
}

// Compiler compiles snapshot after snapshot, each to exactly what Compile
// gives for it, and does only the work that the differences from its last
// snapshot call for: pods that were added, removed or changed patch the
// members of the sets that select them and, for local pods, their own
// chains and leaves of the dispatch tree. A change of the policies (told by
// pointer and ResourceVersion), namespaces, Node, LogDrops or families, or
// of many pods at once, compiles afresh, keeping what it derived from each
// unchanged policy and pod.
//
// The Compiler relies on the API's conventions: a policy with a
// ResourceVersion is not modified in place (a changed policy comes as a new
// object or with a new ResourceVersion; one without a ResourceVersion is
// compiled each time); a ClusterNetworkPolicy's spec changes only with its
// generation (one without a UID and generation is compiled each time). Pods are compared by content. The results share
// memory with each other: treat them as read-only. The zero value is ready
// to use; a Compiler is not safe for concurrent use.
type Compiler struct {
	// oneShot: Compile's, used once; entries need no copies of the pods.
	oneShot bool
	round   uint64
	// pods are the entries of the last snapshot by name, order the same in
	// the snapshot's order; v6Pods counts those with an IPv6 address.
	pods   map[podID]*podEntry
	order  []*podEntry
	v6Pods int
	// byAddr indexes pods by address text, for patching sets; nil until
	// needed.
	byAddr map[string][]*podEntry
	// policies of the last snapshot, by name; cluster, its
	// ClusterNetworkPolicies.
	policies map[podID]*policyEntry
	cluster  map[string]*clusterEntry
	// st is what the last compile derived; nil before the first.
	st *compileState
	// stats count the compiles by the way they went, for tests.
	stats struct{ fresh, patched, same int }
}

// patchMax is the most changed pods that a Compiler patches its last
// result with; beyond, compiling afresh is cheaper.
const patchMax = 64

// policyEntry is a policy object and what it compiled to.
type policyEntry struct {
	np *networkingv1.NetworkPolicy
	rv string
	pi *policyInfo
}

// clusterEntry is a ClusterNetworkPolicy's version and what it compiled
// to.
type clusterEntry struct {
	version string
	pi      *policyInfo
}

// clusterVersion tells versions of a ClusterNetworkPolicy's spec apart:
// its UID and generation, which its status (written by an agent, new
// objects for every other agent's cache) leaves as they are; "" (compiled
// each time) for an object without them.
func clusterVersion(cnp *cnpv1.ClusterNetworkPolicy) string {
	if cnp.UID == "" || cnp.Generation == 0 {
		return ""
	}
	return string(cnp.UID) + "/" + strconv.FormatInt(cnp.Generation, 10)
}

// compileState is what a Compiler derived from its last snapshot: valid
// while the policies, namespaces, Node, LogDrops and families stay the
// same.
type compileState struct {
	node     string
	logDrops bool
	v6       bool
	nsLabels map[string]map[string]string
	// policies sorted by "ns/name", the first of duplicate names, then
	// the ClusterNetworkPolicies in the order they are evaluated; polByNS
	// holds the NetworkPolicies' indices by namespace, ascending, cluster
	// the ClusterNetworkPolicies'; polUse counts, per policy and
	// direction, the local pods it selects.
	policies []*policyInfo
	polByNS  map[string][]int
	cluster  []int
	polUse   [][2]int
	// local are the policed pods, sorted by HostIf, then key.
	local []*localPod
	sets  map[string]*setState
	// dispatch holds the dispatch chains (ChainPolicy among them) by
	// family and name.
	dispatch [2]map[string]Chain
	rs       Ruleset
	// Within one compile: the index (built when a set is new) and the
	// scratch map of podChain.
	ix   *index
	seen map[string]bool
}

// direction indexes per-direction arrays.
type direction int

const (
	ingress direction = iota
	egress
)

func (d direction) String() string {
	if d == ingress {
		return "ingress"
	}
	return "egress"
}

// localPod is a pod this node polices.
type localPod struct {
	e *podEntry
	// policies, admin, baseline: the NetworkPolicies and the
	// ClusterNetworkPolicies of each tier whose rules of a direction apply
	// to the pod, as indices into compileState.policies, ascending (the
	// order of evaluation).
	policies, admin, baseline [2][]int
	chains                    [2]string   // chain names, also when the pod is open
	tails                     [2]string   // tail chain names
	named                     portsByName // declared ports, for named ingress ports
	// sets collects the sets its chains match, from podChain to
	// podPolicy.
	sets []string
}

// portsByName maps "proto/name" to the declared port numbers, sorted.
type portsByName map[string][]int32

// keyedRule is a rendered rule with its text, for deduplication.
type keyedRule struct {
	key  string
	rule Rule
}

// chainKey is a chain's family and name.
type chainKey struct {
	v6   bool
	name string
}

// Compile compiles in; see Compile and Compiler.
func (c *Compiler) Compile(in Input) Ruleset {
	delta, many := c.syncPods(in.Pods)
	v6 := in.IPv6 || c.v6Pods > 0
	st := c.st
	if st == nil || many || st.node != in.Node || st.logDrops != in.LogDrops || st.v6 != v6 ||
		!c.samePolicies(in.Policies) || !c.sameClusterPolicies(in.ClusterPolicies) || !maps.EqualFunc(st.nsLabels, normalizeNamespaces(in.Namespaces, false), sameLabels) {
		c.stats.fresh++
		return c.fresh(in, v6)
	}
	if len(delta) == 0 {
		c.stats.same++
		return st.rs
	}
	c.stats.patched++
	c.patch(delta)
	return st.rs
}

func sameLabels(a, b map[string]string) bool { return maps.Equal(a, b) }

// samePolicies reports whether policies are those of the last snapshot,
// the same objects at the same ResourceVersion.
func (c *Compiler) samePolicies(policies []*networkingv1.NetworkPolicy) bool {
	n := 0
	for _, np := range policies {
		if np == nil {
			continue
		}
		n++
		e := c.policies[podID{np.Namespace, np.Name}]
		if e == nil || e.np != np || e.rv == "" || e.rv != np.ResourceVersion {
			return false
		}
	}
	return n == len(c.policies)
}

// sameClusterPolicies is samePolicies for ClusterNetworkPolicies.
func (c *Compiler) sameClusterPolicies(policies []*cnpv1.ClusterNetworkPolicy) bool {
	n := 0
	for _, cnp := range policies {
		if cnp == nil {
			continue
		}
		n++
		e := c.cluster[cnp.Name]
		if e == nil || e.version == "" || e.version != clusterVersion(cnp) {
			return false
		}
	}
	return n == len(c.cluster)
}

func (st *compileState) families() []bool {
	if st.v6 {
		return []bool{false, true}
	}
	return []bool{false}
}

// index returns the index of the snapshot's pods, built on first use in a
// compile.
func (c *Compiler) index() *index {
	if c.st.ix == nil {
		c.st.ix = buildIndex(c.order, c.st.nsLabels)
	}
	return c.st.ix
}

// fresh compiles in from scratch, but for what the Compiler derived from
// pods and policies before.
func (c *Compiler) fresh(in Input, v6 bool) Ruleset {
	st := &compileState{
		node: in.Node, logDrops: in.LogDrops, v6: v6,
		nsLabels: normalizeNamespaces(in.Namespaces, !c.oneShot),
		polByNS:  map[string][]int{},
		sets:     map[string]*setState{},
		seen:     map[string]bool{},
	}
	c.st = st

	// Policies, sorted by "ns/name"; the first of duplicate names wins.
	nps := make([]*networkingv1.NetworkPolicy, 0, len(in.Policies))
	for _, np := range in.Policies {
		if np != nil {
			nps = append(nps, np)
		}
	}
	slices.SortStableFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	memo := make(map[podID]*policyEntry, len(nps))
	for _, np := range nps {
		id := podID{np.Namespace, np.Name}
		if memo[id] != nil {
			continue
		}
		e := c.policies[id]
		if e == nil || e.np != np || e.rv == "" || e.rv != np.ResourceVersion {
			e = &policyEntry{np: np, rv: np.ResourceVersion, pi: compilePolicy(np)}
		}
		memo[id] = e
		st.polByNS[np.Namespace] = append(st.polByNS[np.Namespace], len(st.policies))
		st.policies = append(st.policies, e.pi)
	}
	c.policies = memo

	// ClusterNetworkPolicies, in the order of evaluation; the first of
	// duplicate names wins.
	cmemo := make(map[string]*clusterEntry, len(in.ClusterPolicies))
	var cpis []*policyInfo
	for _, cnp := range in.ClusterPolicies {
		if cnp == nil || cmemo[cnp.Name] != nil {
			continue
		}
		e := c.cluster[cnp.Name]
		if v := clusterVersion(cnp); e == nil || e.version == "" || e.version != v {
			e = &clusterEntry{version: v, pi: compileClusterPolicy(cnp)}
		}
		cmemo[cnp.Name] = e
		cpis = append(cpis, e.pi)
	}
	c.cluster = cmemo
	slices.SortFunc(cpis, compareClusterPolicies)
	for _, pi := range cpis {
		if pi.tier != tierNetworkPolicy {
			st.cluster = append(st.cluster, len(st.policies))
			st.policies = append(st.policies, pi)
		}
	}
	st.polUse = make([][2]int, len(st.policies))

	// Local pods, with the sets their policies refer to.
	for _, e := range c.order {
		if e.local(st.node) {
			lp := st.newLocal(e)
			st.local = append(st.local, lp)
			c.use(lp, 1, nil)
		}
	}
	slices.SortFunc(st.local, compareLocal)

	rs := Ruleset{Pods: make(map[string]PodPolicy, len(st.local))}
	for _, ss := range st.sets {
		rs.Sets = append(rs.Sets, ss.set)
	}
	slices.SortFunc(rs.Sets, compareSets)
	for _, v6 := range st.families() {
		for _, d := range []direction{egress, ingress} {
			for _, lp := range st.local {
				if lp.policed(d) {
					rs.Chains = st.podChains(rs.Chains, v6, d, lp)
				}
			}
		}
		f := famIndex(v6)
		st.dispatch[f] = map[string]Chain{}
		for _, ch := range st.dispatchChains(v6) {
			st.dispatch[f][ch.Name] = ch
			rs.Chains = append(rs.Chains, ch)
		}
	}
	slices.SortFunc(rs.Chains, compareChains)
	for _, lp := range st.local {
		rs.Pods[lp.e.key] = st.podPolicy(lp)
	}
	st.rs, st.ix = rs, nil
	return rs
}

// patch brings the last result up to date with the changed pods delta: the
// policies, namespaces and flags are the same.
func (c *Compiler) patch(delta []podChange) {
	st := c.st
	var setPuts []Set
	var setDels []string
	// The sets there are: their members, for the pods that changed.
	for _, ss := range st.sets {
		members, changed := patchMembers(ss.def, ss.set.Members, delta, st.nsLabels, c.addrIndex)
		if changed {
			ss.set.Members = members
			setPuts = append(setPuts, ss.set)
		}
	}
	// Local pods that came, went or changed: a changed one goes and comes.
	var gone, came []*localPod
	for _, ch := range delta {
		if ch.old != nil && ch.old.local(st.node) {
			i, ok := slices.BinarySearchFunc(st.local, ch.old, func(lp *localPod, e *podEntry) int {
				return cmp.Or(strings.Compare(lp.e.snap.HostIf, e.snap.HostIf), strings.Compare(lp.e.key, e.key))
			})
			if ok && st.local[i].e == ch.old {
				gone = append(gone, st.local[i])
				st.local = slices.Delete(st.local, i, i+1)
			}
		}
		if ch.new != nil && ch.new.local(st.node) {
			came = append(came, st.newLocal(ch.new))
		}
	}
	rs := st.rs
	if len(gone) > 0 || len(came) > 0 {
		// Sets come into being before others go, so that one that stays
		// in use is kept (and was patched above).
		for _, lp := range came {
			c.use(lp, 1, &setPuts)
			i, _ := slices.BinarySearchFunc(st.local, lp, compareLocal)
			st.local = slices.Insert(st.local, i, lp)
		}
		for _, lp := range gone {
			c.use(lp, -1, nil)
		}
		for name, ss := range st.sets {
			if ss.users == 0 {
				delete(st.sets, name)
				setDels = append(setDels, name)
			}
		}
		// Chains: those of pods gone, then those of pods come (a changed
		// pod keeps its chains' names).
		upd := map[chainKey]*Chain{}
		rs.Pods = maps.Clone(rs.Pods)
		for _, lp := range gone {
			for _, v6 := range st.families() {
				for _, d := range []direction{egress, ingress} {
					if lp.policed(d) {
						upd[chainKey{v6, lp.chains[d]}] = nil
					}
					if lp.hasTail(d) {
						upd[chainKey{v6, lp.tails[d]}] = nil
					}
				}
			}
			delete(rs.Pods, lp.e.key)
		}
		for _, lp := range came {
			for _, v6 := range st.families() {
				for _, d := range []direction{egress, ingress} {
					if lp.policed(d) {
						for _, ch := range st.podChains(nil, v6, d, lp) {
							upd[chainKey{v6, ch.Name}] = &ch
						}
					}
				}
			}
			rs.Pods[lp.e.key] = st.podPolicy(lp)
		}
		// The dispatch: only chains whose content changed.
		for _, v6 := range st.families() {
			f := famIndex(v6)
			next := map[string]Chain{}
			for _, ch := range st.dispatchChains(v6) {
				next[ch.Name] = ch
				if old, ok := st.dispatch[f][ch.Name]; !ok || !slices.EqualFunc(old.Rules, ch.Rules, Rule.Equal) || old.Comment != ch.Comment {
					upd[chainKey{v6, ch.Name}] = &ch
				}
			}
			for name := range st.dispatch[f] {
				if _, ok := next[name]; !ok {
					upd[chainKey{v6, name}] = nil
				}
			}
			st.dispatch[f] = next
		}
		rs.Chains = updateChains(rs.Chains, upd)
	}
	if len(setPuts) > 0 || len(setDels) > 0 {
		rs.Sets = updateSets(rs.Sets, setPuts, setDels)
	}
	st.rs, st.ix = rs, nil
}

// newLocal makes the local pod of entry e, with the policies selecting it.
func (st *compileState) newLocal(e *podEntry) *localPod {
	lp := &localPod{e: e}
	lp.chains[ingress], lp.chains[egress] = podChainNames(e.key)
	lp.tails[ingress], lp.tails[egress] = podTailChainNames(e.key)
	for _, np := range e.snap.Ports {
		proto, ok := protocolName(np.Protocol)
		if !ok || np.Name == "" || np.Port < 1 || np.Port > 65535 {
			continue
		}
		if lp.named == nil {
			lp.named = portsByName{}
		}
		k := proto + "/" + np.Name
		if !slices.Contains(lp.named[k], np.Port) {
			lp.named[k] = append(lp.named[k], np.Port)
			slices.Sort(lp.named[k])
		}
	}
	for _, idx := range st.polByNS[e.snap.Namespace] {
		pi := st.policies[idx]
		if !pi.sel.matches(e.snap.Labels) {
			continue
		}
		for _, d := range []direction{ingress, egress} {
			if pi.dirs[d] {
				lp.policies[d] = append(lp.policies[d], idx)
			}
		}
	}
	nsLabels := st.nsLabels[e.snap.Namespace]
	for _, idx := range st.cluster {
		pi := st.policies[idx]
		if !pi.selectsPod(nsLabels, e.snap.Labels) {
			continue
		}
		for _, d := range []direction{ingress, egress} {
			switch {
			case !pi.dirs[d]:
			case pi.tier == tierAdmin:
				lp.admin[d] = append(lp.admin[d], idx)
			case len(lp.policies[d]) == 0:
				// NetworkPolicy decides for the pods it isolates.
				lp.baseline[d] = append(lp.baseline[d], idx)
			}
		}
	}
	return lp
}

// policed reports whether some policy of some tier applies to the pod's
// traffic in direction d.
func (lp *localPod) policed(d direction) bool {
	return len(lp.admin[d]) > 0 || len(lp.policies[d]) > 0 || len(lp.baseline[d]) > 0
}

// hasTail reports whether the pod has a tail chain in direction d: it has
// Admin rules and rules of a later tier.
func (lp *localPod) hasTail(d direction) bool {
	return len(lp.admin[d]) > 0 && (len(lp.policies[d]) > 0 || len(lp.baseline[d]) > 0)
}

// use counts a local pod's policies in (by +1) or out (by -1); a set that
// a policy direction coming into use refers to comes into being (and is
// appended to *puts when not nil), one nothing uses any more is left with
// no users.
func (c *Compiler) use(lp *localPod, by int, puts *[]Set) {
	st := c.st
	for _, d := range []direction{ingress, egress} {
		for _, idx := range slices.Concat(lp.admin[d], lp.policies[d], lp.baseline[d]) {
			u := &st.polUse[idx][d]
			*u += by
			if (by > 0 && *u != 1) || (by < 0 && *u != 0) {
				continue
			}
			for _, v6 := range st.families() {
				for _, def := range st.policies[idx].setRefs(d, v6) {
					ss := st.sets[def.name]
					if ss == nil {
						ss = &setState{def: def, set: newSet(def, c.index())}
						st.sets[def.name] = ss
						if puts != nil {
							*puts = append(*puts, ss.set)
						}
					}
					ss.users += by
				}
			}
		}
	}
}

// podPolicy is what Ruleset.Pods says of a local pod.
func (st *compileState) podPolicy(lp *localPod) PodPolicy {
	pp := PodPolicy{
		Ingress:         policyKeys(st.policies, lp.policies[ingress]),
		Egress:          policyKeys(st.policies, lp.policies[egress]),
		AdminIngress:    policyKeys(st.policies, lp.admin[ingress]),
		AdminEgress:     policyKeys(st.policies, lp.admin[egress]),
		BaselineIngress: policyKeys(st.policies, lp.baseline[ingress]),
		BaselineEgress:  policyKeys(st.policies, lp.baseline[egress]),
		HostIf:          lp.e.snap.HostIf,
		IPs:             slices.Clone(lp.e.ips),
	}
	if lp.policed(ingress) {
		pp.IngressChain = lp.chains[ingress]
	}
	if lp.policed(egress) {
		pp.EgressChain = lp.chains[egress]
	}
	if lp.hasTail(ingress) {
		pp.IngressTailChain = lp.tails[ingress]
	}
	if lp.hasTail(egress) {
		pp.EgressTailChain = lp.tails[egress]
	}
	if len(lp.sets) > 0 {
		slices.Sort(lp.sets)
		pp.Sets = slices.Clip(slices.Compact(lp.sets))
		lp.sets = nil
	}
	return pp
}

// dispatchChains renders ChainPolicy and the dispatch trees of a family.
func (st *compileState) dispatchChains(v6 bool) []Chain {
	entry := Chain{Name: ChainPolicy, IPv6: v6, Kind: EntryChain, Comment: "tern: NetworkPolicy of local pods"}
	entry.Rules = append(entry.Rules, cutRule, establishedRule)
	var chains []Chain
	for _, d := range []direction{egress, ingress} {
		var entries []dispatchEntry
		for _, lp := range st.local {
			if lp.policed(d) {
				entries = append(entries, dispatchEntry{hostIf: lp.e.snap.HostIf, chain: lp.chains[d]})
			}
		}
		enter, tree := dispatchTree(v6, d, entries)
		if enter.Target != "" {
			entry.Rules = append(entry.Rules, enter)
			chains = append(chains, tree...)
		}
	}
	return append(chains, entry)
}

// podChains appends the chains of a pod and direction to out: its chain
// and, when it has one, its tail chain (see tiers.go).
func (st *compileState) podChains(out []Chain, v6 bool, d direction, lp *localPod) []Chain {
	main := Chain{Name: lp.chains[d], IPv6: v6, Comment: d.String() + " of " + lp.e.key}
	if len(lp.admin[d]) == 0 {
		st.tailRules(&main, v6, d, lp)
		return append(out, main)
	}
	if !lp.hasTail(d) {
		// Admin rules alone: what they do not decide is allowed.
		st.addRules(&main, v6, d, lp, lp.admin[d], "RETURN")
		return append(out, main)
	}
	st.addRules(&main, v6, d, lp, lp.admin[d], lp.tails[d])
	main.Rules = append(main.Rules, Rule{Target: lp.tails[d], Goto: true}.Render())
	tail := Chain{Name: lp.tails[d], IPv6: v6, Kind: TailChain, Comment: d.String() + " of " + lp.e.key + " after the Admin tier"}
	st.tailRules(&tail, v6, d, lp)
	return append(out, main, tail)
}

// tailRules appends the tiers after the Admin tier to ch: the allow rules
// of the NetworkPolicies isolating the pod, the optional log and the drop;
// or, when none does, the Baseline tier's rules (what they do not decide
// falls off the chain's end: allowed).
func (st *compileState) tailRules(ch *Chain, v6 bool, d direction, lp *localPod) {
	if len(lp.policies[d]) == 0 {
		st.addRules(ch, v6, d, lp, lp.baseline[d], "RETURN")
		return
	}
	st.addRules(ch, v6, d, lp, lp.policies[d], "")
	if st.logDrops {
		ch.Rules = append(ch.Rules, st.logRule(d, lp, Rule{}))
	}
	ch.Rules = append(ch.Rules, dropRule)
}

// logRule is the rate-limited NFLOG rule of the pod's drops in direction
// d, with the matches of r.
func (st *compileState) logRule(d direction, lp *localPod, r Rule) Rule {
	r.Limit, r.LimitBurst = "10/second", 20
	r.Target, r.Goto, r.LogGroup, r.LogPrefix = "NFLOG", false, NFLOGGroup, logPrefix(d == ingress, lp.e.key)
	return r.Render()
}

// addRules appends to ch the rules of the policies idx for the pod's
// direction d, in order, the first occurrence of each rule only (a later
// copy can match nothing the first did not). pass is the target of the
// Admin tier's Pass rules: the tail chain (gone to) or RETURN. With
// LogDrops, each Deny rule is preceded by a log rule of its matches.
func (st *compileState) addRules(ch *Chain, v6 bool, d direction, lp *localPod, idx []int, pass string) {
	seen := st.seen
	clear(seen)
	add := func(kr keyedRule) {
		if kr.rule.Target == passTarget {
			r := kr.rule
			r.Target, r.Goto = pass, pass != "RETURN"
			kr = keyedRule{rule: r.Render()}
			kr.key = strings.Join(kr.rule.Args, "\x00")
		}
		if seen[kr.key] {
			return
		}
		seen[kr.key] = true
		if kr.rule.Target == "DROP" && st.logDrops {
			ch.Rules = append(ch.Rules, st.logRule(d, lp, kr.rule))
		}
		ch.Rules = append(ch.Rules, kr.rule)
		for _, m := range kr.rule.Sets {
			lp.sets = append(lp.sets, m.Name)
		}
	}
	for _, i := range idx {
		pi := st.policies[i]
		if pi.podDependent[d] {
			renderPolicy(pi, d, v6, lp, add)
			continue
		}
		f := famIndex(v6)
		if !pi.renderedOK[d][f] {
			var rules []keyedRule
			renderPolicy(pi, d, v6, nil, func(kr keyedRule) { rules = append(rules, kr) })
			pi.rendered[d][f], pi.renderedOK[d][f] = rules, true
		}
		for _, kr := range pi.rendered[d][f] {
			add(kr)
		}
	}
}

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// renderPolicy emits one rule per rule × peer × port of a policy's
// direction. lp is the policed pod, needed only for named ingress ports.
func renderPolicy(pi *policyInfo, d direction, v6 bool, lp *localPod, emit func(keyedRule)) {
	for _, r := range pi.rules[d] {
		target := "RETURN"
		switch {
		case r.action == actDeny:
			target = "DROP"
		case r.action == actPass && pi.tier == tierAdmin:
			target = passTarget
		}
		peers, ports := r.expand()
		for _, peer := range peers {
			for _, port := range ports {
				renderRule(d, v6, peer, port, lp, target, emit)
			}
		}
	}
}

// renderRule emits the rules of one peer (nil: any) and port (zero: any),
// with target.
func renderRule(d direction, v6 bool, peer *peerSpec, port portSpec, lp *localPod, target string, emit func(keyedRule)) {
	set := ruleSet(d, v6, peer, port)
	if d == egress && port.name != "" {
		if set != nil {
			emitRule(emit, Rule{Sets: []SetMatch{{Name: set.name, Flags: "dst,dst"}}, Proto: port.proto, Target: target})
		}
		return
	}
	r := Rule{Target: target}
	if peer != nil {
		if set == nil {
			return // an ipBlock of the other family
		}
		flags := "src"
		if d == egress {
			flags = "dst"
		}
		r.Sets = []SetMatch{{Name: set.name, Flags: flags}}
	}
	r.Proto = port.proto
	switch {
	case port.name != "": // ingress: the policed pod's own port numbers
		if lp == nil {
			return
		}
		protos := []string{port.proto}
		if port.proto == "" { // a ClusterNetworkPolicy's: any protocol
			protos = []string{"tcp", "udp", "sctp"}
		}
		for _, proto := range protos {
			r.Proto = proto
			for _, n := range lp.named[proto+"/"+port.name] {
				r.DPort = n
				emitRule(emit, r)
			}
		}
	case port.proto == "", port.port == 0:
		emitRule(emit, r)
	default:
		r.DPort, r.DPortEnd = port.port, port.end
		emitRule(emit, r)
	}
}

// emitRule renders r and emits it.
func emitRule(emit func(keyedRule), r Rule) {
	r = r.Render()
	emit(keyedRule{key: strings.Join(r.Args, "\x00"), rule: r})
}

// The rules every ruleset has: ChainPolicy's first two and the pod chains'
// last.
var (
	cutRule         = Rule{CutMark: true, Target: "DROP"}.Render()
	establishedRule = Rule{Established: true, Target: "RETURN"}.Render()
	dropRule        = Rule{Target: "DROP"}.Render()
)

func policyKeys(policies []*policyInfo, idx []int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, policies[i].key)
	}
	return out
}

func compareLocal(a, b *localPod) int {
	return cmp.Or(strings.Compare(a.e.snap.HostIf, b.e.snap.HostIf), strings.Compare(a.e.key, b.e.key))
}

func compareSets(a, b Set) int {
	return cmp.Or(strings.Compare(a.Name, b.Name), compareBool(a.IPv6, b.IPv6))
}

func compareChains(a, b Chain) int {
	return cmp.Or(compareBool(a.IPv6, b.IPv6), strings.Compare(a.Name, b.Name))
}

// updateChains returns the sorted chains with the updates: a chain put by
// family and name, or removed (nil). It never modifies chains.
func updateChains(chains []Chain, upd map[chainKey]*Chain) []Chain {
	if len(upd) > patchMax {
		out := make([]Chain, 0, len(chains)+len(upd))
		for _, ch := range chains {
			if _, ok := upd[chainKey{ch.IPv6, ch.Name}]; !ok {
				out = append(out, ch)
			}
		}
		for _, ch := range upd {
			if ch != nil {
				out = append(out, *ch)
			}
		}
		slices.SortFunc(out, compareChains)
		return out
	}
	out := slices.Clone(chains)
	for k, ch := range upd {
		i, found := slices.BinarySearchFunc(out, k, func(c Chain, k chainKey) int {
			return cmp.Or(compareBool(c.IPv6, k.v6), strings.Compare(c.Name, k.name))
		})
		switch {
		case ch == nil && found:
			out = slices.Delete(out, i, i+1)
		case ch != nil && found:
			out[i] = *ch
		case ch != nil:
			out = slices.Insert(out, i, *ch)
		}
	}
	return out
}

// updateSets returns the sorted sets with puts put and dels removed, by
// name. It never modifies sets.
func updateSets(sets []Set, puts []Set, dels []string) []Set {
	out := slices.Clone(sets)
	find := func(name string) (int, bool) {
		return slices.BinarySearchFunc(out, name, func(s Set, name string) int { return strings.Compare(s.Name, name) })
	}
	for _, s := range puts {
		if i, ok := find(s.Name); ok {
			out[i] = s
		} else {
			out = slices.Insert(out, i, s)
		}
	}
	for _, name := range dels {
		if i, ok := find(name); ok {
			out = slices.Delete(out, i, i+1)
		}
	}
	if len(out) == 0 {
		out = nil
	}
	return out
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

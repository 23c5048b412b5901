package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Allowed says whether the first packet of f would pass the ruleset, as the
// kernel would judge it in the filter FORWARD chain, and why, in a few
// words ("egress of ns/a: denied, no rule of ns/p allows it").
//
// It interprets the chains and sets of rs themselves, rule by rule, from
// the rules' values (Rule's fields; Args, their rendering, are not read), so
// it answers for exactly what Compile emitted (and what the dataplane
// installs): the interface matches In and Out (with iptables' trailing "+"
// wildcard) are resolved through the pods' addresses in rs.Pods (a packet
// from a local pod's address comes in on its HostIf), sets through their
// members, with hash:net's most-specific-entry and nomatch semantics, jumps
// and gotos with the kernel's RETURN semantics. The packet is a new
// connection's first one: it carries no connection mark and its conntrack
// state is NEW.
//
// A flow whose family has no ChainPolicy (no IPv6 ruleset) is allowed. A
// rule Allowed cannot interpret (a missing set or chain, a goto to a target
// that is not a chain, a port without a protocol: not one of Compile's
// shapes) denies the flow, with the reason saying so. Each call costs a
// pass over rs.Pods plus the rules of the chains it visits; to judge many
// flows, use Evaluator.
// Allowed is safe for concurrent use.
func (rs *Ruleset) Allowed(f Flow) (bool, string) {
	return rs.allowed(f, nil, nil)
}

// Evaluator judges many flows against one ruleset, e.g. every conntrack
// entry after a policy change: the same answers as Ruleset.Allowed, with
// the pods indexed by address once. The ruleset must not change while the
// Evaluator is in use; the Evaluator is safe for concurrent use.
type Evaluator struct {
	rs *Ruleset
	// byIP maps a local pod's address to its key (the smallest key when
	// several pods claim an address).
	byIP map[netip.Addr]string
}

// Evaluator indexes rs for many Allowed calls.
func (rs *Ruleset) Evaluator() *Evaluator {
	ev := &Evaluator{rs: rs, byIP: map[netip.Addr]string{}}
	if rs == nil {
		return ev
	}
	for key, pp := range rs.Pods {
		for _, a := range pp.IPs {
			if k, ok := ev.byIP[a]; !ok || key < k {
				ev.byIP[a] = key
			}
		}
	}
	return ev
}

// Allowed is Ruleset.Allowed of the Evaluator's ruleset.
func (ev *Evaluator) Allowed(f Flow) (bool, string) {
	return ev.rs.allowed(f, ev.byIP, nil)
}

// dispatchCost is the number of rules of ChainPolicy and the dispatch
// chains that the first packet of f is matched against on its way through
// the pod chains: what a new connection pays for reaching them.
func (rs *Ruleset) dispatchCost(f Flow) int {
	n := 0
	rs.allowed(f, nil, &n)
	return n
}

// allowed judges f; byIP, when not nil, indexes rs.Pods by address. cost,
// when not nil, is set to the rules of ChainPolicy and the dispatch chains
// evaluated.
func (rs *Ruleset) allowed(f Flow, byIP map[netip.Addr]string, cost *int) (bool, string) {
	if rs == nil {
		return true, "no ruleset"
	}
	src, dst := f.Src.Unmap().WithZone(""), f.Dst.Unmap().WithZone("")
	if !src.IsValid() || !dst.IsValid() {
		return false, "flow without source or destination address"
	}
	if src.Is6() != dst.Is6() {
		return false, "source and destination of different families"
	}
	e := &judge{rs: rs, src: src, dst: dst, v6: src.Is6(), port: f.DstPort}
	e.proto = strings.ToLower(string(f.Protocol))
	if e.proto == "" {
		e.proto = "tcp"
	}
	// The pods at either end: the local pod owning the address (the
	// smallest "ns/name" if several claim it).
	if byIP != nil {
		if k, ok := byIP[src]; ok {
			e.srcKey, e.srcPod = k, rs.Pods[k]
		}
		if k, ok := byIP[dst]; ok {
			e.dstKey, e.dstPod = k, rs.Pods[k]
		}
	} else {
		for key, pp := range rs.Pods {
			if slices.Contains(pp.IPs, src) && (e.srcKey == "" || key < e.srcKey) {
				e.srcKey, e.srcPod = key, pp
			}
			if slices.Contains(pp.IPs, dst) && (e.dstKey == "" || key < e.dstKey) {
				e.dstKey, e.dstPod = key, pp
			}
		}
	}
	entry := e.chain(ChainPolicy)
	if entry == nil {
		return true, "no " + ipFamily(e.v6) + " policy ruleset"
	}
	verdict, err := e.run(entry, 0)
	if cost != nil {
		*cost = e.dispatchRules
	}
	if err != nil {
		return false, "cannot interpret the ruleset: " + err.Error()
	}
	if verdict == verdictDrop {
		return false, e.dropReason
	}
	if len(e.allowedBy) == 0 {
		return true, "allowed: not isolated"
	}
	return true, "allowed: " + strings.Join(e.allowedBy, "; ")
}

type verdict int

const (
	verdictReturn verdict = iota // fell off the chain or RETURN
	verdictDrop
)

// maxDepth bounds nested chains, jumps and gotos alike (Compile's are at
// most 2 + hostveth.HexLen deep: ChainPolicy, the dispatch chains, one per
// character of a veth's hex part at most, and a pod chain).
const maxDepth = 16

type judge struct {
	rs       *Ruleset
	src, dst netip.Addr
	v6       bool
	proto    string
	port     int32

	srcKey, dstKey string
	srcPod, dstPod PodPolicy

	allowedBy  []string // per pod chain passed: why
	dropReason string
	// dispatchRules counts the rules evaluated in ChainPolicy and the
	// dispatch chains: the cost of reaching the pod chains.
	dispatchRules int
}

// chain finds a chain of the flow's family; Chains is sorted by family,
// then name.
func (e *judge) chain(name string) *Chain {
	cs := e.rs.Chains
	i, ok := slices.BinarySearchFunc(cs, name, func(c Chain, name string) int {
		return cmp.Or(compareBool(c.IPv6, e.v6), strings.Compare(c.Name, name))
	})
	if !ok {
		return nil
	}
	return &cs[i]
}

// set finds a set by name; Sets is sorted by name.
func (e *judge) set(name string) *Set {
	ss := e.rs.Sets
	i, ok := slices.BinarySearchFunc(ss, name, func(s Set, name string) int { return strings.Compare(s.Name, name) })
	if !ok {
		return nil
	}
	return &ss[i]
}

// run evaluates a chain's rules in order. A RETURN, or the end of the
// chain, returns to the chain that jumped here ("-j"); a goto ("-g") does
// not come back, so the chain gone to returns for this one, as in the
// kernel.
func (e *judge) run(c *Chain, depth int) (verdict, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("chain %s: jumps nested deeper than %d", c.Name, maxDepth)
	}
	dispatch := c.Kind == EntryChain || c.Kind == DispatchChain
	for _, r := range c.Rules {
		if dispatch {
			e.dispatchRules++
		}
		ok, err := e.match(r)
		if err != nil {
			return 0, fmt.Errorf("chain %s rule %q: %w", c.Name, r.String(), err)
		}
		if !ok {
			continue
		}
		switch target, goTo := r.Target, r.Goto; target {
		case "RETURN":
			if c.Name != ChainPolicy {
				e.allowedBy = append(e.allowedBy, c.Comment+" by `"+r.String()+"`")
			}
			return verdictReturn, nil
		case "DROP":
			e.dropReason = e.describeDrop(c, r)
			return verdictDrop, nil
		case "NFLOG", "":
			continue // not terminating
		default:
			next := e.chain(target)
			if next == nil {
				return 0, fmt.Errorf("chain %s: jump to missing chain %s", c.Name, target)
			}
			v, err := e.run(next, depth+1)
			if err != nil || v == verdictDrop || goTo {
				return v, err
			}
		}
	}
	return verdictReturn, nil
}

// describeDrop says which pod's policies denied the flow: a Deny rule of a
// ClusterNetworkPolicy tier (a drop with matches, or one before the
// chain's end), or the drop that ends NetworkPolicy's rules.
func (e *judge) describeDrop(c *Chain, r Rule) string {
	var policies []string
	switch {
	case c.Name == ChainPolicy:
		return "denied: connection cut by a policy change"
	case e.srcKey != "" && (c.Name == e.srcPod.EgressChain || c.Name == e.srcPod.EgressTailChain):
		policies = e.srcPod.Egress
	case e.dstKey != "" && (c.Name == e.dstPod.IngressChain || c.Name == e.dstPod.IngressTailChain):
		policies = e.dstPod.Ingress
	}
	what := c.Comment
	if what == "" {
		what = c.Name
	}
	last := len(c.Rules) > 0 && c.Rules[len(c.Rules)-1].Equal(r) && r.MatchesOnlyInterfaces() && r.In == "" && r.Out == ""
	if !last {
		return what + ": denied by `" + r.String() + "`"
	}
	if len(policies) == 0 {
		return what + ": denied"
	}
	return what + ": denied, no rule of " + strings.Join(policies, ", ") + " allows it"
}

// match evaluates the matches of one rule against the flow, in the order
// of Rule's fields (that of its arguments), and checks its target. It knows
// the matches and targets Compile emits.
func (e *judge) match(r Rule) (bool, error) {
	if r.Goto {
		switch r.Target {
		case "RETURN", "DROP", "NFLOG", "":
			return false, fmt.Errorf("-g %q: not a chain", r.Target)
		}
	}
	if (r.LogGroup != 0 || r.LogPrefix != "") && r.Target != "NFLOG" {
		return false, fmt.Errorf("NFLOG options of target %q", r.Target)
	}
	// As in the kernel, the first match that fails ends the rule: the
	// rest is not looked at (nor checked).
	if r.In != "" && (e.srcKey == "" || !ifaceMatches(r.In, e.srcPod.HostIf)) {
		return false, nil
	}
	if r.Out != "" && (e.dstKey == "" || !ifaceMatches(r.Out, e.dstPod.HostIf)) {
		return false, nil
	}
	for _, m := range r.Sets {
		ok, err := e.inSet(m.Name, m.Flags)
		if err != nil {
			return false, err
		}
		if ok == m.Negated {
			return false, nil
		}
	}
	if r.Proto != "" && r.Proto != e.proto {
		return false, nil
	}
	if r.DPort != 0 || r.DPortEnd != 0 {
		if r.Proto == "" {
			return false, errors.New("--dport without -p")
		}
		switch r.Proto {
		case "tcp", "udp", "sctp":
		default:
			return false, fmt.Errorf("--dport of protocol %q", r.Proto)
		}
		hi := r.DPortEnd
		if hi == 0 {
			hi = r.DPort
		}
		if e.port < r.DPort || e.port > hi {
			return false, nil
		}
	}
	// A new connection carries no mark and is not established; the rate
	// limit is taken as not reached.
	if r.CutMark || r.Established {
		return false, nil
	}
	return true, nil
}

// ifaceMatches matches an interface name as iptables does: a trailing
// "+" matches every name starting with what precedes it.
func ifaceMatches(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// inSet evaluates the match of set name with flags.
func (e *judge) inSet(name, flags string) (bool, error) {
	s := e.set(name)
	if s == nil {
		return false, fmt.Errorf("missing set %s", name)
	}
	if s.IPv6 != e.v6 {
		return false, fmt.Errorf("set %s is of the other family", name)
	}
	dirs := strings.Split(flags, ",")
	var addr netip.Addr
	switch dirs[0] {
	case "src":
		addr = e.src
	case "dst":
		addr = e.dst
	default:
		return false, fmt.Errorf("set %s: unknown direction %q", name, flags)
	}
	switch s.Type {
	case "hash:ip":
		if len(dirs) != 1 {
			return false, fmt.Errorf("set %s (%s): directions %q", name, s.Type, flags)
		}
		_, ok := slices.BinarySearch(s.Members, addr.String())
		return ok, nil
	case "hash:net":
		if len(dirs) != 1 {
			return false, fmt.Errorf("set %s (%s): directions %q", name, s.Type, flags)
		}
		return netSetContains(s.Members, addr)
	case "hash:ip,port":
		if len(dirs) != 2 || dirs[1] != "dst" {
			return false, fmt.Errorf("set %s (%s): directions %q", name, s.Type, flags)
		}
		switch e.proto {
		case "tcp", "udp", "sctp":
		default:
			return false, nil
		}
		_, ok := slices.BinarySearch(s.Members, addr.String()+","+e.proto+":"+strconv.Itoa(int(e.port)))
		return ok, nil
	}
	return false, fmt.Errorf("set %s: unknown type %q", name, s.Type)
}

// netSetContains looks addr up in hash:net members the way the kernel does:
// the most specific entry containing it decides, and a nomatch entry means
// no match.
func netSetContains(members []string, addr netip.Addr) (bool, error) {
	best, found, nomatch := -1, false, false
	for _, m := range members {
		text, flag, _ := strings.Cut(m, " ")
		if flag != "" && flag != "nomatch" {
			return false, fmt.Errorf("hash:net member %q: unknown flag", m)
		}
		p, err := netip.ParsePrefix(text)
		if err != nil {
			if a, aerr := netip.ParseAddr(text); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				return false, fmt.Errorf("hash:net member %q: %w", m, err)
			}
		}
		if !p.Contains(addr) || p.Bits() < best {
			continue
		}
		if p.Bits() > best {
			best, nomatch = p.Bits(), false
		}
		found = true
		nomatch = nomatch || flag == "nomatch"
	}
	return found && !nomatch, nil
}

func ipFamily(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

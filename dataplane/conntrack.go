package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/policy"
)

// The cut pass, step 4 of Policy.Apply: which established flows a change of
// the rules may have denied (scopeOf), and judging and marking them in the
// conntrack table (cutFlows).
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

// conntrackTable is the conntrack table the cut pass reads and marks.
type conntrackTable interface {
	// count is how many entries the namespace holds; ok is false when that
	// cannot be read.
	count() (n int, ok bool)
	// dump calls f for every entry of both families; f must not keep e.
	dump(f func(e *ctEntry)) error
	// setCut gives the entry e policy.CutMark (cut) or takes it away,
	// leaving the rest of its mark as dumped and its timeout as it is.
	setCut(e *ctEntry, cut bool) error
}

// ctEntry is what the cut pass reads of a conntrack entry.
type ctEntry struct {
	family       uint8
	proto        uint8
	src, dst     netip.Addr // original direction
	sport, dport uint16
	replySrc     netip.Addr
	replySport   uint16
	mark         uint32
	zone         uint16
	timeout      uint32 // seconds left
}

// flow is the Flow of a conntrack entry: the original direction's source,
// and as destination the reply direction's source, which is the pod a
// Service's DNAT chose (what policy sees in FORWARD). ok is false for
// protocols other than TCP, UDP and SCTP.
func (e *ctEntry) flow() (Flow, bool) {
	var proto string
	switch e.proto {
	case unix.IPPROTO_TCP:
		proto = "TCP"
	case unix.IPPROTO_UDP:
		proto = "UDP"
	case unix.IPPROTO_SCTP:
		proto = "SCTP"
	default:
		return Flow{}, false
	}
	if !e.src.IsValid() || !e.replySrc.IsValid() {
		return Flow{}, false
	}
	return Flow{Src: e.src.Unmap(), Dst: e.replySrc.Unmap(), Protocol: proto, DstPort: int32(e.replySport)}, true
}

// cutResult is what a cut pass did.
type cutResult struct {
	dumps, judged, cut, restored int
	// marked are the addresses (original source, reply source) of the
	// entries carrying policy.CutMark afterwards.
	marked map[netip.Addr]bool
}

// cutFlows gives policy.CutMark to the conntrack entries of flows of local
// pods that denied says the ruleset denies, and takes it from those it allows
// again (a flow that keeps sending, like a UDP stream, would otherwise stay
// cut for as long as it lives). ChainPolicy's first rule drops packets of
// marked entries in both directions; deleting the entry instead would let
// the next packet of either side create a new one that the established rule
// lets through.
//
// It dumps the table once, both families. A flow is judged when it is a
// local pod's (an address in local) and all is set, or it carries the mark,
// or one of its addresses is in judge. Entries in a conntrack zone other
// than the default one are left alone.
func cutFlows(ct conntrackTable, local map[netip.Addr]string, all bool, judge map[netip.Addr]bool, denied func(Flow) bool) (cutResult, error) {
	var r cutResult
	var todo []ctEntry
	isLocal := func(a netip.Addr) bool { _, ok := local[a]; return ok }
	var err error
	for range 5 {
		todo, r.marked = todo[:0], map[netip.Addr]bool{}
		r.dumps++
		err = ct.dump(func(e *ctEntry) {
			if e.zone != 0 {
				return
			}
			flow, ok := e.flow()
			if !ok {
				return
			}
			marked := e.mark&policy.CutMark != 0
			if e.timeout != 0 && (isLocal(flow.Src) || isLocal(flow.Dst)) &&
				(all || marked || judge[flow.Src] || judge[flow.Dst]) {
				todo = append(todo, *e)
			} else if marked {
				r.marked[flow.Src], r.marked[flow.Dst] = true, true
			}
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return r, fmt.Errorf("list conntrack: %w", err)
	}
	var errs []error
	for i := range todo {
		e := &todo[i]
		flow, _ := e.flow()
		was, deny := e.mark&policy.CutMark != 0, denied(flow)
		r.judged++
		if deny != was {
			if err := ct.setCut(e, deny); err != nil {
				if !errors.Is(err, unix.ENOENT) { // else ended meanwhile
					errs = append(errs, fmt.Errorf("conntrack mark %s: %w", flowString(flow), err))
				}
				deny = was
			} else if deny {
				r.cut++
			} else {
				r.restored++
			}
		}
		if deny {
			r.marked[flow.Src], r.marked[flow.Dst] = true, true
		}
	}
	return r, errors.Join(errs...)
}

func flowString(f Flow) string {
	return fmt.Sprintf("%s %s -> %s", f.Protocol, f.Src, netip.AddrPortFrom(f.Dst, uint16(f.DstPort)))
}

// kernelConntrack is the conntrack table of the calling thread's network
// namespace, through netlink.
type kernelConntrack struct{}

var _ conntrackTable = kernelConntrack{}

// The message types of ctnetlink (subsystem and message).
const (
	ctnlMsgNew = int(netlink.ConntrackTable)<<8 | nl.IPCTNL_MSG_CT_NEW
	ctnlMsgGet = int(netlink.ConntrackTable)<<8 | nl.IPCTNL_MSG_CT_GET
)

// count reads the namespace's own entry count (nf_conntrack_count is per
// network namespace, and /proc/sys/net is the calling thread's).
func (kernelConntrack) count() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

// dump lists both families at once (family AF_UNSPEC) and parses each entry
// into the same ctEntry.
func (kernelConntrack) dump(f func(e *ctEntry)) error {
	req := nl.NewNetlinkRequest(ctnlMsgGet, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	var e ctEntry
	return req.ExecuteIter(unix.NETLINK_NETFILTER, uint16(ctnlMsgNew), func(msg []byte) bool {
		if parseCtEntry(msg, &e) {
			f(&e)
		}
		return true
	})
}

// setCut updates the entry's mark. The request carries the original tuple
// and the whole mark (older kernels ignore CTA_MARK_MASK), and no timeout,
// so the kernel leaves the entry's own.
func (kernelConntrack) setCut(e *ctEntry, cut bool) error {
	mark := e.mark &^ policy.CutMark
	if cut {
		mark |= policy.CutMark
	}
	srcT, dstT := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if e.family == unix.AF_INET6 {
		srcT, dstT = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	req := nl.NewNetlinkRequest(ctnlMsgNew, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: e.family, Version: nl.NFNETLINK_V0})
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(srcT, e.src.AsSlice())
	ip.AddRtAttr(dstT, e.dst.AsSlice())
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{e.proto})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(e.sport))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(e.dport))
	req.AddData(orig)
	req.AddData(nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(mark)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}

// parseCtEntry reads a ctnetlink message (nfgenmsg and attributes) into e
// without allocating. ok is false for a message too short to be an entry.
func parseCtEntry(msg []byte, e *ctEntry) bool {
	if len(msg) < 4 {
		return false
	}
	*e = ctEntry{family: msg[0]}
	for b := msg[4:]; ; {
		typ, val, rest, ok := nextAttr(b)
		if !ok {
			break
		}
		b = rest
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			e.src, e.dst, e.proto, e.sport, e.dport = parseTuple(val)
		case nl.CTA_TUPLE_REPLY:
			e.replySrc, _, _, e.replySport, _ = parseTuple(val)
		case nl.CTA_MARK:
			if len(val) >= 4 {
				e.mark = binary.BigEndian.Uint32(val)
			}
		case nl.CTA_TIMEOUT:
			if len(val) >= 4 {
				e.timeout = binary.BigEndian.Uint32(val)
			}
		case nl.CTA_ZONE:
			if len(val) >= 2 {
				e.zone = binary.BigEndian.Uint16(val)
			}
		}
	}
	return e.src.IsValid()
}

// parseTuple reads a nested CTA_TUPLE_ORIG or CTA_TUPLE_REPLY.
func parseTuple(b []byte) (src, dst netip.Addr, proto uint8, sport, dport uint16) {
	for {
		typ, val, rest, ok := nextAttr(b)
		if !ok {
			return
		}
		b = rest
		switch typ {
		case nl.CTA_TUPLE_IP:
			for {
				t, v, r, ok := nextAttr(val)
				if !ok {
					break
				}
				val = r
				switch {
				case (t == nl.CTA_IP_V4_SRC || t == nl.CTA_IP_V4_DST) && len(v) == 4,
					(t == nl.CTA_IP_V6_SRC || t == nl.CTA_IP_V6_DST) && len(v) == 16:
					a, _ := netip.AddrFromSlice(v)
					if t == nl.CTA_IP_V4_SRC || t == nl.CTA_IP_V6_SRC {
						src = a
					} else {
						dst = a
					}
				}
			}
		case nl.CTA_TUPLE_PROTO:
			for {
				t, v, r, ok := nextAttr(val)
				if !ok {
					break
				}
				val = r
				switch {
				case t == nl.CTA_PROTO_NUM && len(v) >= 1:
					proto = v[0]
				case t == nl.CTA_PROTO_SRC_PORT && len(v) >= 2:
					sport = binary.BigEndian.Uint16(v)
				case t == nl.CTA_PROTO_DST_PORT && len(v) >= 2:
					dport = binary.BigEndian.Uint16(v)
				}
			}
		}
	}
}

// nextAttr splits the first netlink attribute off b: its type (without the
// nested and byte-order flags), its value and what follows it.
func nextAttr(b []byte) (typ uint16, val, rest []byte, ok bool) {
	if len(b) < unix.SizeofNlAttr {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint16(b))
	if l < unix.SizeofNlAttr || l > len(b) {
		return 0, nil, nil, false
	}
	typ = binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	next := min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b))
	return typ, b[unix.SizeofNlAttr:l], b[next:], true
}

package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Sets are named after their canonical meaning and shared by every rule
// that means the same. A set exists while some policed pod's chain refers
// to it; a Compiler finds its members from scratch when it comes into
// being, and afterwards patches them with the pods that changed.

// setKind is what a set holds.
type setKind int

const (
	setPods      setKind = iota // hash:ip: the addresses of a pod peer's pods
	setIPBlock                  // hash:net: an ipBlock
	setNamedPort                // hash:ip,port: address and port of a named port
)

// setDef is what a set stands for: its name, type and comment follow from
// it, and its members from it and the pods.
type setDef struct {
	name, typ, comment string
	v6                 bool
	kind               setKind
	peer               *peerSpec // nil: a named port of every pod
	port               portSpec  // setNamedPort
}

// setState is a set of the ruleset and how many policy directions of
// policed pods use it.
type setState struct {
	def   *setDef
	set   Set
	users int
}

// peerSetDef returns the set of a peer in a family; nil for an ipBlock of
// the other family.
func peerSetDef(v6 bool, peer *peerSpec) *setDef {
	if peer.kind == peerIPBlock && peer.cidr.Addr().Is6() != v6 {
		return nil
	}
	f := famIndex(v6)
	if d := peer.set[f]; d != nil {
		return d
	}
	d := &setDef{v6: v6, peer: peer, comment: comment(peer.key)}
	if peer.kind == peerIPBlock {
		d.kind, d.typ, d.name = setIPBlock, "hash:net", setName(v6, peer.key)
	} else {
		d.kind, d.typ, d.name = setPods, "hash:ip", setName(v6, "pods|"+peer.key)
	}
	peer.set[f] = d
	return d
}

// namedPortSetDef returns the hash:ip,port set of the pods of peer (nil:
// all pods) that declare port's name with its protocol.
func namedPortSetDef(v6 bool, peer *peerSpec, port portSpec) *setDef {
	of := "all pods"
	if peer != nil {
		of = peer.key
	}
	key := "named port " + cmp.Or(port.proto, "any") + "/" + port.name + " of " + of
	return &setDef{name: setName(v6, key), typ: "hash:ip,port", comment: comment(key), v6: v6,
		kind: setNamedPort, peer: peer, port: port}
}

// ruleSet is the set that the rule of a peer (nil: any) and port (zero:
// any) refers to; nil for none (or for a rule that matches nothing).
func ruleSet(d direction, v6 bool, peer *peerSpec, port portSpec) *setDef {
	if d == egress && port.name != "" {
		// The destination's port number depends on the destination pod:
		// one hash:ip,port set holds every (pod IP, port) pair of the
		// peer's pods declaring that name; for an ipBlock peer, of the
		// pods whose addresses are in the block (an address outside the
		// cluster has no pod, hence no named port).
		if peer != nil && peer.kind == peerIPBlock && peer.cidr.Addr().Is6() != v6 {
			return nil
		}
		return namedPortSetDef(v6, peer, port)
	}
	if peer == nil {
		return nil
	}
	return peerSetDef(v6, peer)
}

// setRefs returns the sets that the rules of a policy's direction refer
// to in a family, whichever pod they police.
func (pi *policyInfo) setRefs(d direction, v6 bool) []*setDef {
	f := famIndex(v6)
	if pi.refsOK[d][f] {
		return pi.refs[d][f]
	}
	var refs []*setDef
	for _, r := range pi.rules[d] {
		peers, ports := r.expand()
		for _, peer := range peers {
			for _, port := range ports {
				if def := ruleSet(d, v6, peer, port); def != nil {
					refs = append(refs, def)
				}
			}
		}
	}
	pi.refs[d][f], pi.refsOK[d][f] = refs, true
	return refs
}

// newSet is the set of def with its members found in ix.
func newSet(def *setDef, ix *index) Set {
	s := Set{Name: def.name, Type: def.typ, IPv6: def.v6, Comment: def.comment}
	switch def.kind {
	case setIPBlock:
		s.Members = netMembers(def.peer)
	case setPods:
		var members []string
		for _, i := range ix.byAddr(ix.podsOf(def.peer), def.v6) {
			members = append(members, ix.pods[i].addrs(def.v6)...)
		}
		s.Members = sortedUnique(members)
	case setNamedPort:
		// In address order, so that members are sorted as they come
		// ("10.244.1.1,..." sorts before "10.244.1.10,...").
		pods := ix.order[famIndex(def.v6)]
		if def.peer != nil && def.peer.kind != peerIPBlock {
			pods = ix.byAddr(ix.podsOf(def.peer), def.v6)
		}
		var members []string
		for _, i := range pods {
			members = namedPortMembers(members, &ix.pods[i].podInfo, def.v6, def.port, blockOf(def.peer))
		}
		s.Members = sortedUnique(members)
	}
	return s
}

// namedPortMembers appends the hash:ip,port members that pod p gives a
// named port: each of its addresses of the family (in block, when one is
// given) with each port number it declares under that name and protocol.
func namedPortMembers(out []string, p *podInfo, v6 bool, port portSpec, block *peerSpec) []string {
	addrs := p.addrs(v6)
	if block != nil {
		addrs = slices.DeleteFunc(slices.Clone(addrs), func(a string) bool { return !block.blockHas(a) })
	}
	if len(addrs) == 0 {
		return out
	}
	for _, np := range p.pod.Ports {
		proto, ok := protocolName(np.Protocol)
		if !ok || (port.proto != "" && proto != port.proto) || np.Name != port.name || np.Port < 1 || np.Port > 65535 {
			continue
		}
		suffix := "," + proto + ":" + strconv.Itoa(int(np.Port))
		for _, a := range addrs {
			out = append(out, a+suffix)
		}
	}
	return out
}

// blockOf is peer when it is an ipBlock, else nil.
func blockOf(peer *peerSpec) *peerSpec {
	if peer != nil && peer.kind == peerIPBlock {
		return peer
	}
	return nil
}

// blockHas reports whether the address a (as a set member writes it) is in
// the ipBlock peer: in its CIDR and in none of its excepts.
func (peer *peerSpec) blockHas(a string) bool {
	addr, err := netip.ParseAddr(a)
	if err != nil || !peer.cidr.Contains(addr) {
		return false
	}
	for _, e := range peer.except {
		if e.Contains(addr) {
			return false
		}
	}
	return true
}

// podsOf returns the pods of a pod peer, cached by the peer's key.
func (ix *index) podsOf(peer *peerSpec) []int {
	if got, ok := ix.peerPods[peer.key]; ok {
		return got
	}
	podSel := peer.podSel
	if podSel == nil {
		podSel = &selector{}
	}
	var out []int
	if peer.nsSel == nil {
		out = ix.podsMatching(peer.scopeNS, podSel)
	} else {
		out = ix.podsInNamespaces(ix.namespacesMatching(peer.nsSel), podSel)
	}
	ix.peerPods[peer.key] = out
	return out
}

// peerSelects reports whether a pod peer selects pod e, as podsOf would
// find it: nsLabels are the namespaces' labels.
func peerSelects(peer *peerSpec, nsLabels map[string]map[string]string, e *podEntry) bool {
	p := &e.snap
	if peer.nsSel == nil {
		if p.Namespace != peer.scopeNS {
			return false
		}
	} else if !peer.nsSel.matches(nsLabels[p.Namespace]) {
		return false
	}
	return peer.podSel == nil || peer.podSel.matches(p.Labels)
}

// entryMembers appends the members pod e gives the set def.
func entryMembers(out []string, def *setDef, nsLabels map[string]map[string]string, e *podEntry) []string {
	switch def.kind {
	case setPods:
		if peerSelects(def.peer, nsLabels, e) {
			out = append(out, e.addrs(def.v6)...)
		}
	case setNamedPort:
		if def.peer == nil || def.peer.kind == peerIPBlock || peerSelects(def.peer, nsLabels, e) {
			out = namedPortMembers(out, &e.podInfo, def.v6, def.port, blockOf(def.peer))
		}
	}
	return out
}

// patchMembers returns the members of the set def after the pod changes
// delta, given those before; false when they are the same. A member that
// a changed pod gave or gives stays or becomes one exactly when some pod of
// the snapshot (byAddr: by address) gives it.
func patchMembers(def *setDef, members []string, delta []podChange, nsLabels map[string]map[string]string, byAddr func() map[string][]*podEntry) ([]string, bool) {
	if def.kind == setIPBlock {
		return members, false
	}
	var cands []string
	for _, ch := range delta {
		if ch.old != nil {
			cands = entryMembers(cands, def, nsLabels, ch.old)
		}
		if ch.new != nil {
			cands = entryMembers(cands, def, nsLabels, ch.new)
		}
	}
	if len(cands) == 0 {
		return members, false
	}
	slices.Sort(cands)
	cands = slices.Compact(cands)
	idx := byAddr()
	var add, del []string
	var buf []string
	for _, m := range cands {
		addr, _, _ := strings.Cut(m, ",")
		want := false
		for _, e := range idx[addr] {
			buf = entryMembers(buf[:0], def, nsLabels, e)
			if slices.Contains(buf, m) {
				want = true
				break
			}
		}
		_, have := slices.BinarySearch(members, m)
		switch {
		case want && !have:
			add = append(add, m)
		case !want && have:
			del = append(del, m)
		}
	}
	if len(add) == 0 && len(del) == 0 {
		return members, false
	}
	// Merge: members without del, with add (both sorted).
	out := make([]string, 0, len(members)+len(add)-len(del))
	i, j := 0, 0
	for i < len(members) || j < len(add) {
		switch {
		case j == len(add) || (i < len(members) && members[i] < add[j]):
			if _, gone := slices.BinarySearch(del, members[i]); !gone {
				out = append(out, members[i])
			}
			i++
		default:
			out = append(out, add[j])
			j++
		}
	}
	if len(out) == 0 {
		out = nil
	}
	return out, true
}

// netMembers are the hash:net members of an ipBlock: the CIDR, and each
// except with the nomatch flag (the most specific entry decides a lookup).
// hash:net cannot store a /0, so a /0 is two /1s.
func netMembers(peer *peerSpec) []string {
	var pos []netip.Prefix
	if peer.cidr.Bits() == 0 {
		a := peer.cidr.Addr()
		hi := a.AsSlice()
		hi[0] = 0x80
		b, _ := netip.AddrFromSlice(hi)
		pos = []netip.Prefix{netip.PrefixFrom(a, 1), netip.PrefixFrom(b, 1)}
	} else {
		pos = []netip.Prefix{peer.cidr}
	}
	var members []string
	for _, e := range peer.except {
		if i := slices.Index(pos, e); i >= 0 {
			// An except equal to a /1 half: drop the half (one element
			// cannot be both a match and a nomatch).
			pos = slices.Delete(pos, i, i+1)
			continue
		}
		members = append(members, e.String()+" nomatch")
	}
	for _, p := range pos {
		members = append(members, p.String())
	}
	return sortedUnique(members)
}

// comment bounds a set's description; its key is what names it.
func comment(key string) string {
	const maxComment = 200
	if len(key) > maxComment {
		return key[:maxComment-3] + "..."
	}
	return key
}

// sortedUnique sorts (unless already sorted) and deduplicates.
func sortedUnique(s []string) []string {
	if !slices.IsSorted(s) {
		slices.Sort(s)
	}
	return slices.Compact(s)
}

package policy

import (
	"net/netip"
	"slices"
	"strconv"
)

// Sets are created by the first rule that refers to them, named after
// their canonical meaning, and shared by every rule that means the same.

// peerSet returns the set of a peer in a family, creating it on first use;
// false for an ipBlock of the other family.
func (c *compiler) peerSet(v6 bool, peer *peerSpec) (string, bool) {
	if peer.kind == peerIPBlock {
		if peer.cidr.Addr().Is6() != v6 {
			return "", false
		}
		name := c.setName(v6, peer.key)
		if _, ok := c.sets[name]; !ok {
			c.sets[name] = &Set{Name: name, Type: "hash:net", IPv6: v6, Members: netMembers(peer), Comment: comment(peer.key)}
		}
		return name, true
	}
	name := c.setName(v6, "pods|"+peer.key)
	if _, ok := c.sets[name]; !ok {
		var members []string
		for _, i := range c.ix.byAddr(c.podsOf(peer), v6) {
			members = append(members, c.ix.pods[i].addrs(v6)...)
		}
		c.sets[name] = &Set{Name: name, Type: "hash:ip", IPv6: v6, Members: sortedUnique(members), Comment: comment(peer.key)}
	}
	return name, true
}

// namedPortSet returns the hash:ip,port set of the pods of peer (nil: all
// pods) that declare port's name with its protocol.
func (c *compiler) namedPortSet(v6 bool, peer *peerSpec, port portSpec) string {
	of := "all pods"
	if peer != nil {
		of = peer.key
	}
	key := "named port " + port.proto + "/" + port.name + " of " + of
	name := c.setName(v6, key)
	if _, ok := c.sets[name]; ok {
		return name
	}
	var members []string
	add := func(p *podInfo) {
		addrs := p.addrs(v6)
		if len(addrs) == 0 {
			return
		}
		for _, np := range p.pod.Ports {
			proto, ok := protocolName(np.Protocol)
			if !ok || proto != port.proto || np.Name != port.name || np.Port < 1 || np.Port > 65535 {
				continue
			}
			suffix := "," + proto + ":" + strconv.Itoa(int(np.Port))
			for _, a := range addrs {
				members = append(members, a+suffix)
			}
		}
	}
	// In address order, so that members are sorted as they come
	// ("10.244.1.1,..." sorts before "10.244.1.10,...").
	pods := c.ix.order[famIndex(v6)]
	if peer != nil {
		pods = c.ix.byAddr(c.podsOf(peer), v6)
	}
	for _, i := range pods {
		add(&c.ix.pods[i])
	}
	c.sets[name] = &Set{Name: name, Type: "hash:ip,port", IPv6: v6, Members: sortedUnique(members), Comment: comment(key)}
	return name
}

// setName is setName, once per family and key.
func (c *compiler) setName(v6 bool, key string) string {
	m := c.setNames[famIndex(v6)]
	if n, ok := m[key]; ok {
		return n
	}
	n := setName(v6, key)
	m[key] = n
	return n
}

// podsOf returns the pods of a pod peer, cached by the peer's key.
func (c *compiler) podsOf(peer *peerSpec) []int {
	if got, ok := c.peerPods[peer.key]; ok {
		return got
	}
	podSel := peer.podSel
	if podSel == nil {
		podSel = &selector{}
	}
	var out []int
	if peer.nsSel == nil {
		out = c.ix.podsMatching(peer.scopeNS, podSel)
	} else {
		out = c.ix.podsInNamespaces(c.ix.namespacesMatching(peer.nsSel), podSel)
	}
	c.peerPods[peer.key] = out
	return out
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

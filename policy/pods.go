package policy

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// podID is a pod's namespace and name.
type podID struct{ ns, name string }

// podEntry is the pod that stands for an "ns/name" in a snapshot (one per
// name; not host-network), with what compiling derives from it alone. A
// Compiler keeps the entries of its last snapshot and makes a new entry for
// a pod that changed, so an entry never changes once made.
type podEntry struct {
	podInfo
	// snap is the pod as compiled: its own copy of the labels, addresses
	// and ports for a reusable Compiler, so a caller changing them in place
	// afterwards cannot make a changed pod look unchanged.
	snap Pod
	// labels are snap's labels as key, value pairs, to compare a pod's
	// with (looking up a few keys costs less than walking a map).
	labels []string
	// seen is the Compiler's round in which the entry was last chosen.
	seen uint64
}

// podChange is a pod that a snapshot added (old nil), removed (new nil) or
// changed, as entries.
type podChange struct{ old, new *podEntry }

// newEntry makes the entry of p; clone copies what p refers to.
func newEntry(p *Pod, clone bool) *podEntry {
	e := &podEntry{snap: *p}
	if clone {
		e.snap.Labels = maps.Clone(p.Labels)
		e.snap.IPs = slices.Clone(p.IPs)
		e.snap.Ports = slices.Clone(p.Ports)
		e.labels = make([]string, 0, 2*len(p.Labels))
		for k, v := range e.snap.Labels {
			e.labels = append(e.labels, k, v)
		}
	}
	e.key = p.Namespace + "/" + p.Name
	e.pod = &e.snap
	for _, a := range p.IPs {
		if a.IsValid() {
			e.ips = append(e.ips, a.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(e.ips, netip.Addr.Compare)
	e.ips = slices.Compact(e.ips)
	for _, a := range e.ips {
		if a.Is4() {
			e.v4 = append(e.v4, a.String())
		} else {
			e.v6 = append(e.v6, a.String())
		}
	}
	return e
}

// same reports whether p compiles like the entry: everything Compile looks
// at is equal (the UID is not looked at).
func (e *podEntry) same(p *Pod) bool {
	s := &e.snap
	if s.Node != p.Node || s.HostIf != p.HostIf || s.HostNetwork != p.HostNetwork ||
		!slices.Equal(s.IPs, p.IPs) || !slices.Equal(s.Ports, p.Ports) || len(p.Labels) != len(s.Labels) {
		return false
	}
	if e.labels == nil {
		return maps.Equal(s.Labels, p.Labels)
	}
	for i := 0; i < len(e.labels); i += 2 {
		if v, ok := p.Labels[e.labels[i]]; !ok || v != e.labels[i+1] {
			return false
		}
	}
	return true
}

// local reports whether the entry is a pod of node that is policed there.
func (e *podEntry) local(node string) bool {
	return e.snap.Node == node && e.snap.HostIf != ""
}

// syncPods makes c.pods the entries of pods, and c.order the list of them
// in the order of pods, and returns what changed since the last snapshot,
// sorted by name; many when more than patchMax pods changed (delta is then
// nil). Of pods of the same "ns/name" (not in a consistent snapshot) the
// smallest node, then HostIf, wins, the first of equals: the choice depends
// on content, and on the order only between equals.
func (c *Compiler) syncPods(pods []Pod) (delta []podChange, many bool) {
	c.round++
	if c.pods == nil {
		c.pods = make(map[podID]*podEntry, len(pods))
	}
	// changed holds, for each name whose entry this snapshot replaced, the
	// entry of the last snapshot (nil: none), up to patchMax of them.
	var changed map[podID]*podEntry
	mark := func(id podID, old *podEntry) {
		if many {
			return
		}
		if _, ok := changed[id]; ok {
			return
		}
		if len(changed) == patchMax {
			many, changed = true, nil
			return
		}
		if changed == nil {
			changed = map[podID]*podEntry{}
		}
		changed[id] = old
	}
	c.order = c.order[:0]
	seen, dups := 0, false
	for i := range pods {
		p := &pods[i]
		if p.HostNetwork {
			continue
		}
		id := podID{p.Namespace, p.Name}
		e := c.pods[id]
		if e != nil && e.seen == c.round {
			// A second pod of the name.
			dups = true
			if cmp.Or(strings.Compare(p.Node, e.snap.Node), strings.Compare(p.HostIf, e.snap.HostIf)) >= 0 {
				continue
			}
			mark(id, e)
			if old := changed[id]; old != nil && old.same(p) {
				old.seen = c.round
				c.pods[id] = old
				c.order = append(c.order, old)
				continue
			}
		} else {
			seen++
			if e != nil && e.same(p) {
				e.seen = c.round
				c.order = append(c.order, e)
				continue
			}
			mark(id, e)
		}
		ne := newEntry(p, !c.oneShot)
		ne.seen = c.round
		c.pods[id] = ne
		c.order = append(c.order, ne)
	}
	if seen < len(c.pods) {
		for id, e := range c.pods {
			if e.seen != c.round {
				mark(id, e)
				delete(c.pods, id)
			}
		}
	}
	if dups {
		c.order = slices.DeleteFunc(c.order, func(e *podEntry) bool { return c.pods[podID{e.snap.Namespace, e.snap.Name}] != e })
	}
	if many {
		c.byAddr = nil // cheaper to build again when needed
		c.v6Pods = 0
		for _, e := range c.order {
			if len(e.v6) > 0 {
				c.v6Pods++
			}
		}
		return nil, true
	}
	for id, old := range changed {
		if nw := c.pods[id]; nw != old {
			delta = append(delta, podChange{old: old, new: nw})
		}
	}
	slices.SortFunc(delta, func(a, b podChange) int { return strings.Compare(a.key(), b.key()) })
	for _, ch := range delta {
		if ch.old != nil && len(ch.old.v6) > 0 {
			c.v6Pods--
		}
		if ch.new != nil && len(ch.new.v6) > 0 {
			c.v6Pods++
		}
		if c.byAddr != nil {
			if ch.old != nil {
				c.addrIndexDel(ch.old)
			}
			if ch.new != nil {
				c.addrIndexAdd(ch.new)
			}
		}
	}
	return delta, false
}

// key is the "ns/name" of the changed pod.
func (ch podChange) key() string {
	if ch.new != nil {
		return ch.new.key
	}
	return ch.old.key
}

// addrIndex returns the entries by address text, building the index on
// first use; syncPods keeps it current afterwards.
func (c *Compiler) addrIndex() map[string][]*podEntry {
	if c.byAddr == nil {
		c.byAddr = make(map[string][]*podEntry, len(c.order))
		for _, e := range c.order {
			c.addrIndexAdd(e)
		}
	}
	return c.byAddr
}

func (c *Compiler) addrIndexAdd(e *podEntry) {
	for _, a := range slices.Concat(e.v4, e.v6) {
		c.byAddr[a] = append(c.byAddr[a], e)
	}
}

func (c *Compiler) addrIndexDel(e *podEntry) {
	for _, a := range slices.Concat(e.v4, e.v6) {
		es := slices.DeleteFunc(c.byAddr[a], func(x *podEntry) bool { return x == e })
		if len(es) == 0 {
			delete(c.byAddr, a)
		} else {
			c.byAddr[a] = es
		}
	}
}

package policy

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a compiled metav1.LabelSelector: its requirements in a
// canonical order, so that two selectors with the same meaning written
// differently (matchLabels a=1 and matchExpressions a In [1]) share one key.
type selector struct {
	// canon is the canonical text ("" selects everything), also the cache
	// key and what set comments show.
	canon string
	reqs  []requirement
	// invalid selectors (unknown operator, In without values, ...) select
	// nothing. The API server rejects them, so this is only robustness, and
	// it fails closed for peers.
	invalid bool
}

type requirement struct {
	key    string
	op     metav1.LabelSelectorOperator
	values []string // sorted, deduplicated
}

// compileSelector compiles a non-nil label selector.
func compileSelector(ls *metav1.LabelSelector) *selector {
	s := &selector{}
	for k, v := range ls.MatchLabels {
		s.reqs = append(s.reqs, requirement{key: k, op: metav1.LabelSelectorOpIn, values: []string{v}})
	}
	for _, e := range ls.MatchExpressions {
		r := requirement{key: e.Key, op: e.Operator}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				s.invalid = true
			}
			r.values = slices.Clone(e.Values)
			slices.Sort(r.values)
			r.values = slices.Compact(r.values)
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) != 0 {
				s.invalid = true
			}
		default:
			s.invalid = true
		}
		s.reqs = append(s.reqs, r)
	}
	if s.invalid {
		s.reqs = nil
		s.canon = "<invalid selector>"
		return s
	}
	slices.SortFunc(s.reqs, compareRequirement)
	s.reqs = slices.CompactFunc(s.reqs, func(a, b requirement) bool { return compareRequirement(a, b) == 0 })
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		parts[i] = r.String()
	}
	s.canon = strings.Join(parts, ",")
	return s
}

func compareRequirement(a, b requirement) int {
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.op), string(b.op)); c != 0 {
		return c
	}
	return slices.Compare(a.values, b.values)
}

// String is the requirement in the syntax of kubectl's -l flag.
func (r requirement) String() string {
	switch r.op {
	case metav1.LabelSelectorOpIn:
		if len(r.values) == 1 {
			return r.key + "=" + r.values[0]
		}
		return r.key + " in (" + strings.Join(r.values, ",") + ")"
	case metav1.LabelSelectorOpNotIn:
		if len(r.values) == 1 {
			return r.key + "!=" + r.values[0]
		}
		return r.key + " notin (" + strings.Join(r.values, ",") + ")"
	case metav1.LabelSelectorOpExists:
		return r.key
	default: // DoesNotExist
		return "!" + r.key
	}
}

// everything says whether the selector selects every object.
func (s *selector) everything() bool { return !s.invalid && len(s.reqs) == 0 }

// matches says whether labels satisfy every requirement.
func (s *selector) matches(labels map[string]string) bool {
	if s.invalid {
		return false
	}
	for _, r := range s.reqs {
		v, ok := labels[r.key]
		switch r.op {
		case metav1.LabelSelectorOpIn:
			if !ok || !containsSorted(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			// As in Kubernetes: a missing label is not in any set.
			if ok && containsSorted(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// describe is the selector for humans: "all" for the empty one.
func (s *selector) describe() string {
	if s.everything() {
		return "all"
	}
	return s.canon
}

func containsSorted(sorted []string, v string) bool {
	_, ok := slices.BinarySearch(sorted, v)
	return ok
}

// index holds the cluster's pods and namespaces for peer matching, and
// caches every selector's matches by its canonical key, so that a selector
// used by many policies is evaluated once per index. It is built when a
// set's members are to be found from scratch.
type index struct {
	pods []*podEntry
	// byNS maps a namespace to its pods (indices into pods, ascending).
	byNS map[string][]int
	// nsNames is every namespace known from Namespaces or from pods,
	// sorted; nsLabels has the labels of those in Namespaces.
	nsNames  []string
	nsLabels map[string]map[string]string

	nsMatches map[string][]string // namespace selector canon → namespaces
	podSel    map[string][]int    // ns + "\x00" + pod selector canon → pods
	// byLabel indexes the pods by label, one key at a time on first use:
	// key → value → pods (ascending).
	byLabel map[string]map[string][]int
	// peerPods caches the pods of a pod peer by its key.
	peerPods map[string][]int
	// order[f] lists the pods with an address of family f (0: IPv4, 1:
	// IPv6) in the order of their first such address's text; rank[f][i] is
	// pod i's place in it, -1 without one. Sets are built in that order, so
	// their members rarely need sorting.
	order [2][]int
	rank  [2][]int32
}

// podInfo is a pod that can be a peer or be policed: not host-network.
type podInfo struct {
	key string // "ns/name"
	pod *Pod
	// ips are the pod's valid addresses, unmapped, sorted, deduplicated;
	// v4 and v6 are their texts per family.
	ips    []netip.Addr
	v4, v6 []string
}

// addrs returns the text of the pod's addresses of a family.
func (p *podInfo) addrs(v6 bool) []string {
	if v6 {
		return p.v6
	}
	return p.v4
}

// namespacesMatching returns the namespaces whose labels match s, sorted.
func (ix *index) namespacesMatching(s *selector) []string {
	if got, ok := ix.nsMatches[s.canon]; ok {
		return got
	}
	var out []string
	for _, ns := range ix.nsNames {
		if s.matches(ix.nsLabels[ns]) {
			out = append(out, ns)
		}
	}
	ix.nsMatches[s.canon] = out
	return out
}

// podsMatching returns the pods of namespace ns that s selects.
func (ix *index) podsMatching(ns string, s *selector) []int {
	in := ix.byNS[ns]
	if s.everything() {
		return in
	}
	key := ns + "\x00" + s.canon
	if got, ok := ix.podSel[key]; ok {
		return got
	}
	var out []int
	for _, i := range in {
		if s.matches(ix.pods[i].pod.Labels) {
			out = append(out, i)
		}
	}
	ix.podSel[key] = out
	return out
}

// buildIndex indexes the pods (one per name) and the namespaces' labels.
// Nothing in the output depends on the pods' order (sets are sorted), but
// the snapshot's order, often that of the addresses, spares sorting.
func buildIndex(pods []*podEntry, nsLabels map[string]map[string]string) *index {
	ix := &index{
		pods:      make([]*podEntry, 0, len(pods)),
		byNS:      map[string][]int{},
		nsLabels:  nsLabels,
		nsMatches: map[string][]string{},
		podSel:    map[string][]int{},
		byLabel:   map[string]map[string][]int{},
		peerPods:  map[string][]int{},
	}
	for _, e := range pods {
		ns := e.snap.Namespace
		if _, ok := ix.byNS[ns]; !ok {
			if _, listed := nsLabels[ns]; !listed {
				ix.nsNames = append(ix.nsNames, ns)
			}
		}
		ix.byNS[ns] = append(ix.byNS[ns], len(ix.pods))
		ix.pods = append(ix.pods, e)
	}
	for ns := range nsLabels {
		ix.nsNames = append(ix.nsNames, ns)
	}
	slices.Sort(ix.nsNames)
	ix.rankAddrs()
	return ix
}

// normalizeNamespaces maps each namespace to its labels; of a duplicated
// name (not in a consistent snapshot) the first entry wins. clone copies
// the label maps.
func normalizeNamespaces(namespaces []Namespace, clone bool) map[string]map[string]string {
	out := make(map[string]map[string]string, len(namespaces))
	for _, ns := range namespaces {
		if _, ok := out[ns.Name]; ok {
			continue
		}
		l := ns.Labels
		if clone {
			l = maps.Clone(l)
		}
		out[ns.Name] = l
	}
	return out
}

// labelIndex returns the pods by value of a label key.
func (ix *index) labelIndex(key string) map[string][]int {
	if m, ok := ix.byLabel[key]; ok {
		return m
	}
	m := map[string][]int{}
	for i := range ix.pods {
		if v, ok := ix.pods[i].pod.Labels[key]; ok {
			m[v] = append(m[v], i)
		}
	}
	ix.byLabel[key] = m
	return m
}

// candidates narrows a selector's pods down through the label index: the
// pods that satisfy its most selective In requirement (a superset of its
// matches). It returns false for a selector without In requirement.
func (ix *index) candidates(s *selector) ([]int, bool) {
	var best []int
	found := false
	for _, r := range s.reqs {
		if r.op != metav1.LabelSelectorOpIn {
			continue
		}
		byValue := ix.labelIndex(r.key)
		var c []int
		for _, v := range r.values {
			c = slices.Concat(c, byValue[v])
		}
		if !found || len(c) < len(best) {
			best, found = c, true
		}
	}
	return best, found
}

// podsInNamespaces returns the pods of the namespaces nss (sorted) that s
// selects: through the label index when that is the shorter way.
func (ix *index) podsInNamespaces(nss []string, s *selector) []int {
	if cands, ok := ix.candidates(s); ok {
		total := 0
		for _, ns := range nss {
			total += len(ix.byNS[ns])
		}
		if len(cands) < total {
			var out []int
			for _, i := range cands {
				p := ix.pods[i].pod
				if containsSorted(nss, p.Namespace) && s.matches(p.Labels) {
					out = append(out, i)
				}
			}
			return out
		}
	}
	var out []int
	for _, ns := range nss {
		out = append(out, ix.podsMatching(ns, s)...)
	}
	return out
}

// rankAddrs fills order and rank.
func (ix *index) rankAddrs() {
	for f, v6 := range []bool{false, true} {
		ix.rank[f] = make([]int32, len(ix.pods))
		var order []int
		for i := range ix.pods {
			ix.rank[f][i] = -1
			if len(ix.pods[i].addrs(v6)) > 0 {
				order = append(order, i)
			}
		}
		slices.SortFunc(order, func(a, b int) int {
			return strings.Compare(ix.pods[a].addrs(v6)[0], ix.pods[b].addrs(v6)[0])
		})
		for r, i := range order {
			ix.rank[f][i] = int32(r)
		}
		ix.order[f] = order
	}
}

// byAddr returns those of pods with an address of the family, in the order
// of their first address's text.
func (ix *index) byAddr(pods []int, v6 bool) []int {
	f := famIndex(v6)
	ranks := make([]int32, 0, len(pods))
	for _, i := range pods {
		if r := ix.rank[f][i]; r >= 0 {
			ranks = append(ranks, r)
		}
	}
	slices.Sort(ranks)
	out := make([]int, len(ranks))
	for j, r := range ranks {
		out[j] = ix.order[f][r]
	}
	return out
}

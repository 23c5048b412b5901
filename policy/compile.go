package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
)

// Compile compiles the policies of a snapshot into the ruleset of in.Node.
//
// Only local pods (Pod.Node == in.Node, not host-network, with a HostIf) are
// policed. A pod that some policy selects for a direction gets a chain for
// that direction, TERN-PI-<hash> (ingress, jumped to on "-o HostIf") or
// TERN-PE-<hash> (egress, on "-i HostIf"), whose rules RETURN what a rule of
// one of those policies allows and DROP the rest. Peers are ipsets shared by
// every rule with the same meaning. The IPv4 ruleset is always compiled, the
// IPv6 one when in.IPv6 is set or some pod has an IPv6 address.
//
// Compile is pure and deterministic: the order of in's slices and maps does
// not change the result. It never panics on odd input; what the API server
// would have rejected (unknown operators or protocols, bad CIDRs) matches
// nothing. Chains may share Rule values: treat the result as read-only.
func Compile(in Input) Ruleset {
	c := newCompiler(in)
	rs := Ruleset{Pods: make(map[string]PodPolicy, len(c.local))}
	for _, v6 := range c.families() {
		rs.Chains = append(rs.Chains, c.familyChains(v6)...)
	}
	for _, s := range c.sets {
		rs.Sets = append(rs.Sets, *s)
	}
	slices.SortFunc(rs.Sets, func(a, b Set) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), compareBool(a.IPv6, b.IPv6))
	})
	slices.SortFunc(rs.Chains, func(a, b Chain) int {
		return cmp.Or(compareBool(a.IPv6, b.IPv6), strings.Compare(a.Name, b.Name))
	})
	for _, lp := range c.local {
		pp := PodPolicy{
			Ingress: policyKeys(c.policies, lp.policies[ingress]),
			Egress:  policyKeys(c.policies, lp.policies[egress]),
			HostIf:  lp.info.pod.HostIf,
			IPs:     slices.Clone(lp.info.ips),
		}
		if len(lp.policies[ingress]) > 0 {
			pp.IngressChain = lp.chains[ingress]
		}
		if len(lp.policies[egress]) > 0 {
			pp.EgressChain = lp.chains[egress]
		}
		rs.Pods[lp.info.key] = pp
	}
	return rs
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

type compiler struct {
	in       Input
	ix       *index
	v6       bool
	local    []*localPod // sorted by HostIf, then key
	policies []*policyInfo
	// peerPods caches the pods of a pod peer by its key.
	peerPods map[string][]int
	// sets by name; each is created by the first rule that refers to it.
	sets map[string]*Set
	// setNames caches setName by family and key.
	setNames [2]map[string]string
}

// localPod is a pod this node polices.
type localPod struct {
	info     *podInfo
	policies [2][]int    // indices into compiler.policies, ascending
	chains   [2]string   // chain names, also when the pod is open
	named    portsByName // declared ports, for named ingress ports
}

// portsByName maps "proto/name" to the declared port numbers, sorted.
type portsByName map[string][]int32

// keyedRule is a rendered rule with its text, for deduplication.
type keyedRule struct {
	key  string
	rule Rule
}

func newCompiler(in Input) *compiler {
	c := &compiler{
		in:       in,
		peerPods: map[string][]int{},
		sets:     map[string]*Set{},
		setNames: [2]map[string]string{{}, {}},
	}
	c.ix = buildIndex(in.Pods, in.Namespaces)
	c.v6 = in.IPv6
	for i := range c.ix.pods {
		if len(c.ix.pods[i].v6) > 0 {
			c.v6 = true
		}
	}

	// Local pods, by namespace for policy selection.
	localByNS := map[string][]*localPod{}
	for i := range c.ix.pods {
		p := &c.ix.pods[i]
		if p.pod.Node != in.Node || p.pod.HostIf == "" {
			continue
		}
		lp := &localPod{info: p}
		lp.chains[ingress], lp.chains[egress] = podChainNames(p.key)
		for _, np := range p.pod.Ports {
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
		c.local = append(c.local, lp)
		localByNS[p.pod.Namespace] = append(localByNS[p.pod.Namespace], lp)
	}
	slices.SortFunc(c.local, func(a, b *localPod) int {
		return cmp.Or(strings.Compare(a.info.pod.HostIf, b.info.pod.HostIf), strings.Compare(a.info.key, b.info.key))
	})

	// Policies, sorted by "ns/name"; the first of duplicate keys wins.
	nps := make([]*networkingv1.NetworkPolicy, 0, len(in.Policies))
	for _, np := range in.Policies {
		if np != nil {
			nps = append(nps, np)
		}
	}
	slices.SortStableFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for _, np := range nps {
		key := np.Namespace + "/" + np.Name
		if n := len(c.policies); n > 0 && c.policies[n-1].key == key {
			continue
		}
		pi := compilePolicy(np)
		idx := len(c.policies)
		c.policies = append(c.policies, pi)
		for _, lp := range localByNS[np.Namespace] {
			if !pi.sel.matches(lp.info.pod.Labels) {
				continue
			}
			for _, d := range []direction{ingress, egress} {
				if pi.dirs[d] {
					lp.policies[d] = append(lp.policies[d], idx)
				}
			}
		}
	}
	return c
}

func (c *compiler) families() []bool {
	if c.v6 {
		return []bool{false, true}
	}
	return []bool{false}
}

// familyChains renders ChainPolicy and the pod chains of one family.
func (c *compiler) familyChains(v6 bool) []Chain {
	entry := Chain{Name: ChainPolicy, IPv6: v6, Comment: "tern: NetworkPolicy of local pods"}
	entry.Rules = append(entry.Rules,
		Rule{"-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", CutMark, CutMark), "-j", "DROP"},
		Rule{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"},
	)
	var chains []Chain
	seen := map[string]bool{}
	for _, d := range []direction{egress, ingress} {
		flag := "-o"
		if d == egress {
			flag = "-i"
		}
		for _, lp := range c.local {
			if len(lp.policies[d]) == 0 {
				continue
			}
			entry.Rules = append(entry.Rules, Rule{flag, lp.info.pod.HostIf, "-j", lp.chains[d]})
			chains = append(chains, c.podChain(v6, d, lp, seen))
		}
	}
	return append(chains, entry)
}

// podChain renders the chain of a pod and direction: the allow rules of
// every policy selecting it, first occurrence of each rule only, then the
// optional log and the drop.
func (c *compiler) podChain(v6 bool, d direction, lp *localPod, seen map[string]bool) Chain {
	ch := Chain{Name: lp.chains[d], IPv6: v6, Comment: d.String() + " of " + lp.info.key}
	clear(seen)
	add := func(kr keyedRule) {
		if !seen[kr.key] {
			seen[kr.key] = true
			ch.Rules = append(ch.Rules, kr.rule)
		}
	}
	for _, idx := range lp.policies[d] {
		pi := c.policies[idx]
		if pi.podDependent[d] {
			c.renderPolicy(pi, d, v6, lp, add)
			continue
		}
		f := famIndex(v6)
		if !pi.renderedOK[d][f] {
			var rules []keyedRule
			c.renderPolicy(pi, d, v6, nil, func(kr keyedRule) { rules = append(rules, kr) })
			pi.rendered[d][f], pi.renderedOK[d][f] = rules, true
		}
		for _, kr := range pi.rendered[d][f] {
			add(kr)
		}
	}
	if c.in.LogDrops {
		ch.Rules = append(ch.Rules, Rule{
			"-m", "limit", "--limit", "10/second", "--limit-burst", "20",
			"-j", "NFLOG", "--nflog-group", strconv.Itoa(NFLOGGroup),
			"--nflog-prefix", logPrefix(d == ingress, lp.info.key),
		})
	}
	ch.Rules = append(ch.Rules, Rule{"-j", "DROP"})
	return ch
}

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// renderPolicy emits one rule per rule × peer × port of a policy's
// direction. lp is the policed pod, needed only for named ingress ports.
func (c *compiler) renderPolicy(pi *policyInfo, d direction, v6 bool, lp *localPod, emit func(keyedRule)) {
	for _, r := range pi.rules[d] {
		peers := r.peers
		if r.allPeers {
			peers = []*peerSpec{nil}
		}
		ports := r.ports
		if r.allPorts {
			ports = []portSpec{{}}
		}
		for _, peer := range peers {
			for _, port := range ports {
				c.renderRule(d, v6, peer, port, lp, emit)
			}
		}
	}
}

// renderRule emits the rules of one peer (nil: any) and port (zero: any).
func (c *compiler) renderRule(d direction, v6 bool, peer *peerSpec, port portSpec, lp *localPod, emit func(keyedRule)) {
	if d == egress && port.name != "" {
		// The destination's port number depends on the destination pod:
		// one hash:ip,port set holds every (pod IP, port) pair of the
		// peer's pods declaring that name. An ipBlock peer has no pods,
		// hence no named ports: the pair matches nothing.
		if peer != nil && peer.kind == peerIPBlock {
			return
		}
		set := c.namedPortSet(v6, peer, port)
		emitRule(emit, "-m", "set", "--match-set", set, "dst,dst", "-p", port.proto, "-j", "RETURN")
		return
	}
	var match []string
	if peer != nil {
		set, ok := c.peerSet(v6, peer)
		if !ok {
			return // an ipBlock of the other family
		}
		dir := "src"
		if d == egress {
			dir = "dst"
		}
		match = []string{"-m", "set", "--match-set", set, dir}
	}
	switch {
	case port.proto == "":
		emitRule(emit, append(match, "-j", "RETURN")...)
	case port.name != "": // ingress: the policed pod's own port numbers
		if lp == nil {
			return
		}
		for _, n := range lp.named[port.proto+"/"+port.name] {
			emitRule(emit, append(slices.Clip(match), "-p", port.proto, "-m", port.proto, "--dport", strconv.Itoa(int(n)), "-j", "RETURN")...)
		}
	case port.port == 0:
		emitRule(emit, append(match, "-p", port.proto, "-j", "RETURN")...)
	default:
		dport := strconv.Itoa(int(port.port))
		if port.end != 0 {
			dport += ":" + strconv.Itoa(int(port.end))
		}
		emitRule(emit, append(match, "-p", port.proto, "-m", port.proto, "--dport", dport, "-j", "RETURN")...)
	}
}

func emitRule(emit func(keyedRule), args ...string) {
	r := Rule(slices.Clip(args))
	emit(keyedRule{key: strings.Join(r, "\x00"), rule: r})
}

func policyKeys(policies []*policyInfo, idx []int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, policies[i].key)
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

// Package policy compiles Kubernetes NetworkPolicy into a ruleset of ipsets and
// iptables chains for one node. Compile is a pure, deterministic function of a
// snapshot of pods, namespaces and policies: it does no I/O, and the same
// snapshot always gives the same ruleset, byte for byte; a Compiler gives the
// same for a sequence of snapshots, doing only the work their differences call
// for. The dataplane package applies the ruleset.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Input is the snapshot a node's ruleset is compiled from.
type Input struct {
	// Node is this node's name: its pods (Pod.Node == Node) are the ones
	// policed here.
	Node string
	// Pods of the whole cluster: peers are matched against all of them.
	Pods []Pod
	// Namespaces with their labels, for namespaceSelector.
	Namespaces []Namespace
	// Policies are the API objects as they are (already validated by the API
	// server).
	Policies []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies (of the Admin and
	// Baseline tiers) as they are.
	ClusterPolicies []*cnpv1.ClusterNetworkPolicy
	// LogDrops adds a rate-limited NFLOG rule before each drop.
	LogDrops bool
	// IPv6 also compiles the IPv6 ruleset even when no pod has an IPv6
	// address yet (a dual-stack or IPv6 node). The IPv6 ruleset is compiled
	// when IPv6 is set or when some pod has an IPv6 address.
	IPv6 bool
}

// Pod is what policy needs of a pod.
type Pod struct {
	Namespace, Name string
	// UID tells the pod from an earlier one of the same name (not used by
	// Compile).
	UID         string
	Node        string
	Labels      map[string]string
	IPs         []netip.Addr
	HostNetwork bool
	// HostIf is the host side of the pod's veth (local pods only); policing
	// is keyed on it, so rules can exist before the pod has an address.
	HostIf string
	Ports  []NamedPort
}

// NamedPort is a declared container port with a name.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
}

// Namespace is a namespace's name and labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Chain names. Every chain of the policy ruleset starts with ChainPrefix, so
// the node's own chain sweep leaves them to the policy driver.
const (
	ChainPrefix = "TERN-P"
	// ChainPolicy is the entry chain, jumped to from the filter FORWARD chain
	// (through TERN-FORWARD) for both families.
	ChainPolicy = "TERN-POLICY"
	// SetPrefix starts every ipset name.
	SetPrefix = "tern-"
)

// CutMark is the conntrack mark bit of flows that a policy change cut: the
// first rule of ChainPolicy drops packets of connections carrying it, before
// established connections are let through. The dataplane sets it (with the
// same value as mask) on established flows that a new ruleset denies.
const CutMark = 0x1000000

// NFLOGGroup is the netlink log group of the rate-limited drop log
// (Input.LogDrops).
const NFLOGGroup = 2500

// Flow is the first packet of a connection, as Ruleset.Allowed judges it.
type Flow struct {
	Src, Dst netip.Addr
	// Protocol is TCP, UDP or SCTP; empty means TCP. Other values (e.g.
	// "ICMP") match only rules without a protocol.
	Protocol corev1.Protocol
	// DstPort is the destination port (0 for protocols without ports).
	DstPort int32
}

// Ruleset is the compiled result for one node.
type Ruleset struct {
	// Sets, sorted by name. Chains refer to them by name.
	Sets []Set
	// Chains of the filter table, both families (Chain.IPv6), sorted by
	// family then name; ChainPolicy of each family among them.
	Chains []Chain
	// Pods says, for each local pod ("ns/name"), which policies select it and
	// which chains police it: for `ternctl policy show`.
	Pods map[string]PodPolicy
}

// Set is one ipset with its whole content.
type Set struct {
	Name string // SetPrefix + hash, at most 31 characters
	// Type is "hash:ip", "hash:net" or "hash:ip,port".
	Type string
	IPv6 bool
	// Members in `ipset add` syntax, sorted: "10.244.1.5", "10.0.0.0/8",
	// "10.1.0.0/16 nomatch", "10.244.1.5,tcp:8080".
	Members []string
	// Comment says what the set stands for (for humans and ternctl).
	Comment string
}

// Chain is one iptables chain of the filter table with its whole content.
type Chain struct {
	Name string // ChainPrefix + ..., at most 28 characters
	IPv6 bool
	// Kind says what the chain is for.
	Kind ChainKind
	// Rules without "-A CHAIN" and without the hash comment, which the
	// driver adds.
	Rules []Rule
	// Comment says what the chain stands for.
	Comment string
}

// ChainKind is what a chain of the ruleset is for.
type ChainKind uint8

const (
	// PodChain polices one pod in one direction: its Admin tier's rules
	// and then its tail chain, or, without Admin rules, what a tail chain
	// holds.
	PodChain ChainKind = iota
	// EntryChain is ChainPolicy.
	EntryChain
	// DispatchChain is a chain of a dispatch tree (see dispatch.go): it
	// sends a pod's packets to its pod chain by the host veth's name.
	DispatchChain
	// TailChain polices one pod in one direction after its Admin tier
	// (see tiers.go): NetworkPolicy's allow rules and the drop, or the
	// Baseline tier's rules.
	TailChain
)

// Rule is one rule of a chain: as values, what it matches and where it
// sends a matching packet, and Args, the same as iptables arguments. The
// matches all must hold, in the order of the fields (the order of Args).
// Consumers read the values; Args are for iptables and for people. Make a
// rule with Render, which fills Args from the values, so the two agree.
type Rule struct {
	// Args are the iptables arguments, e.g. {"-p", "tcp", "-m", "tcp",
	// "--dport", "80", "-j", "RETURN"}.
	Args []string
	// In and Out match the packet's input and output interface ("-i",
	// "-o"): a name, or a name prefix with a trailing "+"; "" any.
	In, Out string
	// Sets must all match ("-m set [!] --match-set NAME FLAGS").
	Sets []SetMatch
	// Proto matches the protocol ("-p tcp"; "" any). DPort, with Proto,
	// matches the destination port, or the range DPort to DPortEnd when
	// that is not 0 ("-m tcp --dport 8000:8100"; 0 any).
	Proto           string
	DPort, DPortEnd int32
	// CutMark matches packets of connections carrying CutMark ("-m
	// connmark --mark CutMark/CutMark").
	CutMark bool
	// Established matches packets of established and related connections
	// ("-m conntrack --ctstate RELATED,ESTABLISHED").
	Established bool
	// Limit, with LimitBurst, rate-limits the rule ("-m limit --limit
	// 10/second --limit-burst 20"; "" none).
	Limit      string
	LimitBurst int
	// Target is what a matching packet goes to: RETURN, DROP, NFLOG, a
	// chain, or nothing (""). Goto goes ("-g") instead of jumping ("-j").
	Target string
	Goto   bool
	// LogGroup and LogPrefix are the options of target NFLOG
	// ("--nflog-group 2500 --nflog-prefix P"; 0 and "" none).
	LogGroup  int
	LogPrefix string
}

// SetMatch is one ipset match of a rule.
type SetMatch struct {
	Name string
	// Flags are the match's direction flags: "src" or "dst", or, for
	// hash:ip,port, "dst,dst".
	Flags string
	// Negated matches packets the set does not match ("! --match-set").
	Negated bool
}

// Render returns r with Args rendered from its values.
func (r Rule) Render() Rule {
	n := 2
	if r.In != "" {
		n += 2
	}
	if r.Out != "" {
		n += 2
	}
	n += 6 * len(r.Sets)
	if r.Proto != "" {
		n += 5
	}
	if r.CutMark || r.Established {
		n += 4
	}
	if r.Limit != "" {
		n += 6
	}
	if r.LogGroup != 0 || r.LogPrefix != "" {
		n += 4
	}
	a := make([]string, 0, n)
	if r.In != "" {
		a = append(a, "-i", r.In)
	}
	if r.Out != "" {
		a = append(a, "-o", r.Out)
	}
	for _, s := range r.Sets {
		a = append(a, "-m", "set")
		if s.Negated {
			a = append(a, "!")
		}
		a = append(a, "--match-set", s.Name, s.Flags)
	}
	if r.Proto != "" {
		a = append(a, "-p", r.Proto)
	}
	if r.DPort != 0 {
		dport := strconv.Itoa(int(r.DPort))
		if r.DPortEnd != 0 {
			dport += ":" + strconv.Itoa(int(r.DPortEnd))
		}
		a = append(a, "-m", r.Proto, "--dport", dport)
	}
	if r.CutMark {
		a = append(a, "-m", "connmark", "--mark", cutMarkArg)
	}
	if r.Established {
		a = append(a, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")
	}
	if r.Limit != "" {
		a = append(a, "-m", "limit", "--limit", r.Limit, "--limit-burst", strconv.Itoa(r.LimitBurst))
	}
	if r.Target != "" {
		verb := "-j"
		if r.Goto {
			verb = "-g"
		}
		a = append(a, verb, r.Target)
	}
	if r.LogGroup != 0 {
		a = append(a, "--nflog-group", strconv.Itoa(r.LogGroup))
	}
	if r.LogPrefix != "" {
		a = append(a, "--nflog-prefix", r.LogPrefix)
	}
	r.Args = a
	return r
}

// cutMarkArg is CutMark as connmark's --mark value and mask.
var cutMarkArg = fmt.Sprintf("%#x/%#x", CutMark, CutMark)

// String is the rule's arguments joined by blanks.
func (r Rule) String() string { return strings.Join(r.Args, " ") }

// Equal reports whether r and o are the same rule: rules rendered from
// their values are when their arguments are.
func (r Rule) Equal(o Rule) bool { return slices.Equal(r.Args, o.Args) }

// MatchesOnlyInterfaces reports whether r matches on nothing but the
// interfaces (In, Out), if on anything.
func (r Rule) MatchesOnlyInterfaces() bool {
	return len(r.Sets) == 0 && r.Proto == "" && r.DPort == 0 && r.DPortEnd == 0 &&
		!r.CutMark && !r.Established && r.Limit == ""
}

// PodPolicy is the policy state of one local pod.
type PodPolicy struct {
	// Ingress/Egress: NetworkPolicies ("ns/name") that select the pod for
	// that direction.
	Ingress, Egress []string
	// AdminIngress, AdminEgress, BaselineIngress, BaselineEgress:
	// ClusterNetworkPolicies of each tier whose rules of that direction
	// apply to the pod, in the order they are evaluated (the Baseline
	// tier's only when no NetworkPolicy isolates the pod in that
	// direction). A pod is open in a direction none of the four names.
	AdminIngress, AdminEgress, BaselineIngress, BaselineEgress []string
	// IngressChain/EgressChain police the pod's traffic ("" when open).
	IngressChain, EgressChain string
	// IngressTailChain/EgressTailChain hold the tiers after the Admin tier
	// when the pod has both ("" otherwise).
	IngressTailChain, EgressTailChain string
	// Sets are the sets the rules of those chains match, sorted.
	Sets   []string
	HostIf string
	IPs    []netip.Addr
}

// Package policy compiles Kubernetes NetworkPolicy into a ruleset of ipsets and
// iptables chains for one node. Compile is a pure, deterministic function of a
// snapshot of pods, namespaces and policies: it does no I/O, and the same
// snapshot always gives the same ruleset, byte for byte; a Compiler gives the
// same for a sequence of snapshots, doing only the work their differences call
// for. The dataplane package applies the ruleset.
package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
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
	// Rules are iptables arguments without "-A CHAIN" and without the hash
	// comment, which the driver adds.
	Rules []Rule
	// Comment says what the chain stands for.
	Comment string
}

// Rule is one rule's arguments, e.g. {"-p", "tcp", "--dport", "80", "-j", "RETURN"}.
type Rule []string

// PodPolicy is the policy state of one local pod.
type PodPolicy struct {
	// Ingress/Egress: policies ("ns/name") that select the pod for that
	// direction; empty means the pod is open in that direction.
	Ingress, Egress []string
	// IngressChain/EgressChain police the pod's traffic ("" when open).
	IngressChain, EgressChain string
	HostIf                    string
	IPs                       []netip.Addr
}

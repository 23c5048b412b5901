// Package policy will compile Kubernetes NetworkPolicy into a ruleset of ipsets
// and iptables chains: a pure function of a snapshot of pods, namespaces and
// policies. Built by the NetworkPolicy issue.
package policy

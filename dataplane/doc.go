// Package dataplane writes the kernel state of a node that is not one pod's
// (the host veths are package hostveth's, the pods' own namespaces the CNI
// plugin's). It has four jobs, each a pure plan or judgement beside the
// driver that applies it:
//
//   - The node: sysctls, the blackhole route of each pod CIDR, chains
//     TERN-FORWARD and TERN-NAT-OUTGOING (plan.go, pure: PlanNode; node.go,
//     routes.go, iptables.go, backend.go: the driver Node and the iptables
//     backend, nft or legacy).
//   - The compiled NetworkPolicy ruleset: its ipsets and chains, applied as
//     minimal diffs (policy.go: the driver Policy; ipset.go).
//   - The cut of established flows that a ruleset change denies: which flows
//     the change may touch (scope.go and dispatch.go, pure), judging and
//     marking them in the conntrack table (conntrack.go; conntrack_kernel.go
//     is the kernel's table over ctnetlink).
//   - The routes BGP learned: filtered and planned against one dump of the
//     routing table (learned.go, pure: FilterImport, PlanLearned), then
//     applied (learned_sync.go: SyncLearned).
//
// Plans are values computed without I/O and table-tested without root;
// drivers read back what is installed and write only the difference. Every
// route carries route protocol 96, every chain and set tern's prefix.
package dataplane

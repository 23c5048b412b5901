package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/policy"
	"github.com/tern-net/tern/policy/policytest"
)

// The benchmarks compile policytest's cluster: 5,000 pods in 50 namespaces
// on 5 nodes (1,000 on this one), and 500 policies of ten shapes.

func BenchmarkCompile(b *testing.B) {
	in := policytest.Cluster(policytest.Options{})
	var rs policy.Ruleset
	for b.Loop() {
		rs = policy.Compile(in)
	}
	b.ReportMetric(float64(len(rs.Chains)), "chains")
	b.ReportMetric(float64(len(rs.Sets)), "sets")
}

// BenchmarkCompileClusterPolicies is BenchmarkCompile with the 50
// ClusterNetworkPolicies on top of the 500 NetworkPolicies.
func BenchmarkCompileClusterPolicies(b *testing.B) {
	in := policytest.Cluster(policytest.Options{ClusterPolicies: true})
	var rs policy.Ruleset
	for b.Loop() {
		rs = policy.Compile(in)
	}
	b.ReportMetric(float64(len(rs.Chains)), "chains")
	b.ReportMetric(float64(len(rs.Sets)), "sets")
}

func BenchmarkCompileDualStack(b *testing.B) {
	in := policytest.Cluster(policytest.Options{DualStack: true})
	for b.Loop() {
		policy.Compile(in)
	}
}

// benchCompiler is a Compiler warm with the cluster (its policies carrying
// a ResourceVersion, as from the API).
func benchCompiler(b *testing.B) (*policy.Compiler, policy.Input) {
	in := policytest.Cluster(policytest.Options{ResourceVersions: true})
	c := &policy.Compiler{}
	c.Compile(in)
	return c, in
}

// BenchmarkCompilerRemotePod is the cost of a compile by a warm Compiler
// after one pod was added on another node: only set members change.
func BenchmarkCompilerRemotePod(b *testing.B) {
	benchCompilerNewPod(b, "node1")
}

// BenchmarkCompilerLocalPod is the same for a pod added on this node: its
// chains, a leaf of each dispatch tree and set members change.
func BenchmarkCompilerLocalPod(b *testing.B) {
	benchCompilerNewPod(b, "node0")
}

func benchCompilerNewPod(b *testing.B, node string) {
	c, in := benchCompiler(b)
	template := in.Pods
	k := 0
	for b.Loop() {
		b.StopTimer()
		p := template[(k*37)%len(template)]
		p.Name, p.Node, p.HostIf = fmt.Sprintf("new%05d", k), node, ""
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 245, byte(k >> 8), byte(k)})}
		if node == in.Node {
			p.HostIf = fmt.Sprintf("%s%0*x", hostveth.Prefix, hostveth.HexLen, 100000+k)
		}
		in.Pods = append(in.Pods, p)
		k++
		b.StartTimer()
		c.Compile(in)
	}
	if n := c.FreshCompiles(); n != 1 {
		b.Fatalf("compiled afresh %d times", n)
	}
}

// BenchmarkCompilerUnchanged is the cost of a compile by a warm Compiler of
// the same snapshot again (a periodic resync).
func BenchmarkCompilerUnchanged(b *testing.B) {
	c, in := benchCompiler(b)
	for b.Loop() {
		c.Compile(in)
	}
}

// benchFlows are flows between the cluster's pods: local to local, remote
// to local, local to remote.
func benchFlows(in policy.Input) []policy.Flow {
	return []policy.Flow{
		{Src: in.Pods[1].IPs[0], Dst: in.Pods[2].IPs[0], Protocol: corev1.ProtocolTCP, DstPort: 8080},
		{Src: in.Pods[1500].IPs[0], Dst: in.Pods[7].IPs[0], Protocol: corev1.ProtocolTCP, DstPort: 443},
		{Src: in.Pods[9].IPs[0], Dst: in.Pods[4000].IPs[0], Protocol: corev1.ProtocolUDP, DstPort: 53},
	}
}

// BenchmarkAllowed is the cost of judging one flow against a ruleset of
// the cluster's size.
func BenchmarkAllowed(b *testing.B) {
	in := policytest.Cluster(policytest.Options{})
	rs := policy.Compile(in)
	flows := benchFlows(in)
	i := 0
	for b.Loop() {
		rs.Allowed(flows[i%len(flows)])
		i++
	}
}

// BenchmarkEvaluator is the cost per flow of judging many flows (every
// conntrack entry after a policy change), the Evaluator built once.
func BenchmarkEvaluator(b *testing.B) {
	in := policytest.Cluster(policytest.Options{})
	rs := policy.Compile(in)
	ev := rs.Evaluator()
	flows := benchFlows(in)
	i := 0
	for b.Loop() {
		ev.Allowed(flows[i%len(flows)])
		i++
	}
}

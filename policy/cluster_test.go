package policy_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/policy"
	"github.com/tern-net/tern/policy/policytest"
)

// TestCompilerAtScale: the benchmarks' cluster, then pods added, changed
// and removed one at a time, remote and local; without and with its
// ClusterNetworkPolicies.
func TestCompilerAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the benchmarks' cluster 60 times")
	}
	for _, cluster := range []bool{false, true} {
		t.Run(fmt.Sprintf("cluster-policies=%t", cluster), func(t *testing.T) { testCompilerAtScale(t, cluster) })
	}
}

func testCompilerAtScale(t *testing.T, cluster bool) {
	in := policytest.Cluster(policytest.Options{ResourceVersions: true, ClusterPolicies: cluster})
	template := in.Pods
	var c policy.Compiler
	check := func(what string) {
		t.Helper()
		if got, want := c.Compile(in), policy.Compile(in); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the Compiler differs from Compile:\n%s", what, policy.RulesetDiff(want, got))
		}
		if c.FreshCompiles() > 1 {
			t.Fatalf("%s: compiled afresh", what)
		}
	}
	check("first")
	next := len(in.Pods)
	for k := range 20 {
		for _, n := range []int{1, 0} { // remote, then local
			p := template[k*37+n*11]
			p.Name = fmt.Sprintf("new%05d", next)
			p.Node = fmt.Sprintf("node%d", n)
			p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(100 + n), byte(k + 1)})}
			p.HostIf = ""
			if n == 0 {
				p.HostIf = fmt.Sprintf("%s%0*x", hostveth.Prefix, hostveth.HexLen, next)
			}
			next++
			in.Pods = append(slices.Clip(in.Pods), p)
			check(fmt.Sprintf("add %s on %s", p.Name, p.Node))
		}
		i := k * 211 % len(in.Pods)
		in.Pods = slices.Clone(in.Pods)
		in.Pods[i].Labels = map[string]string{"app": "app3", "tier": "db"}
		check("relabel " + in.Pods[i].Name)
		j := (k*97 + 5) % len(in.Pods)
		in.Pods = slices.Delete(in.Pods, j, j+1)
		check("remove a pod")
	}
}

// TestDispatchDepthOfCluster is TestDispatchDepth for the benchmarks'
// 1,000 local pods. Their veths count up ("tern00000000000", ...): they
// share 8 characters, then split 4, 16 and 16 ways.
func TestDispatchDepthOfCluster(t *testing.T) {
	policy.CheckDispatchDepth(t, policytest.Cluster(policytest.Options{}), 4+40)
}

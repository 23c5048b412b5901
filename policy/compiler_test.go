package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/tern-net/tern/hostveth"
	networkingv1 "k8s.io/api/networking/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// mutator changes a snapshot at random, the way a cluster changes: mostly
// pods, sometimes policies, namespaces and flags. Pods and policies are
// replaced, not changed in place (as informers deliver them), except where
// a test says otherwise.
type mutator struct {
	r   *rand.Rand
	g   policyGen
	in  Input
	rv  int
	seq int
}

func newMutator(seed uint64) *mutator {
	r := rand.New(rand.NewPCG(seed, 99))
	m := &mutator{r: r, g: policyGen{r}}
	pods, nss := treeWorld()
	m.in = Input{Node: testNode, Pods: pods, Namespaces: nss}
	for range 4 {
		m.addPolicy()
	}
	m.addClusterPolicies()
	return m
}

// addClusterPolicies adds random ClusterNetworkPolicies (or replaces those
// of the same names).
func (m *mutator) addClusterPolicies() {
	for _, p := range m.g.clusterPolicies() {
		m.rv++
		p.ResourceVersion, p.UID, p.Generation = strconv.Itoa(m.rv), k8stypes.UID("uid-"+p.Name), int64(m.rv)
		m.in.ClusterPolicies = slices.DeleteFunc(slices.Clone(m.in.ClusterPolicies), func(o *cnpv1.ClusterNetworkPolicy) bool { return o.Name == p.Name })
		m.in.ClusterPolicies = append(m.in.ClusterPolicies, p)
	}
}

func (m *mutator) addPolicy() {
	m.rv++
	m.seq++
	np := m.g.policy([]string{"app", "other", "ops"}[m.r.IntN(3)], fmt.Sprintf("q%d", m.seq))
	np.ResourceVersion = strconv.Itoa(m.rv)
	m.in.Policies = append(slices.Clip(m.in.Policies), np)
}

var (
	mutLabels = []string{"app=web", "app=client", "app=web,tier=front", "tier=back", "app=db,tier=back", "", "app=filler", "tier=front"}
	mutNS     = []string{"app", "app", "other", "ops", "ghost", "new"}
	mutPorts  = [][]NamedPort{nil, {{"http", tcp, 8080}}, {{"http", tcp, 9090}, {"dns", udp, 53}}, {{"pg", "", 5432}, {"http", udp, 8444}}}
)

// addr is a random address, sometimes one a pod has already.
func (m *mutator) addr() netip.Addr {
	if m.r.IntN(8) == 0 {
		p := m.in.Pods[m.r.IntN(len(m.in.Pods))]
		if len(p.IPs) > 0 {
			return p.IPs[0]
		}
	}
	if m.r.IntN(5) == 0 {
		return netip.AddrFrom16([16]byte{0xfd, 0x10, 6: 1, 14: byte(m.r.IntN(4)), 15: byte(m.r.IntN(256))})
	}
	return netip.AddrFrom4([4]byte{10, 244, byte(m.r.IntN(4)), byte(m.r.IntN(256))})
}

// randomPod is a new pod, local or not, of a random name (sometimes one
// that exists).
func (m *mutator) randomPod() Pod {
	name := fmt.Sprintf("r%d", m.r.IntN(400))
	node := []string{testNode, "n2", "n3"}[m.r.IntN(3)]
	p := pod(mutNS[m.r.IntN(len(mutNS))], name, node, "", mutLabels[m.r.IntN(len(mutLabels))])
	for range m.r.IntN(3) {
		p.IPs = append(p.IPs, m.addr())
	}
	p.Ports = slices.Clone(mutPorts[m.r.IntN(len(mutPorts))])
	if node == testNode {
		p.HostIf = hexIf([]string{"", "3", "3a", "3a0"}[m.r.IntN(4)], p.Namespace+"."+name)
		if m.r.IntN(10) == 0 {
			p.HostIf = hostveth.Prefix + name // not of tern's shape
		}
	}
	if m.r.IntN(30) == 0 {
		p.HostNetwork, p.HostIf = true, ""
	}
	return p
}

// changePod replaces pod i by a changed copy.
func (m *mutator) changePod(i int) {
	p := m.in.Pods[i]
	switch m.r.IntN(6) {
	case 0:
		p.Labels = labels(mutLabels[m.r.IntN(len(mutLabels))])
	case 1:
		p.IPs = []netip.Addr{m.addr()}
		if m.r.IntN(3) == 0 {
			p.IPs = nil
		}
	case 2:
		p.Ports = slices.Clone(mutPorts[m.r.IntN(len(mutPorts))])
	case 3:
		if p.Node == testNode {
			p.Node, p.HostIf = "n2", ""
		} else {
			p.Node, p.HostIf = testNode, hexIf("3a", p.Name+strconv.Itoa(m.r.IntN(9)))
		}
	case 4:
		p.HostNetwork = !p.HostNetwork
	case 5:
		l := maps.Clone(p.Labels)
		if l == nil {
			l = map[string]string{}
		}
		l["tier"] = []string{"front", "back", "db"}[m.r.IntN(3)]
		p.Labels = l
	}
	m.in.Pods = slices.Clone(m.in.Pods)
	m.in.Pods[i] = p
}

// step makes one to three changes.
func (m *mutator) step() string {
	var what []string
	for range 1 + m.r.IntN(3) {
		in := &m.in
		switch k := m.r.IntN(100); {
		case k < 30:
			in.Pods = append(slices.Clip(in.Pods), m.randomPod())
			what = append(what, "add pod")
		case k < 45 && len(in.Pods) > 0:
			i := m.r.IntN(len(in.Pods))
			in.Pods = slices.Delete(slices.Clone(in.Pods), i, i+1)
			what = append(what, "remove pod")
		case k < 70 && len(in.Pods) > 0:
			m.changePod(m.r.IntN(len(in.Pods)))
			what = append(what, "change pod")
		case k < 73 && len(in.Pods) > 0:
			// A second pod of a name, on another node.
			p := in.Pods[m.r.IntN(len(in.Pods))]
			p.Node, p.HostIf = []string{"n0", "n9", testNode}[m.r.IntN(3)], ""
			if p.Node == testNode {
				p.HostIf = hexIf("", p.Name+"dup")
			}
			in.Pods = append(slices.Clip(in.Pods), p)
			what = append(what, "duplicate pod")
		case k < 76:
			m.r.Shuffle(len(in.Pods), func(i, j int) { in.Pods[i], in.Pods[j] = in.Pods[j], in.Pods[i] })
			what = append(what, "shuffle")
		case k < 78 && len(in.Pods) > patchMax:
			// Many pods at once: more than a Compiler patches.
			for range patchMax + 1 {
				m.changePod(m.r.IntN(len(in.Pods)))
			}
			what = append(what, "many pods")
		case k < 84:
			m.addPolicy()
			what = append(what, "add policy")
		case k < 87 && len(in.Policies) > 0:
			i := m.r.IntN(len(in.Policies))
			in.Policies = slices.Delete(slices.Clone(in.Policies), i, i+1)
			what = append(what, "remove policy")
		case k < 90 && len(in.Policies) > 0:
			// A new version of a policy.
			i := m.r.IntN(len(in.Policies))
			old := in.Policies[i]
			np := m.g.policy(old.Namespace, old.Name)
			m.rv++
			np.ResourceVersion = strconv.Itoa(m.rv)
			in.Policies = slices.Clone(in.Policies)
			in.Policies[i] = np
			what = append(what, "change policy")
		case k < 92:
			nss := slices.Clone(in.Namespaces)
			i := m.r.IntN(len(nss))
			nss[i].Labels = labels([]string{"team=b", "team=a,env=prod", "", "env=dev"}[m.r.IntN(4)])
			in.Namespaces = nss
			what = append(what, "namespace labels")
		case k < 93:
			in.LogDrops = !in.LogDrops
			what = append(what, "log drops")
		case k < 94:
			in.IPv6 = !in.IPv6
			what = append(what, "ipv6")
		case k < 96:
			m.addClusterPolicies()
			what = append(what, "cluster policies")
		case k < 97 && len(in.ClusterPolicies) > 0:
			i := m.r.IntN(len(in.ClusterPolicies))
			in.ClusterPolicies = slices.Delete(slices.Clone(in.ClusterPolicies), i, i+1)
			what = append(what, "remove cluster policy")
		default:
			what = append(what, "nothing")
		}
	}
	return fmt.Sprint(what)
}

// TestCompilerMatchesCompile: a Compiler reused across a random sequence of
// snapshots gives, at every step, exactly what Compile gives.
func TestCompilerMatchesCompile(t *testing.T) {
	steps := 300
	if testing.Short() {
		steps = 100
	}
	var stats [3]int
	for seed := range uint64(4) {
		m := newMutator(seed)
		var c Compiler
		for step := range steps {
			what := m.step()
			got := c.Compile(m.in)
			want := Compile(m.in)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d (%s): the Compiler differs from Compile:\n%s", seed, step, what, rulesetDiff(want, got))
			}
		}
		stats[0], stats[1], stats[2] = stats[0]+c.stats.fresh, stats[1]+c.stats.patched, stats[2]+c.stats.same
	}
	t.Logf("compiled afresh %d times, patched %d, unchanged %d", stats[0], stats[1], stats[2])
	if stats[1] < stats[0] {
		t.Errorf("the sequence patched only %d times", stats[1])
	}
}

// TestCompilerSeesInPlaceChanges: a pod changed in place (its labels map,
// its addresses) is seen as changed; the Compiler kept copies.
func TestCompilerSeesInPlaceChanges(t *testing.T) {
	pods, nss := treeWorld()
	np := netpol("app", "web", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=client"))))))
	np.ResourceVersion = "1"
	in := Input{Node: testNode, Pods: pods, Namespaces: nss, Policies: []*networkingv1.NetworkPolicy{np}}
	var c Compiler
	c.Compile(in)
	for i := range in.Pods {
		switch in.Pods[i].Namespace + "/" + in.Pods[i].Name {
		case "other/client":
			in.Pods[i].Labels["app"] = "web"
		case "app/client":
			in.Pods[i].IPs[0] = netip.MustParseAddr("10.244.2.99")
		}
	}
	nss[0].Labels["team"] = "c"
	if got, want := c.Compile(in), Compile(in); !reflect.DeepEqual(got, want) {
		t.Fatalf("in-place changes missed:\n%s", rulesetDiff(want, got))
	}
}

// rulesetDiff shows where two rulesets differ.
func rulesetDiff(want, got Ruleset) string {
	w, g := want.String(), got.String()
	wl, gl := splitLines(w), splitLines(g)
	for i := range max(len(wl), len(gl)) {
		var a, b string
		if i < len(wl) {
			a = wl[i]
		}
		if i < len(gl) {
			b = gl[i]
		}
		if a != b {
			lo := max(0, i-5)
			return fmt.Sprintf("first difference at line %d:\n--- Compile\n%s\n--- Compiler\n%s", i+1,
				joinLines(wl[lo:min(len(wl), i+5)]), joinLines(gl[lo:min(len(gl), i+5)]))
		}
	}
	return "rendered alike; a difference the text does not show (nil and empty, shared IPs...)"
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func joinLines(l []string) string {
	out := ""
	for _, s := range l {
		out += s + "\n"
	}
	return out
}

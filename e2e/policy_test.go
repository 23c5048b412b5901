package e2e

// NetworkPolicy conformance on the lab. Every case applies its policies with
// kubectl, as a user would, states the truth table it expects as a model
// (matrix_test.go), and probes every pod of the fixture from every pod on
// 80/TCP, 81/TCP, 80/UDP and 81/UDP until the observed matrix is the
// expected one (or fails printing both). At the end of a case its policies
// are deleted and the all-allowed matrix must hold again before the next.
//
// The fixture, shared by every policy test and made once: namespaces x, y
// and z (label ns=<name>), each with pods a, b and c (label pod=<name>)
// spread over the lab's nodes and racks, each declaring the named container
// ports serve-80-tcp, serve-81-tcp, serve-80-udp, serve-81-udp and
// serve-80-sctp (the lab serves no SCTP; the port is there to be named).
// A few pods carry a tier label for the matchExpressions case.
//
// Namespace names are quoted in the manifests: YAML 1.1, which kubectl
// reads, takes a bare y (or n, yes, on...) for a boolean.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/lab"
)

var (
	policyNamespaces = []string{"x", "y", "z"}
	policyPodNames   = []string{"a", "b", "c"}
	// tierLabels are the fixture pods with a tier label (the rest have none).
	tierLabels = map[string]string{"x/c": "web", "y/b": "db", "z/b": "db"}
)

// policyFixture is the shared fixture: its pods in matrix order and what the
// lab reports of each ("ns/name" → pod).
type policyFixture struct {
	pods []podRef
	info map[string]lab.PodInfo
	// cluster is the pod range of the lab's primary family, the family
	// of the addresses the cases probe.
	cluster netip.Prefix
}

var (
	fixtureOnce sync.Once
	fixture     *policyFixture
)

// policyPods returns the fixture, making it on first use. The namespaces
// stay until the lab goes down: no policy outlives its case.
func policyPods(t *testing.T) *policyFixture {
	t.Helper()
	fixtureOnce.Do(func() { fixture = setupPolicyPods(t) })
	if fixture == nil {
		t.Fatal("the policy fixture (namespaces x, y, z and their pods) did not come up: see the first policy test")
	}
	return fixture
}

func setupPolicyPods(t *testing.T) *policyFixture {
	nodes := state(t).Nodes
	if len(nodes) < 4 {
		t.Fatalf("the policy tests want the lab's 4 nodes; it has %d", len(nodes))
	}
	var yaml strings.Builder
	var ids []string
	fx := &policyFixture{cluster: netip.MustParsePrefix(state(t).Config.ClusterCIDRs()[0])}
	for i, nsName := range policyNamespaces {
		fmt.Fprintf(&yaml, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %q, labels: {ns: %q}}\n---\n", nsName, nsName)
		for j, name := range policyPodNames {
			// Namespace i starts two nodes further on: with the lab's
			// nodes alternating racks, every namespace spans both racks,
			// and x/a (node 1, rack 1) and y/b (node 4, rack 2) — the pair
			// of the established-connection test — are racks apart.
			node := nodes[(2*i+j)%len(nodes)].Name
			yaml.WriteString(policyPodYAML(nsName, name, node))
			fx.pods = append(fx.pods, podRef{nsName, name})
			ids = append(ids, nsName+"/"+name)
		}
	}
	kubectl(t, yaml.String(), "apply", "-f", "-")
	fx.info = waitPods(t, ids...)
	cluster := fx.cluster
	var placed []string
	for _, id := range ids {
		p := fx.info[id]
		if !cluster.Contains(p.IPs[0]) {
			t.Fatalf("pod %s: address %s outside the cluster CIDR %s", id, p.IPs[0], cluster)
		}
		placed = append(placed, fmt.Sprintf("%s %s on %s", id, p.IPs[0], p.Node))
	}
	t.Logf("policy fixture: %s", strings.Join(placed, ", "))
	// With no NetworkPolicy anywhere, everything answers.
	expectMatrix(t, fx.pods, fx.info, "fixture, no policy", allowAll)
	return fx
}

// policyPodYAML is a fixture pod pinned to node: four served ports (TCP and
// UDP 80 and 81) and a named SCTP port.
func policyPodYAML(nsName, name, node string) string {
	labels := fmt.Sprintf("pod: %q", name)
	if tier, ok := tierLabels[nsName+"/"+name]; ok {
		labels += fmt.Sprintf(", tier: %q", tier)
	}
	return serverPodYAML(nsName, name, node, labels, "    - {name: serve-80-sctp, containerPort: 80, protocol: SCTP}\n")
}

// policyCase starts a case on the fixture; when the case ends, every
// NetworkPolicy of the fixture's namespaces is deleted and the all-allowed
// matrix must hold again.
func policyCase(t *testing.T) *policyFixture {
	t.Helper()
	fx := policyPods(t)
	t.Cleanup(func() { fx.reset(t) })
	return fx
}

// reset deletes every NetworkPolicy in x, y, z and default (where one case
// puts a policy) and waits for the all-allowed matrix.
func (fx *policyFixture) reset(t *testing.T) {
	t.Helper()
	for _, n := range append(slices.Clone(policyNamespaces), "default") {
		kubectl(t, "", "delete", "networkpolicy", "--all", "-n", n)
	}
	kubectl(t, "", "delete", "clusternetworkpolicies.policy.networking.k8s.io", "--all")
	expectMatrix(t, fx.pods, fx.info, "policies deleted", allowAll)
}

// apply applies manifests with kubectl.
func (fx *policyFixture) apply(t *testing.T, manifests ...string) {
	t.Helper()
	kubectl(t, strings.Join(manifests, ""), "apply", "-f", "-")
}

// expect waits for the matrix of m (see expectMatrix).
func (fx *policyFixture) expect(t *testing.T, what string, m model) {
	t.Helper()
	expectMatrix(t, fx.pods, fx.info, what, m)
}

// ip is a fixture pod's address.
func (fx *policyFixture) ip(id string) netip.Addr { return fx.info[id].IPs[0] }

// host is pod id's primary address as a one-address CIDR (/32, /128).
func (fx *policyFixture) host(id string) netip.Prefix {
	a := fx.ip(id)
	return netip.PrefixFrom(a, a.BitLen())
}

// netpol is a NetworkPolicy manifest; spec is the YAML under "spec:",
// indented by two spaces.
func netpol(nsName, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %q, namespace: %q}\nspec:%s\n---\n", name, nsName, spec)
}

// is reports whether p is the pod id ("ns/name").
func is(p podRef, id string) bool { return p.String() == id }

// kubectlAnyway runs kubectl in a cleanup, where a failure is reported but
// must not stop the rest of the cleanup.
func kubectlAnyway(t *testing.T, args ...string) {
	t.Helper()
	if _, err := tl.KubectlErr(t, "", args...); err != nil {
		t.Error(err)
	}
}

// denyIngress isolates every pod of its namespace for ingress.
const denyIngress = `
  podSelector: {}
  policyTypes: [Ingress]`

// TestPolicy runs the NetworkPolicy cases one after the other on the shared
// fixture. Each subtest names the behaviour it checks.
func TestPolicy(t *testing.T) {
	t.Run("DefaultDenyIngress", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t, netpol("x", "deny-ingress", denyIngress))
		fx.expect(t, "x isolated for ingress", func(from, to podRef, _ target) bool {
			return to.NS != "x"
		})
	})

	t.Run("DefaultDenyIngressAndEgress", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t, netpol("x", "deny-all", `
  podSelector: {}
  policyTypes: [Ingress, Egress]`))
		fx.expect(t, "x isolated both ways", func(from, to podRef, _ target) bool {
			return to.NS != "x" && from.NS != "x"
		})
	})

	t.Run("PolicyScopedToItsNamespace", func(t *testing.T) {
		fx := policyCase(t)
		// A deny-all in namespace default (which has no fixture pods)
		// isolates nothing in x, y or z; z's own policy still holds.
		fx.apply(t,
			netpol("default", "deny-all", `
  podSelector: {}
  policyTypes: [Ingress, Egress]`),
			netpol("z", "deny-ingress", denyIngress))
		fx.expect(t, "only z isolated", func(from, to podRef, _ target) bool {
			return to.NS != "z"
		})
	})

	t.Run("AllowFromPodLabel", func(t *testing.T) {
		fx := policyCase(t)
		// A bare podSelector peer: pods of the policy's own namespace.
		fx.apply(t, netpol("x", "a-from-b", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}`))
		fx.expect(t, "x/a open to x/b only", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || is(from, "x/b")
		})
	})

	t.Run("AllowFromNamespace", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t, netpol("x", "a-from-y", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "y"}}`))
		fx.expect(t, "x/a open to namespace y", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || from.NS == "y"
		})
	})

	t.Run("PodAndNamespaceInOnePeer", func(t *testing.T) {
		fx := policyCase(t)
		// One peer with both selectors: pods b of namespace y (AND).
		fx.apply(t, netpol("x", "a-from-y-b", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "y"}}
      podSelector: {matchLabels: {pod: b}}`))
		fx.expect(t, "x/a open to y/b only", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || is(from, "y/b")
		})
	})

	t.Run("PodOrNamespaceInTwoPeers", func(t *testing.T) {
		fx := policyCase(t)
		// Two peers: any pod of y, or pod b of x (OR).
		fx.apply(t, netpol("x", "a-from-y-or-b", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "y"}}
    - podSelector: {matchLabels: {pod: b}}`))
		fx.expect(t, "x/a open to y and x/b", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || from.NS == "y" || is(from, "x/b")
		})
	})

	t.Run("MatchExpressions", func(t *testing.T) {
		fx := policyCase(t)
		// One operator per policed pod; tier labels: x/c web, y/b db, z/b db.
		fx.apply(t,
			netpol("x", "in", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: In, values: ["y", "z"]}]`),
			netpol("x", "notin", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]`),
			netpol("y", "exists", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchExpressions: [{key: tier, operator: Exists}]`),
			netpol("y", "doesnotexist", `
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: tier, operator: DoesNotExist}]`))
		fx.expect(t, "In, NotIn, Exists, DoesNotExist", func(from, to podRef, _ target) bool {
			_, tiered := tierLabels[from.String()]
			switch to.String() {
			case "x/a":
				return from.NS == "y" || from.NS == "z"
			case "x/b":
				return from.Name == "c" // in any namespace
			case "y/a":
				return tiered // x/c, y/b, z/b
			case "y/c":
				return from.NS == "y" && !tiered // y/a
			}
			return true
		})
	})

	t.Run("NumericPort", func(t *testing.T) {
		fx := policyCase(t)
		// No from: every source, on 80/TCP only.
		fx.apply(t, netpol("x", "a-tcp-80", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: TCP, port: 80}]`))
		fx.expect(t, "x/a open on 80/TCP only", func(from, to podRef, tg target) bool {
			return !is(to, "x/a") || tg == target{80, "TCP"}
		})
	})

	t.Run("NamedPort", func(t *testing.T) {
		fx := policyCase(t)
		// x/a: serve-81-tcp is 81/TCP. x/b: a name resolves within its
		// protocol, and protocol defaults to TCP: the pods have no TCP port
		// named serve-80-udp, so the rule opens nothing.
		fx.apply(t,
			netpol("x", "a-serve-81-tcp", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: TCP, port: serve-81-tcp}]`),
			netpol("x", "b-serve-80-udp-as-tcp", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{port: serve-80-udp}]`))
		fx.expect(t, "x/a open on serve-81-tcp, x/b on nothing", func(from, to podRef, tg target) bool {
			switch to.String() {
			case "x/a":
				return tg == target{81, "TCP"}
			case "x/b":
				return false
			}
			return true
		})
	})

	t.Run("EndPort", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t,
			netpol("x", "a-tcp-80-81", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: TCP, port: 80, endPort: 81}]`),
			netpol("x", "b-udp-81-81", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{protocol: UDP, port: 81, endPort: 81}]`))
		fx.expect(t, "x/a open on 80-81/TCP, x/b on 81-81/UDP", func(from, to podRef, tg target) bool {
			switch to.String() {
			case "x/a":
				return tg.Proto == "TCP"
			case "x/b":
				return tg == target{81, "UDP"}
			}
			return true
		})
	})

	t.Run("ProtocolOnly", func(t *testing.T) {
		fx := policyCase(t)
		// x/a: UDP 80 only. x/b: SCTP 80 only, by number; x/c: by name.
		// Neither SCTP rule may let TCP or UDP through.
		fx.apply(t,
			netpol("x", "a-udp-80", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: UDP, port: 80}]`),
			netpol("x", "b-sctp-80", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{protocol: SCTP, port: 80}]`),
			netpol("x", "c-serve-80-sctp", `
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - ports: [{protocol: SCTP, port: serve-80-sctp}]`))
		fx.expect(t, "x/a open on 80/UDP only, x/b and x/c on SCTP only", func(from, to podRef, tg target) bool {
			if to.NS != "x" {
				return true
			}
			return to.Name == "a" && tg == target{80, "UDP"}
		})
	})

	t.Run("EgressIPBlockExcept", func(t *testing.T) {
		fx := policyCase(t)
		// x/a: the pod network except y/b. x/b: z/c alone.
		fx.apply(t,
			netpol("x", "a-to-pods-but-y-b", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: %s, except: [%s]}`, fx.cluster, fx.host("y/b"))),
			netpol("x", "b-to-z-c", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: %s}`, fx.host("z/c"))))
		fx.expect(t, "x/a reaches all but y/b, x/b only z/c", func(from, to podRef, _ target) bool {
			switch from.String() {
			case "x/a":
				return !is(to, "y/b")
			case "x/b":
				return is(to, "z/c")
			}
			return true
		})
	})

	t.Run("EgressIPBlockExceptReopenedByAnotherPolicy", func(t *testing.T) {
		fx := policyCase(t)
		// The address excepted by one policy is allowed by another, on
		// 80/TCP: policies add up, an except takes nothing from the others.
		fx.apply(t,
			netpol("x", "a-to-pods-but-y-b", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: %s, except: [%s]}`, fx.cluster, fx.host("y/b"))),
			netpol("x", "a-to-y-b-tcp-80", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: %s}
    ports: [{protocol: TCP, port: 80}]`, fx.host("y/b"))))
		fx.expect(t, "x/a reaches y/b on 80/TCP only, the rest everywhere", func(from, to podRef, tg target) bool {
			return !is(from, "x/a") || !is(to, "y/b") || tg == target{80, "TCP"}
		})
	})

	t.Run("EgressNamedPort", func(t *testing.T) {
		fx := policyCase(t)
		// An egress named port resolves on the destination pods.
		fx.apply(t, netpol("x", "a-to-serve-80-udp", `
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{protocol: UDP, port: serve-80-udp}]`))
		fx.expect(t, "x/a reaches serve-80-udp only", func(from, to podRef, tg target) bool {
			return !is(from, "x/a") || tg == target{80, "UDP"}
		})
	})

	t.Run("EgressNamedPortToIPBlock", func(t *testing.T) {
		fx := policyCase(t)
		// A named port is the destination pod's whatever the peer: with an
		// ipBlock, the pods whose addresses are in the block (and not in
		// an except). tern once let this pair match nothing; the generated
		// cases found it.
		fx.apply(t, netpol("x", "a-to-block-serve-81-tcp", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: %s, except: [%s]}}]
    ports: [{protocol: TCP, port: serve-81-tcp}]`, fx.cluster, fx.host("y/b"))))
		fx.expect(t, "x/a reaches serve-81-tcp of every pod but y/b", func(from, to podRef, tg target) bool {
			return !is(from, "x/a") || (tg == target{81, "TCP"} && !is(to, "y/b"))
		})
	})

	t.Run("EgressAndIngressBothRequired", func(t *testing.T) {
		fx := policyCase(t)
		// x/a may send to namespace y only; y/b takes x/b only. x/a -> y/b
		// passes x/a's egress but not y/b's ingress: denied.
		fx.apply(t,
			netpol("x", "a-to-y", `
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: "y"}}`),
			netpol("y", "b-from-x-b", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "x"}}
      podSelector: {matchLabels: {pod: b}}`))
		fx.expect(t, "x/a egress to y, y/b ingress from x/b", func(from, to podRef, _ target) bool {
			return (!is(from, "x/a") || to.NS == "y") && (!is(to, "y/b") || is(from, "x/b"))
		})
	})

	t.Run("StackedPolicies", func(t *testing.T) {
		fx := policyCase(t)
		// Three policies over x; x/a is selected by all three and gets the
		// union of their peers, x/b and x/c by the last one only.
		fx.apply(t,
			netpol("x", "a-from-b", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}`),
			netpol("x", "a-from-z", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "z"}}`),
			netpol("x", "all-from-c", `
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: c}}`))
		fx.expect(t, "x/a from x/b, x/c and z; x/b and x/c from x/c", func(from, to podRef, _ target) bool {
			switch {
			case to.NS != "x":
				return true
			case is(to, "x/a") && (is(from, "x/b") || from.NS == "z"):
				return true
			}
			return is(from, "x/c")
		})
	})

	t.Run("LabelAddedAtRuntime", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t, netpol("x", "a-from-access", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {access: "true"}}
    - namespaceSelector: {matchLabels: {access: "true"}}`))
		t.Cleanup(func() {
			kubectlAnyway(t, "label", "pod", "-n", "z", "c", "access-")
			kubectlAnyway(t, "label", "namespace", "y", "access-")
		})
		fx.expect(t, "nothing labelled: x/a isolated", func(from, to podRef, _ target) bool {
			return !is(to, "x/a")
		})
		kubectl(t, "", "label", "pod", "-n", "z", "c", "access=true")
		fx.expect(t, "pod z/c labelled access=true", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || is(from, "z/c")
		})
		kubectl(t, "", "label", "namespace", "y", "access=true")
		fx.expect(t, "namespace y labelled access=true", func(from, to podRef, _ target) bool {
			return !is(to, "x/a") || is(from, "z/c") || from.NS == "y"
		})
	})

	t.Run("PolicyDeleted", func(t *testing.T) {
		fx := policyCase(t)
		fx.apply(t,
			netpol("y", "deny-ingress", denyIngress),
			netpol("y", "a-from-x", `
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "x"}}`))
		fx.expect(t, "y isolated, y/a open to x", func(from, to podRef, _ target) bool {
			return to.NS != "y" || (to.Name == "a" && from.NS == "x")
		})
		kubectl(t, "", "delete", "networkpolicy", "-n", "y", "a-from-x")
		fx.expect(t, "allow deleted: y/a isolated too", func(from, to podRef, _ target) bool {
			return to.NS != "y"
		})
		kubectl(t, "", "delete", "networkpolicy", "-n", "y", "deny-ingress")
		fx.expect(t, "deny deleted: all open again", allowAll)
	})
}

// TestPolicyEstablishedConnectionCut: a TCP connection that a new policy
// denies is cut (its next echo never comes back), a new one is not
// answered, a connection the policy still allows keeps working, and with the
// policy deleted a new connection works again.
func TestPolicyEstablishedConnectionCut(t *testing.T) {
	fx := policyCase(t)
	for _, id := range []string{"x/a", "z/a", "y/b"} {
		t.Logf("%s on %s", id, fx.info[id].Node)
	}
	cut := fx.dial(t, "x/a", "y/b")
	defer cut.Close()
	kept := fx.dial(t, "z/a", "y/b")
	defer kept.Close()
	cut.mustEcho(t, "before the policy")
	kept.mustEcho(t, "before the policy")

	fx.apply(t, netpol("y", "b-from-y-and-z", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: In, values: ["y", "z"]}]`))
	fx.expect(t, "y/b closed to x", func(from, to podRef, _ target) bool {
		return !is(to, "y/b") || from.NS != "x"
	})

	if got, err := lab.Probe(ctx(t), fx.info["x/a"].NetNS, netip.AddrPortFrom(fx.ip("y/b"), 80), "TCP", probeTimeout); got == "y/b" {
		t.Errorf("a new connection x/a -> y/b:80 was answered under the policy")
	} else {
		t.Logf("a new connection x/a -> y/b:80 under the policy: %q %v", got, err)
	}
	t0 := time.Now()
	if got, err := cut.echo("after the policy", 3*time.Second); err == nil {
		t.Errorf("the established connection x/a -> y/b:80 still echoes (%q) under a policy that denies it: not cut", got)
	} else {
		t.Logf("the established connection x/a -> y/b:80: no echo (%v after %s)", err, time.Since(t0).Round(10*time.Millisecond))
	}
	kept.mustEcho(t, "after the policy")

	fx.reset(t)
	again := fx.dial(t, "x/a", "y/b")
	defer again.Close()
	again.mustEcho(t, "policy deleted")
}

// lineConn is a TCP connection to a fixture pod's port 80, opened from
// inside another pod's namespace: the server sent its id and echoes lines.
type lineConn struct {
	net.Conn
	r    *bufio.Reader
	what string
}

// dial connects from the pod from to the pod to on 80/TCP and reads the
// server's first line, which must be to's id.
func (fx *policyFixture) dial(t *testing.T, from, to string) *lineConn {
	t.Helper()
	h, err := ns.GetNS(lab.NSPath(fx.info[from].NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dst := netip.AddrPortFrom(fx.ip(to), 80)
	var conn net.Conn
	err = h.Do(func(ns.NetNS) error {
		// The socket is made on this thread, in from's namespace, and
		// stays there; reads and writes may then happen on any thread.
		var derr error
		conn, derr = (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp", dst.String())
		return derr
	})
	if err != nil {
		t.Fatalf("connect %s -> %s (%s): %v", from, to, dst, err)
	}
	c := &lineConn{Conn: conn, r: bufio.NewReader(conn), what: fmt.Sprintf("%s -> %s:80", from, to)}
	if id, err := c.readLine(2 * time.Second); err != nil || id != to {
		conn.Close()
		t.Fatalf("%s: first line %q %v, want %q", c.what, id, err, to)
	}
	return c
}

func (c *lineConn) readLine(timeout time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	s, err := c.r.ReadString('\n')
	return strings.TrimSpace(s), err
}

// echo writes line and reads the server's next line. The write may succeed
// where the echo never comes: only the reply tells.
func (c *lineConn) echo(line string, timeout time.Duration) (string, error) {
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	return c.readLine(timeout)
}

func (c *lineConn) mustEcho(t *testing.T, line string) {
	t.Helper()
	if got, err := c.echo(line, 3*time.Second); err != nil || got != line {
		t.Errorf("%s: echo of %q: %q %v", c.what, line, got, err)
	}
}

// TestPolicyEveryFamily: a policy applies to every address of a pod (both
// families in a dual-stack lab): a pod-selector peer admits its pods at
// each of the isolated pod's addresses and refuses the others at each; an
// ipBlock of one family admits that family only, never the other.
func TestPolicyEveryFamily(t *testing.T) {
	fx := policyCase(t)
	fx.apply(t,
		netpol("y", "b-from-x-a", `
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}`),
		netpol("y", "c-from-primary-block", fmt.Sprintf(`
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - ipBlock: {cidr: %s}`, fx.cluster)))
	type want struct {
		from, to string
		ip       netip.Addr
		ok       bool
	}
	var wants []want
	for i, ip := range families(t, fx.info["y/b"]) {
		wants = append(wants, want{"x/a", "y/b", ip, true}, want{"z/c", "y/b", ip, false})
		primary := i == 0
		wants = append(wants, want{"x/a", "y/c", families(t, fx.info["y/c"])[i], primary}, want{"z/b", "y/c", families(t, fx.info["y/c"])[i], primary})
	}
	for _, w := range wants {
		check := func() error {
			got, err := lab.Probe(ctx(t), fx.info[w.from].NetNS, netip.AddrPortFrom(w.ip, 80), "TCP", probeTimeout)
			if reached := err == nil && got == w.to; reached != w.ok {
				return fmt.Errorf("reached %v (%q %v), want %v", reached, got, err, w.ok)
			}
			return nil
		}
		err := kubetest.EventuallyErr(30*time.Second, check)
		// Once in force, a refusal holds: two more probes, both refused
		// (one timed-out probe alone proves little).
		for i := 0; err == nil && !w.ok && i < 2; i++ {
			err = check()
		}
		if err != nil {
			t.Errorf("%s -> %s at %s: %v", w.from, w.to, w.ip, err)
		}
	}
}

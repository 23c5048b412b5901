package netpolgen

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// world is the e2e fixture's shape: x, y, z with pods a, b, c, four served
// ports and a named SCTP port.
func world() World {
	var w World
	ports := []corev1.ContainerPort{
		{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
		{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
		{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
		{Name: "serve-80-sctp", ContainerPort: 80, Protocol: corev1.ProtocolSCTP},
	}
	for i, ns := range []string{"x", "y", "z"} {
		w.Namespaces = append(w.Namespaces, Namespace{Name: ns, Labels: map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}})
		for j, name := range []string{"a", "b", "c"} {
			l := map[string]string{"pod": name}
			if ns == "y" && name == "b" {
				l["tier"] = "db"
			}
			w.Pods = append(w.Pods, Pod{Namespace: ns, Name: name, Labels: l,
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i), byte(10 + j)})}, Ports: ports})
		}
	}
	return w
}

// dualWorld is world with an IPv6 address for every pod but z/c, which
// stays IPv4-only: pod i of namespace n has fd10:244:0:n::(10+i) too, so
// that a namespace is a /64 and the world a /48.
func dualWorld() World {
	w := world()
	for k := range w.Pods {
		p := &w.Pods[k]
		if p.ID() == "z/c" {
			continue
		}
		v4 := p.IPs[0].As4()
		p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0x10, 0x02, 0x44, 7: v4[2], 15: v4[3]}))
	}
	return w
}

func pod(w World, id string) Pod {
	for _, p := range w.Pods {
		if p.ID() == id {
			return p
		}
	}
	panic(id)
}

func newPolicy(t *testing.T, ns, spec string) *networkingv1.NetworkPolicy {
	t.Helper()
	p := &networkingv1.NetworkPolicy{}
	if err := json.Unmarshal([]byte(spec), &p.Spec); err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	p.Namespace, p.Name = ns, "p"
	return p
}

var (
	tcp80  = Target{Port: 80, Protocol: corev1.ProtocolTCP}
	tcp81  = Target{Port: 81, Protocol: corev1.ProtocolTCP}
	udp80  = Target{Port: 80, Protocol: corev1.ProtocolUDP}
	tcp80b = Target{Port: 80, Protocol: corev1.ProtocolTCP, IPv6: true} // over IPv6
	tcp81b = Target{Port: 81, Protocol: corev1.ProtocolTCP, IPv6: true}
)

// Cases written from the API's documentation, each with the flows that
// show the rule.
func TestAllowed(t *testing.T) {
	w := dualWorld()
	type flow struct {
		from, to string
		t        Target
		want     bool
	}
	for _, c := range []struct {
		name, ns, spec string
		flows          []flow
	}{
		{"deny all ingress", "x", `{"podSelector":{}}`, []flow{
			{"y/a", "x/a", tcp80, false}, {"x/b", "x/a", udp80, false}, {"x/a", "y/a", tcp80, true}}},
		{"inferred egress", "x", `{"podSelector":{"matchLabels":{"pod":"a"}},"egress":[{"to":[{"podSelector":{"matchLabels":{"pod":"b"}}}]}]}`, []flow{
			{"x/a", "x/b", tcp80, true}, {"x/a", "y/b", tcp80, false}, {"x/a", "x/c", tcp80, false},
			// ingress is isolated too (inferred), with no rule: nothing in
			{"x/b", "x/a", tcp80, false}}},
		{"egress only", "x", `{"podSelector":{},"policyTypes":["Egress"]}`, []flow{
			{"x/a", "y/a", tcp80, false}, {"y/a", "x/a", tcp80, true}}},
		{"namespace and pod ANDed", "x", `{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}},"podSelector":{"matchLabels":{"pod":"b"}}}]}]}`, []flow{
			{"y/b", "x/a", tcp80, true}, {"y/a", "x/a", tcp80, false}, {"z/b", "x/a", tcp80, false}, {"x/b", "x/a", tcp80, false}}},
		{"namespace or pod ORed", "x", `{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"ns":"y"}}},{"podSelector":{"matchLabels":{"pod":"b"}}}]}]}`, []flow{
			{"y/a", "x/a", tcp80, true}, {"x/b", "x/a", tcp80, true}, {"z/b", "x/a", tcp80, false}}},
		{"expressions", "x", `{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{"matchExpressions":[{"key":"ns","operator":"NotIn","values":["x","z"]}]},"podSelector":{"matchExpressions":[{"key":"tier","operator":"Exists"}]}}]}]}`, []flow{
			{"y/b", "x/a", tcp80, true}, {"y/a", "x/a", tcp80, false}}},
		{"DoesNotExist", "x", `{"podSelector":{"matchExpressions":[{"key":"tier","operator":"DoesNotExist"}]},"ingress":[]}`, []flow{
			{"y/a", "x/a", tcp80, false}}},
		{"ipBlock except", "x", `{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.244.0.0/16","except":["10.244.1.0/24"]}}]}]}`, []flow{
			{"z/a", "x/a", tcp80, true}, {"y/a", "x/a", tcp80, false}}},
		{"named port", "x", `{"podSelector":{},"ingress":[{"ports":[{"port":"serve-81-tcp"}]}]}`, []flow{
			{"y/a", "x/a", tcp81, true}, {"y/a", "x/a", tcp80, false}}},
		{"named port of the other protocol", "x", `{"podSelector":{},"ingress":[{"ports":[{"port":"serve-80-tcp","protocol":"UDP"}]}]}`, []flow{
			{"y/a", "x/a", udp80, false}, {"y/a", "x/a", tcp80, false}}},
		{"range", "x", `{"podSelector":{},"ingress":[{"ports":[{"port":79,"endPort":80,"protocol":"UDP"}]}]}`, []flow{
			{"y/a", "x/a", udp80, true}, {"y/a", "x/a", tcp80, false}}},
		{"protocol only", "x", `{"podSelector":{},"ingress":[{"ports":[{"protocol":"UDP"}]}]}`, []flow{
			{"y/a", "x/a", udp80, true}, {"y/a", "x/a", tcp81, false}}},
		{"SCTP only opens no TCP", "x", `{"podSelector":{},"ingress":[{"ports":[{"port":80,"protocol":"SCTP"}]}]}`, []flow{
			{"y/a", "x/a", tcp80, false}}},
		{"no policy, both families", "x", `{"podSelector":{"matchLabels":{"pod":"none"}}}`, []flow{
			{"y/a", "x/a", tcp80b, true}, {"y/a", "x/a", tcp80, true},
			// z/c has no IPv6 address: no such connection
			{"z/c", "x/a", tcp80b, false}, {"x/a", "z/c", tcp80b, false}, {"z/c", "x/a", tcp80, true}}},
		{"pod peer in both families", "x", `{"podSelector":{},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}}],"ports":[{"port":80}]}]}`, []flow{
			{"x/b", "x/a", tcp80, true}, {"x/b", "x/a", tcp80b, true}, {"x/c", "x/a", tcp80b, false}, {"x/b", "x/a", tcp81b, false}}},
		{"IPv4 block, IPv6 connection", "x", `{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.244.0.0/16"}}]}]}`, []flow{
			{"y/a", "x/a", tcp80, true}, {"y/a", "x/a", tcp80b, false}}},
		{"IPv6 block except", "x", `{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"fd10:244::/48","except":["fd10:244:0:1::/64","fd10:244:0:2::b/128"]}}]}]}`, []flow{
			{"z/a", "x/a", tcp80b, true}, {"y/a", "x/a", tcp80b, false}, {"z/b", "x/a", tcp80b, false},
			{"z/a", "x/a", tcp80, false}, {"x/b", "x/a", tcp80b, true}}},
		{"IPv6 everything, egress", "x", `{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"::/0"}}],"ports":[{"port":81,"endPort":82}]}]}`, []flow{
			{"x/a", "y/b", tcp81b, true}, {"x/a", "y/b", tcp80b, false}, {"x/a", "y/b", tcp81, false}}},
	} {
		pols := []*networkingv1.NetworkPolicy{newPolicy(t, c.ns, c.spec)}
		for _, f := range c.flows {
			if got := Allowed(w, pols, pod(w, f.from), pod(w, f.to), f.t); got != f.want {
				t.Errorf("%s: %s -> %s %d/%s: %v, want %v", c.name, f.from, f.to, f.t.Port, f.t.Protocol, got, f.want)
			}
		}
	}
	// Two policies: their union.
	pols := []*networkingv1.NetworkPolicy{
		newPolicy(t, "x", `{"podSelector":{},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"b"}}}]}]}`),
		newPolicy(t, "x", `{"podSelector":{"matchLabels":{"pod":"a"}},"ingress":[{"from":[{"namespaceSelector":{}}],"ports":[{"port":81}]}]}`),
	}
	for _, f := range []flow{{"x/b", "x/a", tcp80, true}, {"z/c", "x/a", tcp81, true}, {"z/c", "x/a", tcp80, false}, {"z/c", "x/c", tcp81, false}} {
		if got := Allowed(w, pols, pod(w, f.from), pod(w, f.to), f.t); got != f.want {
			t.Errorf("union: %s -> %s %v: %v, want %v", f.from, f.to, f.t, got, f.want)
		}
	}
}

func TestGeneratorIsReproducible(t *testing.T) {
	w := world()
	a, b := NewGenerator(42, w), NewGenerator(42, w)
	for i := range 50 {
		ca, cb := a.Next(), b.Next()
		if !reflect.DeepEqual(ca, cb) {
			t.Fatalf("case %d differs with the same seed:\n%s\n%s", i, ca, cb)
		}
	}
	if reflect.DeepEqual(NewGenerator(1, w).Next(), NewGenerator(2, w).Next()) &&
		reflect.DeepEqual(NewGenerator(1, w).Next(), NewGenerator(3, w).Next()) {
		t.Error("different seeds give the same cases")
	}
}

// The generator reaches every feature it claims to, and its cases are
// valid as the API server checks them (the parts that can go wrong here).
func TestGeneratorCoverage(t *testing.T) {
	w := dualWorld()
	g := NewGenerator(7, w)
	seen := map[string]bool{}
	for range 400 {
		c := g.Next()
		if len(c.Labels) > 0 {
			seen["label change"] = true
		}
		if len(c.Policies) > 1 {
			seen["several policies"] = true
		}
		for _, p := range c.Policies {
			if len(p.Spec.PolicyTypes) == 0 {
				seen["inferred types"] = true
			}
			for _, r := range p.Spec.Ingress {
				checkPeers(t, r.From, seen)
				checkPorts(t, r.Ports, seen)
			}
			for _, r := range p.Spec.Egress {
				checkPeers(t, r.To, seen)
				checkPorts(t, r.Ports, seen)
			}
			for _, e := range p.Spec.PodSelector.MatchExpressions {
				seen[string(e.Operator)] = true
			}
		}
	}
	for _, want := range []string{"label change", "several policies", "inferred types", "In", "NotIn", "Exists", "DoesNotExist",
		"pods", "namespaces", "pods and namespaces", "ipBlock", "except", "IPv6 ipBlock", "IPv6 except", "number", "range", "name", "protocol only", "UDP", "SCTP"} {
		if !seen[want] {
			t.Errorf("400 cases and no %s", want)
		}
	}
}

func checkPeers(t *testing.T, peers []networkingv1.NetworkPolicyPeer, seen map[string]bool) {
	for _, p := range peers {
		switch {
		case p.IPBlock != nil:
			seen["ipBlock"] = true
			cidr := netip.MustParsePrefix(p.IPBlock.CIDR)
			v6 := ""
			if cidr.Addr().Is6() {
				v6 = "IPv6 "
			}
			seen[v6+"ipBlock"] = true
			for _, e := range p.IPBlock.Except {
				seen[v6+"except"] = true
				ex := netip.MustParsePrefix(e)
				if ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
					t.Errorf("except %s not strictly inside %s (the API server refuses it)", ex, cidr)
				}
			}
		case p.PodSelector != nil && p.NamespaceSelector != nil:
			seen["pods and namespaces"] = true
		case p.PodSelector != nil:
			seen["pods"] = true
		case p.NamespaceSelector != nil:
			seen["namespaces"] = true
		default:
			t.Error("a peer with nothing in it")
		}
	}
}

func checkPorts(t *testing.T, ports []networkingv1.NetworkPolicyPort, seen map[string]bool) {
	for _, p := range ports {
		if p.Protocol != nil {
			seen[string(*p.Protocol)] = true
		}
		switch {
		case p.Port == nil:
			seen["protocol only"] = true
		case p.EndPort != nil:
			seen["range"] = true
			if p.Port.StrVal != "" || *p.EndPort < p.Port.IntVal {
				t.Errorf("invalid range %v-%d", p.Port, *p.EndPort)
			}
		case p.Port.StrVal != "":
			seen["name"] = true
		default:
			seen["number"] = true
		}
	}
}

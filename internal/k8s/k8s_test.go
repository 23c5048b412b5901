package k8s

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tern-net/tern/bgp"
)

func TestNodeFromAPI(t *testing.T) {
	node := func(mut func(n *corev1.Node)) *corev1.Node {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n1"},
			Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd10:244:1::/64"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: "n1"},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.9"},
				{Type: corev1.NodeInternalIP, Address: "10.250.0.7"},
			}},
		}
		if mut != nil {
			mut(n)
		}
		return n
	}
	dual := func(n *corev1.Node) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd74:6572:6e30::7"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.250.0.8"})
	}
	ann := func(v string) func(n *corev1.Node) {
		return func(n *corev1.Node) { dual(n); n.Annotations = map[string]string{AddressAnnotation: v} }
	}
	cases := []struct {
		name    string
		node    *corev1.Node
		cidrs   []string
		addrs   string // IPv4,IPv6 ("" for unset)
		wantErr string
	}{
		{"dual-stack pod CIDRs, IPv4 InternalIP", node(nil), []string{"10.244.1.0/24", "fd10:244:1::/64"}, "10.250.0.7,", ""},
		{"InternalIPs of both families: the first of each", node(dual), []string{"10.244.1.0/24", "fd10:244:1::/64"}, "10.250.0.7,fd74:6572:6e30::7", ""},
		{"IPv6 only", node(func(n *corev1.Node) {
			n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "fd74:6572:6e30::7"}}
			n.Spec.PodCIDR, n.Spec.PodCIDRs = "fd10:244:1::/64", nil
		}), []string{"fd10:244:1::/64"}, ",fd74:6572:6e30::7", ""},
		{"only spec.podCIDR", node(func(n *corev1.Node) { n.Spec.PodCIDRs = nil }), []string{"10.244.1.0/24"}, "10.250.0.7,", ""},
		{"no podCIDR yet", node(func(n *corev1.Node) { n.Spec = corev1.NodeSpec{} }), nil, "10.250.0.7,", ""},
		{"address annotation wins for its family, InternalIP for the other", node(ann("10.9.9.9")),
			[]string{"10.244.1.0/24", "fd10:244:1::/64"}, "10.9.9.9,fd74:6572:6e30::7", ""},
		{"address annotation of both families", node(ann("fd74:6572:6e30::99, 10.9.9.9")),
			[]string{"10.244.1.0/24", "fd10:244:1::/64"}, "10.9.9.9,fd74:6572:6e30::99", ""},
		{"bad address annotation", node(ann("ten.nine")), nil, "", `annotation tern.io/address="ten.nine": "ten.nine" is not an IP address`},
		{"address annotation with two of one family", node(ann("10.9.9.9,10.9.9.8")), nil, "", `two addresses of one family`},
		{"address annotation with a zone", node(ann("fe80::1%eth0")), nil, "", `is not an IP address`},
		{"bad podCIDR", node(func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.1.0/33"} }), nil, "", `podCIDR "10.244.1.0/33"`},
		{"no InternalIP", node(func(n *corev1.Node) { n.Status.Addresses = nil }), []string{"10.244.1.0/24", "fd10:244:1::/64"}, ",", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := NodeFromAPI(c.node)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var cidrs []string
			for _, p := range got.PodCIDRs {
				cidrs = append(cidrs, p.String())
			}
			if !slices.Equal(cidrs, c.cidrs) {
				t.Errorf("pod CIDRs %v, want %v", cidrs, c.cidrs)
			}
			str := func(a netip.Addr) string {
				if a.IsValid() {
					return a.String()
				}
				return ""
			}
			if a := str(got.IPv4) + "," + str(got.IPv6); a != c.addrs {
				t.Errorf("addresses %s, want %s", a, c.addrs)
			}
		})
	}
}

func TestBGPPeerHoldTime(t *testing.T) {
	peer := func(spec map[string]any) *unstructured.Unstructured {
		if _, ok := spec["peerIP"]; !ok {
			spec["peerIP"] = "10.0.0.1"
		}
		spec["asNumber"] = int64(65001)
		return &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "p"}, "spec": spec}}
	}
	for _, c := range []struct {
		spec map[string]any
		want time.Duration
	}{
		{map[string]any{}, 0}, // the default
		{map[string]any{"holdTimeSeconds": int64(0)}, bgp.NoHoldTime},
		{map[string]any{"holdTimeSeconds": int64(9)}, 9 * time.Second},
	} {
		p, _, err := bgpPeerFrom(peer(c.spec))
		if err != nil || p.HoldTime != c.want {
			t.Errorf("%v: hold %v (%v), want %v", c.spec, p.HoldTime, err, c.want)
		}
	}
	for _, bad := range []string{"x", "::", "0.0.0.0", "::1", "fe80::1%eth0", "ff02::1"} {
		if _, _, err := bgpPeerFrom(peer(map[string]any{"peerIP": bad})); err == nil {
			t.Errorf("peerIP %s accepted", bad)
		}
	}
	// An IPv6 peer is an IPv6 session; an IPv4-mapped one is IPv4.
	for in, want := range map[string]string{"fd74:6572:6e30:1::fe": "fd74:6572:6e30:1::fe", "::ffff:10.30.1.254": "10.30.1.254"} {
		if p, _, err := bgpPeerFrom(peer(map[string]any{"peerIP": in})); err != nil || p.PeerIP != netip.MustParseAddr(want) {
			t.Errorf("peerIP %s: %v %v, want %s", in, p.PeerIP, err, want)
		}
	}
}

func TestParseCommunity(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"64512:100", 64512<<16 | 100, true},
		{"65000:1:2", 0, false}, // large: not read as 65000:1
		{"70000:1", 0, false},
		{"1:x", 0, false},
	} {
		got, err := parseCommunity(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%q: %d %v", c.in, got, err)
		}
	}
	if l, err := parseLargeCommunity("65000:4294967295:7"); err != nil || l != (bgp.LargeCommunity{Global: 65000, Local1: 4294967295, Local2: 7}) {
		t.Errorf("large community: %+v %v", l, err)
	}
	for _, bad := range []string{"65000:1", "1:2:3:4", "1:x:3", "4294967296:1:1"} {
		if _, err := parseLargeCommunity(bad); err == nil {
			t.Errorf("large community %q accepted", bad)
		}
	}
}

// TestSlimPod: the cached pod keeps what the agent reads (identity, labels,
// node, named ports, addresses, the static pod annotations) and nothing else.
func TestSlimPod(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "x", UID: "u", Labels: map[string]string{"app": "a"},
			Annotations:   map[string]string{annotationConfigMirror: "m", "big": strings.Repeat("x", 1000)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true, Containers: []corev1.Container{{Name: "c", Image: "img",
			Env:   []corev1.EnvVar{{Name: "E", Value: "v"}},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 81}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}, Message: "hello"},
	}
	got, err := trim(p)
	if err != nil {
		t.Fatal(err)
	}
	s := got.(*corev1.Pod)
	if s.Name != "a" || s.Namespace != "x" || s.UID != "u" || s.Labels["app"] != "a" || s.Spec.NodeName != "n1" || !s.Spec.HostNetwork ||
		len(s.Status.PodIPs) != 1 || s.Status.Phase != corev1.PodRunning || s.Annotations[annotationConfigMirror] != "m" {
		t.Errorf("lost a field the agent reads: %+v", s)
	}
	if len(s.ManagedFields) != 0 || s.Annotations["big"] != "" || s.Spec.Containers[0].Image != "" || len(s.Spec.Containers[0].Env) != 0 || s.Status.Message != "" {
		t.Errorf("kept a field the agent never reads: %+v", s)
	}
	if ports := s.Spec.Containers[0].Ports; len(ports) != 1 || ports[0].Name != "http" || ports[0].ContainerPort != 80 {
		t.Errorf("named ports: %+v", ports)
	}
	if pod := podFromAPI(s); len(pod.UIDs) != 2 || len(pod.IPs) != 1 {
		t.Errorf("podFromAPI of the slim pod: %+v", pod)
	}
}

func TestBGPNodeAnnotations(t *testing.T) {
	n := Node{Name: "n1", IPv6: netip.MustParseAddr("fd74:6572:6e30::7")}
	for _, c := range []struct {
		ann     map[string]string
		wantID  string
		wantErr string
	}{
		{nil, "", ""},
		{map[string]string{RouterIDAnnotation: "10.1.2.3"}, "10.1.2.3", ""},
		{map[string]string{RouterIDAnnotation: "fd74:6572:6e00::1"}, "", `tern.io/router-id="fd74:6572:6e00::1" is not a router ID`},
		{map[string]string{RouterIDAnnotation: "0.0.0.0"}, "", `is not a router ID`},
		{map[string]string{ASNumberAnnotation: "0"}, "", `is not an AS number`},
		{map[string]string{RouteReflectorAnnotation: "fd74:6572:6e00::1"}, "", `is not a cluster ID`},
	} {
		n.Annotations = c.ann
		got, err := BGPNode(n)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%v: err %v, want %q", c.ann, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", c.ann, err)
			continue
		}
		if got.IPv6 != n.IPv6 || got.IPv4.IsValid() {
			t.Errorf("%v: addresses %v %v", c.ann, got.IPv4, got.IPv6)
		}
		if c.wantID != "" && got.RouterID != netip.MustParseAddr(c.wantID) {
			t.Errorf("%v: router ID %v, want %s", c.ann, got.RouterID, c.wantID)
		}
		if c.wantID == "" && got.RouterID.IsValid() {
			t.Errorf("%v: router ID %v, want none (derived by the plan)", c.ann, got.RouterID)
		}
	}
}

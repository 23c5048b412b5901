package k8s

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tern-net/tern/bgp"
)

// ErrCustomResourcesNotSynced: BGP waits for the tern.io caches, so that it
// never starts on defaults and restarts moments later on the real settings.
var ErrCustomResourcesNotSynced = errors.New("waiting for the tern.io custom resources")

// ErrSecretsNotSynced: a BGPPeer names a password Secret and the Secrets
// cache has not its list yet. BGP waits rather than peer without the
// password (or drop the peer) on a cache not yet filled.
var ErrSecretsNotSynced = errors.New("waiting for the Secrets of BGP passwords")

// Node annotations of BGP.
const (
	ASNumberAnnotation       = "tern.io/as-number"
	RouteReflectorAnnotation = "tern.io/route-reflector-cluster-id"
	// RouterIDAnnotation sets the node's BGP router ID; without it, the
	// node's IPv4 address, or on an IPv6-only node one derived from its name.
	RouterIDAnnotation = "tern.io/router-id"
)

// bgpConfigurationSpec is the spec of tern.io/v1alpha1 BGPConfiguration.
type bgpConfigurationSpec struct {
	ASNumber               *uint32  `json:"asNumber"`
	NodeToNodeMesh         *bool    `json:"nodeToNodeMesh"`
	ListenPort             *int32   `json:"listenPort"`
	GracefulRestartSeconds *int64   `json:"gracefulRestartSeconds"`
	Communities            []string `json:"communities"`
	Advertise              struct {
		ServiceClusterIPs      []string `json:"serviceClusterIPs"`
		ServiceExternalIPs     []string `json:"serviceExternalIPs"`
		ServiceLoadBalancerIPs []string `json:"serviceLoadBalancerIPs"`
	} `json:"advertise"`
}

// bgpPeerSpec is the spec of tern.io/v1alpha1 BGPPeer.
type bgpPeerSpec struct {
	PeerIP            string                `json:"peerIP"`
	ASNumber          uint32                `json:"asNumber"`
	Node              string                `json:"node"`
	NodeSelector      *metav1.LabelSelector `json:"nodeSelector"`
	PasswordSecretRef *struct {
		Name string `json:"name"`
		Key  string `json:"key"`
	} `json:"passwordSecretRef"`
	HoldTimeSeconds      *int64 `json:"holdTimeSeconds"`
	KeepaliveSeconds     int64  `json:"keepaliveSeconds"`
	EBGPMultihop         uint8  `json:"ebgpMultihop"`
	RouteReflectorClient bool   `json:"routeReflectorClient"`
}

// BGPInput gathers what the BGP plan needs: every node, the cluster's
// BGPConfiguration (defaults without one) and the BGPPeers, with passwords
// from the Secrets of the Watcher's secret namespace. It reads caches only,
// never the API server. Objects that do not convert, and peers whose
// password Secret or key is missing, are reported in errs and left out (a
// peer is never configured without its password); the rest still applies.
// While the API server cannot be reached the caches keep what they had: a
// password stays as last seen.
func (w *Watcher) BGPInput() (nodes []bgp.NodeInfo, cfg bgp.Config, peers []bgp.PeerSpec, errs []error) {
	list, err := w.nodes.List(everything)
	if err != nil {
		return nil, cfg, nil, []error{err}
	}
	for _, n := range list {
		info, err := NodeFromAPI(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bn, err := BGPNode(info)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		nodes = append(nodes, bn)
	}
	cfg = bgp.DefaultConfig()
	switch {
	case w.crdsAbsent.Load():
		return nodes, cfg, nil, errs // no tern CRDs in this cluster: the defaults
	case !w.CustomResourcesSynced():
		return nil, cfg, nil, []error{ErrCustomResourcesNotSynced}
	}
	configs, _ := w.CustomResources(BGPConfigurations)
	for _, u := range configs {
		if u.GetName() != "default" {
			continue
		}
		c, err := bgpConfigFrom(u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cfg = c
	}
	objs, _ := w.CustomResources(BGPPeers)
	for _, u := range objs {
		p, ref, err := bgpPeerFrom(u)
		if err == nil && ref != nil {
			if w.secretsInf != nil && !w.secretsSynced.Load() {
				return nil, cfg, nil, []error{ErrSecretsNotSynced}
			}
			p.Password, err = w.secretValue(ref.Name, ref.Key)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("BGPPeer %s: %w", u.GetName(), err))
			continue
		}
		peers = append(peers, p)
	}
	// Several BGPPeers for one address: the most specific (node, then
	// nodeSelector, then every node) first, then by name; the plan takes the
	// first that selects the node, the same one every pass.
	specificity := func(p bgp.PeerSpec) int {
		switch {
		case p.Node != "":
			return 0
		case p.Selects != nil:
			return 1
		}
		return 2
	}
	slices.SortFunc(peers, func(a, b bgp.PeerSpec) int {
		if c := a.PeerIP.Compare(b.PeerIP); c != 0 {
			return c
		}
		if c := specificity(a) - specificity(b); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return nodes, cfg, peers, errs
}

// BGPNode is a node as the BGP plan sees it.
func BGPNode(n Node) (bgp.NodeInfo, error) {
	out := bgp.NodeInfo{Name: n.Name, IPv4: n.IPv4, IPv6: n.IPv6, PodCIDRs: n.PodCIDRs, Labels: n.Labels}
	if v, ok := n.Annotations[RouterIDAnnotation]; ok {
		id, err := netip.ParseAddr(v)
		if err != nil || !id.Is4() || id.IsUnspecified() {
			return out, fmt.Errorf("node %s: annotation %s=%q is not a router ID (a non-zero 32-bit ID written as an IPv4 address, such as 10.0.0.1)", n.Name, RouterIDAnnotation, v)
		}
		out.RouterID = id
	}
	if v, ok := n.Annotations[ASNumberAnnotation]; ok {
		asn, err := strconv.ParseUint(v, 10, 32)
		if err != nil || asn == 0 {
			return out, fmt.Errorf("node %s: annotation %s=%q is not an AS number (1 to 4294967295)", n.Name, ASNumberAnnotation, v)
		}
		out.ASN = uint32(asn)
	}
	if v, ok := n.Annotations[RouteReflectorAnnotation]; ok {
		id, err := netip.ParseAddr(v)
		if err != nil || !id.Is4() {
			return out, fmt.Errorf("node %s: annotation %s=%q is not a cluster ID (an IPv4 address such as 10.0.0.1)", n.Name, RouteReflectorAnnotation, v)
		}
		out.RRCluster = id
	}
	return out, nil
}

func bgpConfigFrom(u *unstructured.Unstructured) (bgp.Config, error) {
	cfg := bgp.DefaultConfig()
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	var s bgpConfigurationSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &s); err != nil {
		return cfg, fmt.Errorf("BGPConfiguration %s: %w", u.GetName(), err)
	}
	if s.ASNumber != nil {
		cfg.ASN = *s.ASNumber
	}
	if s.NodeToNodeMesh != nil {
		cfg.NodeToNodeMesh = *s.NodeToNodeMesh
	}
	if s.ListenPort != nil {
		cfg.ListenPort = *s.ListenPort
	}
	if s.GracefulRestartSeconds != nil {
		cfg.GracefulRestart = time.Duration(*s.GracefulRestartSeconds) * time.Second
	}
	for _, c := range s.Communities {
		if strings.Count(c, ":") == 2 {
			l, err := parseLargeCommunity(c)
			if err != nil {
				return cfg, fmt.Errorf("BGPConfiguration %s: %w", u.GetName(), err)
			}
			cfg.LargeCommunities = append(cfg.LargeCommunities, l)
			continue
		}
		v, err := parseCommunity(c)
		if err != nil {
			return cfg, fmt.Errorf("BGPConfiguration %s: %w", u.GetName(), err)
		}
		cfg.Communities = append(cfg.Communities, v)
	}
	for _, l := range []struct {
		field string
		in    []string
		out   *[]netip.Prefix
	}{
		{"serviceClusterIPs", s.Advertise.ServiceClusterIPs, &cfg.ServiceClusterIPs},
		{"serviceExternalIPs", s.Advertise.ServiceExternalIPs, &cfg.ServiceExternalIPs},
		{"serviceLoadBalancerIPs", s.Advertise.ServiceLoadBalancerIPs, &cfg.ServiceLoadBalancerIPs},
	} {
		for _, c := range l.in {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return cfg, fmt.Errorf("BGPConfiguration %s: %s %q: %w", u.GetName(), l.field, c, err)
			}
			*l.out = append(*l.out, p.Masked())
		}
	}
	return cfg, nil
}

// parseCommunity reads a standard community "AS:value".
func parseCommunity(c string) (uint32, error) {
	a, b, ok := strings.Cut(c, ":")
	as, err1 := strconv.ParseUint(a, 10, 16)
	v, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("community %q: want AS:value (each 0 to 65535) or a large community AS:value:value (each 0 to 4294967295)", c)
	}
	return uint32(as)<<16 | uint32(v), nil
}

// parseLargeCommunity reads a large community "AS:value:value" (RFC 8092).
func parseLargeCommunity(c string) (bgp.LargeCommunity, error) {
	f := strings.Split(c, ":")
	var n [3]uint32
	for i := range n {
		if len(f) != 3 {
			break
		}
		v, err := strconv.ParseUint(f[i], 10, 32)
		if err != nil {
			return bgp.LargeCommunity{}, fmt.Errorf("large community %q: want AS:value:value, each 0 to 4294967295", c)
		}
		n[i] = uint32(v)
	}
	if len(f) != 3 {
		return bgp.LargeCommunity{}, fmt.Errorf("large community %q: want AS:value:value, each 0 to 4294967295", c)
	}
	return bgp.LargeCommunity{Global: n[0], Local1: n[1], Local2: n[2]}, nil
}

type secretRef struct{ Name, Key string }

func bgpPeerFrom(u *unstructured.Unstructured) (bgp.PeerSpec, *secretRef, error) {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	var s bgpPeerSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &s); err != nil {
		return bgp.PeerSpec{}, nil, err
	}
	ip, err := netip.ParseAddr(s.PeerIP)
	if err == nil && (ip.Zone() != "" || ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast()) {
		err = errors.New("not a unicast address of a peer (no zone, not unspecified, loopback or multicast)")
	}
	if err != nil {
		return bgp.PeerSpec{}, nil, fmt.Errorf("peerIP %q: %w", s.PeerIP, err)
	}
	// An IPv4-mapped IPv6 address is the IPv4 address: an IPv4 session.
	p := bgp.PeerSpec{Name: u.GetName(), PeerIP: ip.Unmap(), ASN: s.ASNumber, Node: s.Node,
		Keepalive: time.Duration(s.KeepaliveSeconds) * time.Second, Multihop: s.EBGPMultihop, RRClient: s.RouteReflectorClient}
	switch {
	case s.HoldTimeSeconds == nil:
	case *s.HoldTimeSeconds == 0:
		p.HoldTime = bgp.NoHoldTime // the CRD's "no keepalives"
	default:
		p.HoldTime = time.Duration(*s.HoldTimeSeconds) * time.Second
	}
	if s.NodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(s.NodeSelector)
		if err != nil {
			return p, nil, fmt.Errorf("nodeSelector: %w", err)
		}
		p.Selects = func(l map[string]string) bool { return sel.Matches(labels.Set(l)) }
	}
	var ref *secretRef
	if s.PasswordSecretRef != nil {
		ref = &secretRef{Name: s.PasswordSecretRef.Name, Key: s.PasswordSecretRef.Key}
	}
	return p, ref, nil
}

// secretValue reads a password from the Secrets cache.
func (w *Watcher) secretValue(name, key string) (string, error) {
	if w.secrets == nil {
		return "", fmt.Errorf("password Secret %s: no namespace for Secrets (--secret-namespace)", name)
	}
	s, err := w.secrets.Secrets(w.secretNamespace).Get(name)
	if err != nil {
		return "", fmt.Errorf("password Secret %s/%s: %w", w.secretNamespace, name, err)
	}
	v, ok := s.Data[key]
	if !ok {
		return "", fmt.Errorf("password Secret %s/%s has no key %q", w.secretNamespace, name, key)
	}
	return string(v), nil
}

// ServiceIPs lists the Services' external and load-balancer IPs, each with
// whether its traffic policy is Local and, then, whether this node has a ready
// endpoint of it.
func (w *Watcher) ServiceIPs() ([]bgp.ServiceIP, error) {
	svcs, err := w.svcs.List(everything)
	if err != nil {
		return nil, err
	}
	var out []bgp.ServiceIP
	for _, svc := range svcs {
		local := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		here := local && w.readyEndpointHere(svc.Namespace, svc.Name)
		add := func(ip string, lb bool) {
			if a, err := netip.ParseAddr(ip); err == nil {
				out = append(out, bgp.ServiceIP{Addr: a, LoadBalancer: lb, Local: local, EndpointHere: here})
			}
		}
		for _, ip := range svc.Spec.ExternalIPs {
			add(ip, false)
		}
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			for _, ing := range svc.Status.LoadBalancer.Ingress {
				add(ing.IP, true)
			}
		}
	}
	slices.SortFunc(out, func(a, b bgp.ServiceIP) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// readyEndpointHere reports whether the service has a ready endpoint on this node.
func (w *Watcher) readyEndpointHere(namespace, service string) bool {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	list, err := w.slices.EndpointSlices(namespace).List(sel)
	if err != nil {
		return false
	}
	for _, es := range list {
		for _, e := range es.Endpoints {
			if e.NodeName != nil && *e.NodeName == w.nodeName && (e.Conditions.Ready == nil || *e.Conditions.Ready) {
				return true
			}
		}
	}
	return false
}

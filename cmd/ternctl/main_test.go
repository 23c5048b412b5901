package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
)

// fakeAgent serves bgp and status on a unix socket, as the agent does.
func fakeAgent(t *testing.T, bgp any, status any) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	answer := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	mux.HandleFunc("GET "+agentapi.PathBGP, answer(bgp))
	mux.HandleFunc("GET "+agentapi.PathStatus, answer(status))
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// dualStack is what the agent of a dual-stack node with two mesh
// neighbours answers: the agent sorts sessions by address, so IPv4 first;
// here they come mixed, as an older or another agent may send them.
var dualStack = agentapi.BGP{
	Enabled: true, ASN: 64512, RouterID: addr("10.40.0.1"), IPv4: addr("10.40.0.1"), IPv6: addr("fd40::1"),
	Peers: []agentapi.BGPPeer{
		{Address: addr("fd40::2"), Family: "ipv6", ASN: 64512, Kind: "mesh", State: "Established", Since: time.Now().Add(-time.Minute), Received: 4, Sent: 1},
		{Address: addr("10.40.0.2"), Family: "ipv4", ASN: 64512, Kind: "mesh", State: "Established", Since: time.Now().Add(-time.Minute), Received: 1, Sent: 2},
		{Address: addr("fd40::3"), Family: "ipv6", ASN: 64513, Kind: "peer", State: "Active"},
		{Address: addr("10.40.0.3"), Family: "ipv4", ASN: 64512, Kind: "mesh", State: "Established", Received: 2, Sent: 2},
	},
	Routes: []agentapi.BGPRoute{
		{Dst: prefix("fd10:244:2::/64"), Family: "ipv6", Gateways: []netip.Addr{addr("fd40::2")}},
		{Dst: prefix("10.244.2.0/24"), Family: "ipv4", Gateways: []netip.Addr{addr("10.40.0.2")}},
		{Dst: prefix("10.244.3.0/24"), Family: "ipv4", Gateways: []netip.Addr{addr("10.40.0.2"), addr("10.40.0.3")}},
	},
	Families: []agentapi.BGPFamily{
		{Family: "ipv4", Configured: 2, Established: 2, Received: 3, Sent: 4, Routes: 2, Announced: 2},
		{Family: "ipv6", Configured: 3, Established: 1, Received: 4, Sent: 1, Routes: 1, Announced: 1},
	},
}

func ternctl(t *testing.T, sock string, args ...string) string {
	t.Helper()
	var out strings.Builder
	if err := run(append([]string{"--socket", sock}, args...), &out); err != nil {
		t.Fatalf("ternctl %v: %v", args, err)
	}
	return out.String()
}

// lines returns the lines of out that match re, in order.
func lines(out, re string) []string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if regexp.MustCompile(re).MatchString(l) {
			got = append(got, strings.Join(strings.Fields(l), " "))
		}
	}
	return got
}

func TestNodeStatusPerFamily(t *testing.T) {
	out := ternctl(t, fakeAgent(t, dualStack, nil), "node", "status")
	for _, want := range []string{
		"BGP: AS 64512, router ID 10.40.0.1\n",
		"addresses: IPv4 10.40.0.1, IPv6 fd40::1\n",
		"IPv4: 2/2 sessions established, 3 prefixes received, 4 sent; 2 announced, 2 routes installed\n",
		"IPv6: 1/3 sessions established, 4 prefixes received, 1 sent; 1 announced, 1 routes installed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("node status lacks %q:\n%s", want, out)
		}
	}
	// The sessions, IPv4 first, each under its family.
	got := lines(out, `^IPv[46]\s+[0-9a-f:.]+\s`)
	for i := range got { // up for a minute, and the moments of the test
		got[i] = regexp.MustCompile(` 1m[0-9]+s `).ReplaceAllString(got[i], " 1m ")
	}
	want := []string{
		"IPv4 10.40.0.2 64512 mesh Established 1m 1 2",
		"IPv4 10.40.0.3 64512 mesh Established - 2 2",
		"IPv6 fd40::2 64512 mesh Established 1m 4 1",
		"IPv6 fd40::3 64513 peer Active - 0 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("sessions:\n%s\nwant:\n%s\nin:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), out)
	}
}

func TestRoutesPerFamily(t *testing.T) {
	sock := fakeAgent(t, dualStack, nil)
	out := ternctl(t, sock, "routes")
	got := lines(out, `.`)
	want := []string{
		"IPv4: 2 routes",
		"DESTINATION VIA",
		"10.244.2.0/24 10.40.0.2",
		"10.244.3.0/24 10.40.0.2, 10.40.0.3", // ECMP: both next hops
		"IPv6: 1 route",
		"DESTINATION VIA",
		"fd10:244:2::/64 fd40::2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("routes:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	// JSON: the list of routes, as before, each with its family.
	var routes []agentapi.BGPRoute
	if err := json.Unmarshal([]byte(ternctl(t, sock, "-o", "json", "routes")), &routes); err != nil || len(routes) != 3 || routes[0].Family != "ipv6" {
		t.Errorf("routes -o json: %+v %v", routes, err)
	}
}

// An IPv6 family with sessions but no routes says so; BGP off says that.
func TestRoutesNoneAndOff(t *testing.T) {
	b := dualStack
	b.Routes = b.Routes[1:]
	out := ternctl(t, fakeAgent(t, b, nil), "routes")
	if !strings.Contains(out, "IPv4: 2 routes\n") || !strings.HasSuffix(out, "\nIPv6: no routes\n") {
		t.Errorf("routes without IPv6 ones:\n%s", out)
	}
	sock := fakeAgent(t, agentapi.BGP{Peers: []agentapi.BGPPeer{}, Routes: []agentapi.BGPRoute{}}, nil)
	for _, cmd := range [][]string{{"routes"}, {"node", "status"}} {
		if out := ternctl(t, sock, cmd...); out != notRunning+"\n" {
			t.Errorf("%v with BGP off: %q", cmd, out)
		}
	}
}

// An agent from before the family fields: sessions and routes still go
// under the family of their address.
func TestPerFamilyFromAnOlderAgent(t *testing.T) {
	old := map[string]any{"enabled": true, "asn": 64512, "routerID": "10.40.0.1",
		"peers": []map[string]any{
			{"address": "fd40::2", "asn": 64512, "kind": "mesh", "state": "Established", "received": 1, "sent": 1},
			{"address": "10.40.0.2", "asn": 64512, "kind": "mesh", "state": "Established", "received": 1, "sent": 1},
		},
		"routes": []map[string]any{{"dst": "fd10:244:2::/64", "gateways": []string{"fd40::2"}}, {"dst": "10.244.2.0/24", "gateways": []string{"10.40.0.2"}}},
	}
	sock := fakeAgent(t, old, nil)
	if got := lines(ternctl(t, sock, "node", "status"), `^IPv[46]\s`); len(got) != 2 || !strings.HasPrefix(got[0], "IPv4 10.40.0.2 ") || !strings.HasPrefix(got[1], "IPv6 fd40::2 ") {
		t.Errorf("sessions of an older agent: %q", got)
	}
	got := lines(ternctl(t, sock, "routes"), `^IPv[46]`)
	if want := []string{"IPv4: 1 route", "IPv6: 1 route"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("routes of an older agent: %q, want %q", got, want)
	}
}

func TestStatusPerFamily(t *testing.T) {
	st := agentapi.Status{Node: "n1", Ready: true, Pools: []agentapi.PoolUsage{
		{CIDR: prefix("fd10:244:1::/64"), Family: "ipv6", Size: 1 << 63, InUse: 3},
		{CIDR: prefix("10.244.1.0/24"), Size: 254, InUse: 3}, // no family: an older agent
	}}
	got := lines(ternctl(t, fakeAgent(t, nil, st), "status"), `^(FAMILY|IPv)`)
	want := []string{
		"FAMILY POD CIDR IN USE SIZE",
		"IPv4 10.244.1.0/24 3 254",
		"IPv6 fd10:244:1::/64 3 >=2^63",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("status:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// policy show labels each chain and set with its family.
func TestPrintPolicyFamilies(t *testing.T) {
	var b strings.Builder
	printPolicy(&b, agentapi.PodPolicy{Pod: "x/a", HostIf: "terna", Ingress: []string{"x/from-b"}, IngressChain: "TERN-PI-x",
		IngressRules: []string{"-m set --match-set tern-v4 src -j RETURN", "-j DROP"}, IngressRulesIPv6: []string{"-m set --match-set tern-v6 src -j RETURN", "-j DROP"},
		Sets: []agentapi.PolicySet{{Name: "tern-v4", Type: "hash:ip", Family: agentapi.FamilyIPv4, Members: 1}, {Name: "tern-v6", Type: "hash:ip", Family: agentapi.FamilyIPv6, Members: 1}}})
	out := b.String()
	for _, w := range []string{"  chain TERN-PI-x (IPv4):\n    -m set --match-set tern-v4 src -j RETURN\n    -j DROP\n",
		"  chain TERN-PI-x (IPv6):\n    -m set --match-set tern-v6 src -j RETURN\n", "tern-v6  IPv6  hash:ip"} {
		if !strings.Contains(out, w) {
			t.Errorf("policy show lacks %q:\n%s", w, out)
		}
	}
}

// policy show lists the tiers in the order they are evaluated, then the
// chain and the tail chain.
func TestPrintPolicyTiers(t *testing.T) {
	var b strings.Builder
	printPolicy(&b, agentapi.PodPolicy{Pod: "x/a", HostIf: "terna",
		AdminIngress: []string{"no-metadata", "tenants"}, Ingress: []string{"x/from-b"}, IngressChain: "TERN-PI-x", IngressTailChain: "TERN-PIT-x",
		IngressRules: []string{"-m set --match-set tern-t src -j DROP", "-g TERN-PIT-x"}, IngressTailRules: []string{"-m set --match-set tern-b src -j RETURN", "-j DROP"},
		AdminEgress: []string{"no-metadata"}, BaselineEgress: []string{"default-deny"}, EgressChain: "TERN-PE-x",
		EgressRules: []string{"-m set --match-set tern-m dst -j DROP", "-j TERN-PET-x"}})
	out := b.String()
	for _, w := range []string{
		"ingress:\n  1. Admin tier: no-metadata, tenants\n  2. NetworkPolicy: isolated by x/from-b (denies what they do not allow)\n" +
			"  chain TERN-PI-x (IPv4):\n    -m set --match-set tern-t src -j DROP\n    -g TERN-PIT-x\n" +
			"  chain TERN-PIT-x (IPv4):\n    -m set --match-set tern-b src -j RETURN\n    -j DROP\n",
		"egress:\n  1. Admin tier: no-metadata\n  2. NetworkPolicy: none selects the pod\n  3. Baseline tier: default-deny\n  then: allowed\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("policy show lacks %q:\n%s", w, out)
		}
	}
}

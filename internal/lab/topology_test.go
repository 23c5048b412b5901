package lab

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (run with -update after checking):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Nodes: 3, Racks: 1, Router: "bird"}, ""},
		{Options{Nodes: 3, Racks: 2, Router: "none"}, "racks need top-of-rack routers"},
		{Options{Nodes: 0, Racks: 1, Router: "bird"}, "--nodes 0"},
		{Options{Nodes: 3, Racks: 1, Router: "quagga"}, `--router "quagga"`},
		{Options{Nodes: 3, Racks: 1, Router: "frr", RouteReflectors: 4}, "--route-reflectors 4"},
		{Options{Nodes: 3, Racks: 1, Router: "bird", Real: true, ProxyMode: "ipvs"}, `--proxy-mode "ipvs": want iptables or nftables`},
		{Options{Nodes: 3, Racks: 1, Router: "bird", ProxyMode: "nftables"}, "light nodes run no kube-proxy"},
		{Options{Nodes: 3, Racks: 1, Router: "bird", Real: true, ProxyMode: "nftables"}, ""},
		{Options{Nodes: 3, Racks: 1, Router: "bird", Real: true, IPFamily: "dual"}, ""},
		{Options{Nodes: 3, Racks: 1, Router: "bird", Real: true, IPFamily: "ipv6"}, ""},
		{Options{Nodes: 3, Racks: 1, Router: "bird", IPFamily: "dual"}, "light nodes are IPv4 only"},
		{Options{Nodes: 3, Racks: 1, Router: "bird", Real: true, IPFamily: "inet6"}, `--ip-family "inet6": want ipv4, ipv6 or dual`},
	} {
		err := tc.o.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}

// TestTopology: addresses, AS numbers and the BGP objects of each kind of lab,
// and the routers' configurations, against golden files. BIRD's own parser
// checks the BIRD configurations when it is installed.
func TestTopology(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"mesh", Options{Nodes: 3, Racks: 1, Router: RouterNone}},
		{"racks", Options{Nodes: 4, Racks: 2, Router: RouterMixed}},
		{"reflectors", Options{Nodes: 5, Racks: 2, Router: RouterBIRD, RouteReflectors: 2}},
		{"racks-dual", Options{Nodes: 4, Racks: 2, Router: RouterMixed, Real: true, IPFamily: Dual}},
		{"racks-ipv6", Options{Nodes: 4, Racks: 2, Router: RouterMixed, Real: true, IPFamily: IPv6}},
		{"reflectors-dual", Options{Nodes: 3, Racks: 1, Router: RouterFRR, RouteReflectors: 1, Real: true, IPFamily: Dual}},
		{"mesh-ipv6", Options{Nodes: 2, Racks: 1, Router: RouterNone, Real: true, IPFamily: IPv6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			var nodes []Node
			for i := 1; i <= tc.o.Nodes; i++ {
				n := tc.o.PlanNode(i, 0)
				nodes = append(nodes, n)
				b.WriteString(strings.Join([]string{n.Name, "rack", itoa(n.Rack), JoinAddrs(n.Addresses()), "gw", JoinAddrs(validAddrs(n.Gateway4, n.Gateway6)), "AS", itoa(int(n.AS)), "reflector", map[bool]string{true: "yes", false: "no"}[n.Reflector], "peers-with-router", map[bool]string{true: "yes", false: "no"}[tc.o.PeersWithRouter(n)]}, " ") + "\n")
			}
			fmt.Fprintf(&b, "control plane %s, cluster %s, services %s, DNS %s\n", JoinAddrs(tc.o.ControlPlaneAddresses()),
				strings.Join(tc.o.ClusterCIDRs(), ","), strings.Join(tc.o.ServiceCIDRs(), ","), tc.o.ClusterDNS())
			b.WriteString("\n" + tc.o.BGPObjects())
			for _, r := range tc.o.Routers() {
				conf := ""
				if r.Kind == RouterBIRD {
					conf = BIRDConfig(r, tc.o.Routers(), tc.o.RouterNodes(r, nodes))
					birdParses(t, conf)
				} else {
					conf = FRRConfig(r, tc.o.Routers(), tc.o.RouterNodes(r, nodes))
				}
				b.WriteString("\n" + conf)
			}
			golden(t, tc.name+".golden", b.String())
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func birdParses(t *testing.T, conf string) {
	t.Helper()
	if _, err := exec.LookPath("bird"); err != nil {
		return
	}
	path := filepath.Join(t.TempDir(), "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bird", "-p", "-c", path).CombinedOutput(); err != nil {
		t.Errorf("bird -p: %v: %s\n%s", err, out, conf)
	}
}

func TestConflistFromConfigMap(t *testing.T) {
	raw, err := os.ReadFile("../../manifests/03-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := conflistFromConfigMap(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js, `"type": "tern"`) || !strings.HasPrefix(js, "{") || !strings.HasSuffix(strings.TrimSpace(js), "}") {
		t.Errorf("conflist:\n%s", js)
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in, pod, proto, err string
		port                uint16
	}{
		{in: "x/a:80", pod: "x/a", port: 80, proto: "TCP"},
		{in: "x/a:53/udp", pod: "x/a", port: 53, proto: "UDP"},
		{in: "x/a", err: "want NAMESPACE/POD:PORT"},
		{in: "x/a:0", err: "port"},
		{in: "x/a:80/icmp", err: "protocol"},
	} {
		pod, port, proto, err := ParseTarget(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || pod != tc.pod || port != tc.port || proto != tc.proto {
			t.Errorf("%s: %s %d %s %v", tc.in, pod, port, proto, err)
		}
	}
}

// The conformance report says what the lab was: every rack with its router
// and node count.
func TestDescribe(t *testing.T) {
	o := Options{Nodes: 4, Racks: 2, Router: RouterMixed, Real: true}
	s := State{Config: Config{Options: o}}
	for i := range 4 {
		s.Nodes = append(s.Nodes, NodeState{Node: o.PlanNode(i+1, 0)})
	}
	for _, r := range o.Routers() {
		s.Routers = append(s.Routers, RouterState{Router: r})
	}
	got := describe(s)
	for _, want := range []string{"--nodes 4 --racks 2 --router mixed", "4 real IPv4 nodes", "--ip-family ipv4", "kube-proxy in iptables mode",
		"rack 1 (2 nodes) behind BIRD", "rack 2 (2 nodes) behind FRR"} {
		if !strings.Contains(got, want) {
			t.Errorf("describe: %q lacks %q", got, want)
		}
	}
	s.Routers, s.Config.Router = nil, RouterNone
	if got := describe(s); !strings.Contains(got, "node-to-node BGP mesh") {
		t.Errorf("describe without routers: %q", got)
	}
}

// Every IPv6 address a lab plans is in its unique-local range, never in the
// machine's uplink fd00::/64.
func TestAddressesIPv6(t *testing.T) {
	o := Options{Nodes: 200, Racks: 50, Router: RouterBIRD, Real: true, IPFamily: Dual}
	lab := netip.MustParsePrefix("fd74:6572:6e00::/40")
	uplink := netip.MustParsePrefix("fd00::/64")
	check := func(what string, a netip.Addr) {
		if !a.Is6() || !lab.Contains(a) || uplink.Contains(a) {
			t.Errorf("%s %s: not in %s", what, a, lab)
		}
	}
	seen := map[netip.Addr]string{}
	uniq := func(what string, a netip.Addr) {
		if o, ok := seen[a]; ok {
			t.Errorf("%s and %s share %s", what, o, a)
		}
		seen[a] = what
	}
	for i := 1; i <= o.Nodes; i++ {
		n := o.PlanNode(i, 0)
		check(n.Name, n.IPv6)
		check(n.Name+" gateway", n.Gateway6)
		uniq(n.Name, n.IPv6)
		if !RackPrefix6(n.Rack).Contains(n.IPv6) || !RackPrefix6(n.Rack).Contains(n.Gateway6) {
			t.Errorf("%s %s (gateway %s) outside its rack's %s", n.Name, n.IPv6, n.Gateway6, RackPrefix6(n.Rack))
		}
	}
	for _, r := range o.Routers() {
		for _, a := range []netip.Addr{r.Address6, r.Spine6, r.Client6} {
			check(fmt.Sprintf("tor%d", r.Rack), a)
			uniq(fmt.Sprintf("tor%d", r.Rack), a)
		}
		if !SpinePrefix6.Contains(r.Spine6) || !ClientPrefix6(r.Rack).Contains(r.Client6) {
			t.Errorf("tor%d: spine %s, client %s", r.Rack, r.Spine6, r.Client6)
		}
	}
	for _, c := range []string{ClusterCIDR6, ServiceCIDR6} {
		p := netip.MustParsePrefix(c)
		if !lab.Contains(p.Addr()) || p.Overlaps(uplink) {
			t.Errorf("%s outside %s", c, lab)
		}
	}
}

package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// The test binary doubles as a node: started with TERN_BGP_HELPER inside a
// node's network namespace, it runs a Speaker and installs what it learns, as
// the agent does. GoBGP opens its sockets from goroutines of its own, so a
// speaker has to run in a process that is in the namespace as a whole.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("TERN_BGP_HELPER"); cfg != "" {
		os.Exit(runHelper(cfg))
	}
	os.Exit(m.Run())
}

type helperConfig struct {
	Global     Global
	Desired    Desired
	Allowed    []netip.Prefix
	Local      []netip.Prefix
	StatusFile string
}

type helperStatus struct {
	Peers  []PeerStatus
	Routes []Route
	Error  string
}

func runHelper(path string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	read := func() (helperConfig, error) {
		var c helperConfig
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		return c, err
	}
	cfg, err := read()
	if err != nil {
		log.Error("config", "err", err)
		return 2
	}
	changed := make(chan struct{}, 1)
	sp, err := Start(ctx, cfg.Global, log, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		log.Error("start", "err", err)
		return 2
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := read(); err == nil {
			cfg = c
		}
		st := helperStatus{}
		errs := []string{}
		if err := sp.Apply(ctx, cfg.Desired); err != nil {
			errs = append(errs, err.Error())
		}
		routes, err := sp.Routes(ctx)
		if err != nil {
			errs = append(errs, err.Error())
		}
		st.Routes = routes
		var learned []dataplane.LearnedRoute
		for _, r := range routes {
			learned = append(learned, dataplane.LearnedRoute{Dst: r.Prefix, Gateways: r.NextHops})
		}
		keep, _ := dataplane.FilterImport(learned, cfg.Allowed, cfg.Local)
		if _, err := dataplane.SyncLearned(keep, true); err != nil {
			errs = append(errs, err.Error())
		}
		st.Peers, _ = sp.Peers(ctx)
		st.Error = strings.Join(errs, "; ")
		if b, err := json.Marshal(st); err == nil {
			_ = os.WriteFile(cfg.StatusFile+".tmp", b, 0o644)
			_ = os.Rename(cfg.StatusFile+".tmp", cfg.StatusFile)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-changed:
		case <-tick.C:
		}
	}
}

// lab is two namespaces joined by a veth: a node and a router.
type lab struct {
	t            *testing.T
	node, router ns.NetNS
	dir          string
	routerLog    func() string
}

func newLab(t *testing.T, nodeAddr, routerAddr string) *lab {
	t.Helper()
	nodetest.RequireRoot(t)
	l := &lab{t: t, dir: t.TempDir(), routerLog: func() string { return "" }}
	var err error
	for _, p := range []*ns.NetNS{&l.node, &l.router} {
		if *p, err = testutils.NewNS(); err != nil {
			t.Fatal(err)
		}
		n := *p
		t.Cleanup(func() { n.Close(); _ = testutils.UnmountNS(n) })
	}
	l.must(l.node, "ip", "link", "set", "lo", "up")
	l.must(l.router, "ip", "link", "set", "lo", "up")
	l.must(l.node, "ip", "link", "add", "nd0", "type", "veth", "peer", "name", "rt0", "netns", filepath.Base(l.router.Path()))
	l.must(l.node, "ip", "addr", "add", nodeAddr, "dev", "nd0")
	l.must(l.node, "ip", "link", "set", "nd0", "up")
	l.must(l.router, "ip", "addr", "add", routerAddr, "dev", "rt0")
	l.must(l.router, "ip", "link", "set", "rt0", "up")
	return l
}

// secondRouter adds a second router namespace, linked to the node by nd1
// (nodeAddr) and tr0 (routerAddr).
func (l *lab) secondRouter(nodeAddr, routerAddr string) ns.NetNS {
	l.t.Helper()
	r, err := testutils.NewNS()
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { r.Close(); _ = testutils.UnmountNS(r) })
	l.must(r, "ip", "link", "set", "lo", "up")
	l.must(l.node, "ip", "link", "add", "nd1", "type", "veth", "peer", "name", "tr0", "netns", filepath.Base(r.Path()))
	l.must(l.node, "ip", "addr", "add", nodeAddr, "dev", "nd1", "nodad")
	l.must(l.node, "ip", "link", "set", "nd1", "up")
	l.must(r, "ip", "addr", "add", routerAddr, "dev", "tr0", "nodad")
	l.must(r, "ip", "link", "set", "tr0", "up")
	return r
}

func (l *lab) cmd(netns ns.NetNS, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--", name}, args...)...)
}

func (l *lab) must(netns ns.NetNS, name string, args ...string) string {
	l.t.Helper()
	out, err := l.cmd(netns, name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (l *lab) log(name string) string {
	b, _ := os.ReadFile(filepath.Join(l.dir, name))
	return string(b)
}

// startNode runs the test binary as a speaker in the node namespace.
func (l *lab) startNode(cfg helperConfig) string {
	l.t.Helper()
	path := filepath.Join(l.dir, "speaker.json")
	l.writeConfig(path, cfg)
	routertest.Start(l.t, l.node, filepath.Join(l.dir, "speaker.log"), []string{"TERN_BGP_HELPER=" + path}, os.Args[0], "-test.run=^$")
	return path
}

// writeConfig gives the speaker its configuration; the status file is
// always the lab's own, so a rewritten config never points it elsewhere.
func (l *lab) writeConfig(path string, cfg helperConfig) {
	l.t.Helper()
	cfg.StatusFile = filepath.Join(l.dir, "status.json")
	b, err := json.Marshal(cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) status() helperStatus {
	var st helperStatus
	b, _ := os.ReadFile(filepath.Join(l.dir, "status.json"))
	_ = json.Unmarshal(b, &st)
	return st
}

func (l *lab) eventually(what string, timeout time.Duration, ok func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: not after %s\nspeaker log:\n%s\nstatus: %+v\nrouter log:\n%s", what, timeout,
				nodetest.Tail(l.log("speaker.log"), 3000), l.status(), nodetest.Tail(l.routerLog(), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSpeakerWithBIRD(t *testing.T) {
	nodetest.RequirePath(t, "/usr/sbin/bird", "BIRD 2 (Debian package bird2)")
	l := newLab(t, "10.210.0.1/30", "10.210.0.2/30")
	// BIRD exports a pod CIDR of "another node" and, as routers do, its
	// connected subnet: tern must install the first and ignore the second.
	birdConf := `router id 10.210.0.2;
protocol device { scan time 1; }
protocol direct { ipv4; interface "rt0"; }
protocol static peerpods { ipv4; route 10.244.6.0/24 blackhole; }
protocol bgp node {
  local 10.210.0.2 as 65001;
  neighbor 10.210.0.1 as 64512;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 { import all; export all; };
}
`
	bird := routertest.StartBIRD(t, l.router, birdConf)
	l.routerLog = bird.Log

	cfg := helperConfig{
		Global: Global{ASN: 64512, RouterID: netip.MustParseAddr("10.210.0.1"), ListenPort: 179},
		Desired: Desired{
			Peers: []Peer{{Address: netip.MustParseAddr("10.210.0.2"), ASN: 65001, Kind: "peer", HoldTime: 9 * time.Second}},
			Announcements: []Announcement{{Prefix: netip.MustParsePrefix("10.244.5.0/24"), NextHop: netip.MustParseAddr("10.210.0.1"),
				Communities: []uint32{64512<<16 | 100}, LargeCommunities: []LargeCommunity{{Global: 64512, Local1: 4000000000, Local2: 7}}}},
		},
		Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Local:   []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24")},
	}
	cfgPath := l.startNode(cfg)

	birdRoute := func(prefix string) string { return bird.Birdc("show", "route", "for", prefix, "all") }
	nodeRoutes := func() string {
		out, _ := l.cmd(l.node, "ip", "route", "show").CombinedOutput()
		return string(out)
	}
	l.eventually("session established", 15*time.Second, func() bool {
		st := l.status()
		return len(st.Peers) == 1 && st.Peers[0].State == "Established"
	})
	l.eventually("BIRD learns the node's pod CIDR", 10*time.Second, func() bool {
		return strings.Contains(birdRoute("10.244.5.0/24"), "via 10.210.0.1")
	})
	if r := birdRoute("10.244.5.0/24"); !strings.Contains(r, "(64512,100)") || !strings.Contains(r, "(64512, 4000000000, 7)") {
		t.Fatalf("BIRD does not see the communities (standard 64512:100, large 64512:4000000000:7):\n%s", r)
	}
	l.eventually("the node installs the other pod CIDR from BIRD", 10*time.Second, func() bool {
		return strings.Contains(nodeRoutes(), "10.244.6.0/24 via 10.210.0.2 dev nd0 proto 96")
	})
	if r := nodeRoutes(); strings.Count(r, "10.210.0.0/30") != 1 || strings.Contains(r, "10.210.0.0/30 via") {
		t.Fatalf("the router's connected subnet was imported, or the kernel's own route touched:\n%s", r)
	}
	st := l.status()
	if st.Peers[0].Received < 2 || st.Peers[0].Sent != 1 || st.Peers[0].ASN != 65001 || st.Peers[0].Since.IsZero() {
		t.Fatalf("peer status %+v", st.Peers[0])
	}

	// The node withdraws its CIDR; BIRD withdraws its own.
	cfg.Desired.Announcements = nil
	l.writeConfig(cfgPath, cfg)
	l.eventually("BIRD forgets the withdrawn CIDR", 10*time.Second, func() bool {
		return !strings.Contains(birdRoute("10.244.5.0/24"), "10.244.5.0/24")
	})
	bird.Birdc("disable", "peerpods")
	l.eventually("the node removes the route BIRD withdrew", 10*time.Second, func() bool {
		return !strings.Contains(nodeRoutes(), "10.244.6.0/24")
	})
	if strings.Contains(l.log("speaker.log"), "level=ERROR") {
		t.Fatalf("speaker errors:\n%s", l.log("speaker.log"))
	}
	_ = fmt.Sprint
}

// Two top-of-rack routers, BIRD and FRR, announce the same prefix with equal
// paths: the node installs one ECMP route through both. FRR exports its
// connected subnet too (redistribute connected): ignored.
func TestSpeakerECMPWithBIRDAndFRR(t *testing.T) {
	nodetest.RequirePath(t, "/usr/sbin/bird", "BIRD 2 (Debian package bird2)")
	l := newLab(t, "10.210.0.1/30", "10.210.0.2/30")
	frrNS := l.secondRouter("10.211.0.1/30", "10.211.0.2/30")

	bird := routertest.StartBIRD(t, l.router, `router id 10.210.0.2;
protocol device { scan time 1; }
protocol static rackpods { ipv4; route 10.244.8.0/24 blackhole; }
protocol bgp node {
  local 10.210.0.2 as 65001;
  neighbor 10.210.0.1 as 64512;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 { import all; export all; };
}
`)
	frr := routertest.StartFRR(t, frrNS, `frr defaults traditional
hostname tor2
log stdout informational
ip route 10.244.8.0/24 blackhole
router bgp 65002
 bgp router-id 10.211.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.211.0.1 remote-as 64512
 neighbor 10.211.0.1 timers connect 1
 address-family ipv4 unicast
  network 10.244.8.0/24
  redistribute connected
 exit-address-family
`)
	l.routerLog = func() string { return bird.Log() + frr.Log() }

	l.startNode(helperConfig{
		Global: Global{ASN: 64512, RouterID: netip.MustParseAddr("10.210.0.1"), ListenPort: 179},
		Desired: Desired{
			Peers: []Peer{
				{Address: netip.MustParseAddr("10.210.0.2"), ASN: 65001, Kind: "peer"},
				{Address: netip.MustParseAddr("10.211.0.2"), ASN: 65002, Kind: "peer"},
			},
			Announcements: []Announcement{{Prefix: netip.MustParsePrefix("10.244.5.0/24"), NextHop: netip.MustParseAddr("10.211.0.1")}},
		},
		Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Local:   []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24")},
	})
	l.eventually("both sessions established", 20*time.Second, func() bool {
		st := l.status()
		return len(st.Peers) == 2 && st.Peers[0].State == "Established" && st.Peers[1].State == "Established"
	})
	l.eventually("one ECMP route through both routers", 10*time.Second, func() bool {
		out, _ := l.cmd(l.node, "ip", "route", "show", "10.244.8.0/24").CombinedOutput()
		s := string(out)
		return strings.Contains(s, "proto 96") && strings.Contains(s, "nexthop via 10.210.0.2 dev nd0") && strings.Contains(s, "nexthop via 10.211.0.2 dev nd1")
	})
	l.eventually("FRR learns the node's pod CIDR", 10*time.Second, func() bool {
		return strings.Contains(frr.Vtysh("show ip bgp 10.244.5.0/24"), "10.211.0.1 from 10.211.0.1")
	})
	if out, _ := l.cmd(l.node, "ip", "route", "show", "proto", "96").CombinedOutput(); strings.Contains(string(out), "10.211.0.0/30") {
		t.Fatalf("FRR's connected subnet was installed:\n%s", out)
	}
	// One router goes: the route narrows to the other.
	bird.Birdc("disable", "node")
	l.eventually("the route narrows to FRR", 10*time.Second, func() bool {
		out, _ := l.cmd(l.node, "ip", "route", "show", "10.244.8.0/24").CombinedOutput()
		return strings.Contains(string(out), "10.244.8.0/24 via 10.211.0.2 dev nd1 proto 96")
	})
}

// IPv6, a session per family: the node peers with BIRD over IPv4 and IPv6
// and with FRR over IPv6. The IPv6 pod CIDR that both routers announce is
// installed as one ECMP route through their global addresses (FRR sends a
// link-local next hop beside the global one); the routers' IPv6 default
// route, a prefix outside the cluster and their connected subnets are not
// installed; no IPv6 route comes over the IPv4 session; both routers learn
// the node's IPv6 pod CIDR with its IPv6 address as next hop.
func TestSpeakerIPv6WithBIRDAndFRR(t *testing.T) {
	nodetest.RequirePath(t, "/usr/sbin/bird", "BIRD 2 (Debian package bird2)")
	l := newLab(t, "10.210.0.1/30", "10.210.0.2/30")
	l.must(l.node, "ip", "addr", "add", "fd74:6572:6e31::1/64", "dev", "nd0", "nodad")
	l.must(l.router, "ip", "addr", "add", "fd74:6572:6e31::2/64", "dev", "rt0", "nodad")
	frrNS := l.secondRouter("fd74:6572:6e32::1/64", "fd74:6572:6e32::2/64")

	bird := routertest.StartBIRD(t, l.router, `router id 10.210.0.2;
protocol device { scan time 1; }
protocol direct { ipv6; interface "rt0"; }
protocol static pods4 { ipv4; route 10.244.8.0/24 blackhole; }
protocol static pods6 { ipv6; route fd74:6572:6e44:8::/64 blackhole; route ::/0 blackhole; route fd74:6572:6e99::/48 blackhole; }
protocol bgp node4 {
  local 10.210.0.2 as 65001;
  neighbor 10.210.0.1 as 64512;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 { import all; export all; };
  ipv6 { import all; export all; };
}
protocol bgp node6 {
  local fd74:6572:6e31::2 as 65001;
  neighbor fd74:6572:6e31::1 as 64512;
  connect retry time 1;
  error wait time 1, 5;
  ipv6 { import all; export all; };
}
`)
	frr := routertest.StartFRR(t, frrNS, `frr defaults traditional
hostname tor2
log stdout informational
ipv6 route fd74:6572:6e44:8::/64 blackhole
router bgp 65002
 bgp router-id 10.211.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor fd74:6572:6e32::1 remote-as 64512
 neighbor fd74:6572:6e32::1 timers connect 1
 address-family ipv6 unicast
  neighbor fd74:6572:6e32::1 activate
  network fd74:6572:6e44:8::/64
  redistribute connected
 exit-address-family
`)
	l.routerLog = func() string { return bird.Log() + frr.Log() }

	l.startNode(helperConfig{
		Global: Global{ASN: 64512, RouterID: netip.MustParseAddr("10.210.0.1"), ListenPort: 179},
		Desired: Desired{
			Peers: []Peer{
				{Address: netip.MustParseAddr("10.210.0.2"), ASN: 65001, Kind: "peer"},
				{Address: netip.MustParseAddr("fd74:6572:6e31::2"), ASN: 65001, Kind: "peer"},
				{Address: netip.MustParseAddr("fd74:6572:6e32::2"), ASN: 65002, Kind: "peer"},
			},
			Announcements: []Announcement{
				{Prefix: netip.MustParsePrefix("10.244.5.0/24"), NextHop: netip.MustParseAddr("10.210.0.1")},
				{Prefix: netip.MustParsePrefix("fd74:6572:6e44:5::/64"), NextHop: netip.MustParseAddr("fd74:6572:6e31::1")},
			},
		},
		Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd74:6572:6e44::/56")},
		Local:   []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24"), netip.MustParsePrefix("fd74:6572:6e44:5::/64")},
	})
	l.eventually("three sessions established", 20*time.Second, func() bool {
		st := l.status()
		up := 0
		for _, p := range st.Peers {
			if p.State == "Established" {
				up++
			}
		}
		return up == 3
	})
	route6 := func(dst string) string {
		out, _ := l.cmd(l.node, "ip", "-6", "route", "show", dst).CombinedOutput()
		return string(out)
	}
	l.eventually("one IPv6 ECMP route through both routers' global addresses", 10*time.Second, func() bool {
		s := route6("fd74:6572:6e44:8::/64")
		return strings.Contains(s, "proto 96") && strings.Contains(s, "nexthop via fd74:6572:6e31::2 dev nd0") &&
			strings.Contains(s, "nexthop via fd74:6572:6e32::2 dev nd1")
	})
	l.eventually("the IPv4 route over the IPv4 session", 10*time.Second, func() bool {
		out, _ := l.cmd(l.node, "ip", "route", "show", "10.244.8.0/24").CombinedOutput()
		return strings.Contains(string(out), "10.244.8.0/24 via 10.210.0.2 dev nd0 proto 96")
	})
	for _, r := range l.status().Routes {
		for _, nh := range r.NextHops {
			if nh.Is4() != r.Prefix.Addr().Is4() || nh.Is4In6() || nh.IsLinkLocalUnicast() {
				t.Errorf("route %s learned with next hop %s: not a global address of its own family", r.Prefix, nh)
			}
		}
	}
	if out, _ := l.cmd(l.node, "ip", "-6", "route", "show", "proto", "96").CombinedOutput(); strings.Contains(string(out), "default") ||
		strings.Contains(string(out), "fd74:6572:6e99::") || strings.Contains(string(out), "fd74:6572:6e31::/64") || strings.Contains(string(out), "fd74:6572:6e32::/64") {
		t.Fatalf("a default route, a foreign prefix or a connected subnet was installed:\n%s", out)
	}
	l.eventually("BIRD learns the IPv6 pod CIDR over the IPv6 session only", 10*time.Second, func() bool {
		r := bird.Birdc("show", "route", "for", "fd74:6572:6e44:5::/64", "all")
		return strings.Contains(r, "node6") && !strings.Contains(r, "node4")
	})
	l.eventually("FRR learns the IPv6 pod CIDR with the next hop announced", 10*time.Second, func() bool {
		return strings.Contains(frr.Vtysh("show bgp ipv6 unicast fd74:6572:6e44:5::/64"), "fd74:6572:6e31::1")
	})
	// The IPv4 session: tern offers IPv4 unicast alone, so BIRD's IPv6
	// channel on it stays down.
	p := bird.Birdc("show", "protocols", "all", "node4")
	_, nb, _ := strings.Cut(p, "Neighbor capabilities")
	if af, _, _ := strings.Cut(nb, "\n      Route refresh"); !strings.HasSuffix(strings.TrimSpace(af), "AF announced: ipv4") ||
		!regexp.MustCompile(`Channel ipv6\s+State:\s+DOWN`).MatchString(p) {
		t.Fatalf("the IPv4 session offers another family than IPv4:\n%s", p)
	}
	// BIRD's IPv6 session goes: the IPv6 route narrows to FRR.
	bird.Birdc("disable", "node6")
	l.eventually("the IPv6 route narrows to FRR", 10*time.Second, func() bool {
		return strings.Contains(route6("fd74:6572:6e44:8::/64"), "fd74:6572:6e44:8::/64 via fd74:6572:6e32::2 dev nd1 proto 96")
	})
	if strings.Contains(l.log("speaker.log"), "level=ERROR") {
		t.Fatalf("speaker errors:\n%s", l.log("speaker.log"))
	}
}

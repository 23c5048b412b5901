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
	// A second link from the node to a second router namespace.
	frrNS, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { frrNS.Close(); _ = testutils.UnmountNS(frrNS) })
	l.must(frrNS, "ip", "link", "set", "lo", "up")
	l.must(l.node, "ip", "link", "add", "nd1", "type", "veth", "peer", "name", "tr0", "netns", filepath.Base(frrNS.Path()))
	l.must(l.node, "ip", "addr", "add", "10.211.0.1/30", "dev", "nd1")
	l.must(l.node, "ip", "link", "set", "nd1", "up")
	l.must(frrNS, "ip", "addr", "add", "10.211.0.2/30", "dev", "tr0")
	l.must(frrNS, "ip", "link", "set", "tr0", "up")

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

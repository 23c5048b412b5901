package cniplugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

const podCIDR = "10.244.7.0/24"

func TestTwoPodsTalkTCPThroughHostRoutes(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	a := n.MustAdd(list, "a")
	b := n.MustAdd(list, "b")

	ipA, ipB := a.IPs()[0], b.IPs()[0]
	pfx := netip.MustParsePrefix(podCIDR)
	if !pfx.Contains(ipA) || !pfx.Contains(ipB) || ipA == ipB {
		t.Fatalf("addresses %s and %s: want two distinct addresses in %s", ipA, ipB, pfx)
	}
	hostIf := hostveth.Name("default", "a", "", "eth0")
	if a.Result.Interfaces[0].Name != hostIf || !hostveth.IsTern(hostIf) || len(hostIf) != 15 {
		t.Fatalf("host interface %q, want %q (tern + 11 hex)", a.Result.Interfaces[0].Name, hostIf)
	}

	// Pod side: eth0 <ip>/32, 169.254.1.1 scope link, default via 169.254.1.1.
	out, err := podOutput(a.NS, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, ipA.String()+"/32") {
		t.Fatalf("pod address: %v %q", err, out)
	}
	routes, _ := podOutput(a.NS, "ip", "-4", "route", "show")
	for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0", "scope link"} {
		if !strings.Contains(routes, want) {
			t.Fatalf("pod routes lack %q:\n%s", want, routes)
		}
	}
	// Host side: no address, proxy ARP, /32 route with protocol 96, blackhole for the CIDR.
	hostRoutes, _ := n.Output("ip", "-4", "route", "show", "proto", "96")
	for _, want := range []string{
		ipA.String() + " dev " + hostIf + " scope link",
		"blackhole " + podCIDR,
	} {
		if !strings.Contains(hostRoutes, want) {
			t.Fatalf("host routes (proto 96) lack %q:\n%s", want, hostRoutes)
		}
	}
	addrs, _ := n.Output("ip", "-o", "addr", "show", "dev", hostIf)
	if strings.Contains(addrs, "inet ") {
		t.Fatalf("host veth has an IPv4 address: %s", addrs)
	}
	if v, _ := n.Output("cat", "/proc/sys/net/ipv4/conf/"+hostIf+"/proxy_arp"); strings.TrimSpace(v) != "1" {
		t.Fatalf("proxy_arp on %s = %q", hostIf, v)
	}
	if v, _ := n.Output("cat", "/proc/sys/net/ipv4/neigh/"+hostIf+"/proxy_delay"); strings.TrimSpace(v) != "0" {
		t.Fatalf("proxy_delay on %s = %q", hostIf, v)
	}

	// TCP both ways, through the node's routes.
	nodetest.Serve(t, b.NS, net.JoinHostPort(ipB.String(), "8080"), "b")
	nodetest.Serve(t, a.NS, net.JoinHostPort(ipA.String(), "8080"), "a")
	got, err := nodetest.Dial(a.NS, net.JoinHostPort(ipB.String(), "8080"))
	if err != nil || !strings.HasPrefix(got, "b from="+ipA.String()+":") {
		t.Fatalf("a -> b: %q, %v (want the answer of b, seeing a's own address)", got, err)
	}
	got, err = nodetest.Dial(b.NS, net.JoinHostPort(ipA.String(), "8080"))
	if err != nil || !strings.HasPrefix(got, "a from="+ipB.String()+":") {
		t.Fatalf("b -> a: %q, %v", got, err)
	}
	// An unassigned address of the pod CIDR goes nowhere (blackhole), it is not
	// sent upstream.
	if _, err := nodetest.Dial(a.NS, net.JoinHostPort(pfx.Addr().Next().Next().Next().Next().Next().String(), "8080")); err == nil {
		t.Fatalf("dial to an unassigned pod address succeeded")
	}
}

func TestMTUFollowsUplinkOrConf(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	// The node's uplink: a dummy interface with a default route and MTU 1400.
	for _, args := range [][]string{
		{"link", "add", "up0", "mtu", "1400", "type", "veth", "peer", "name", "up0peer"},
		{"link", "set", "up0", "up"},
		{"addr", "add", "10.250.9.1/24", "dev", "up0"},
		{"route", "add", "default", "via", "10.250.9.254", "dev", "up0"},
	} {
		if err := n.Exec("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	n.StopAgent() // the agent reads the uplink's MTU as it starts and at each resync
	n.StartAgent()
	p := n.MustAdd(n.ConfList("1.0.0"), "uplink")
	if mtu := linkMTU(t, p.NS, "eth0"); mtu != 1400 {
		t.Fatalf("pod MTU %d, want the uplink's 1400", mtu)
	}
	list := confListWith(t, n, "1.0.0", map[string]any{"mtu": 1380})
	q := n.MustAdd(list, "fixed")
	if mtu := linkMTU(t, q.NS, "eth0"); mtu != 1380 {
		t.Fatalf("pod MTU %d, want the configured 1380", mtu)
	}
}

func TestDelCleansEverythingAndIsIdempotent(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	p := n.MustAdd(list, "gone")
	hostIf := p.Result.Interfaces[0].Name

	if err := n.Del(list, p.RT); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	// When DEL returns, the pod's address is routed nowhere and free; the veth
	// pair goes a moment later (the agent deletes it after answering).
	if out, _ := n.Output("ip", "route", "show", "proto", "96"); strings.Contains(out, p.IPs()[0].String()+" ") {
		t.Fatalf("host route still there after DEL:\n%s", out)
	}
	if err := kubetest.EventuallyErr(5*time.Second, func() error {
		if out, _ := n.Output("ip", "-o", "link", "show"); strings.Contains(out, hostIf) {
			return fmt.Errorf("host veth %s still there after DEL:\n%s", hostIf, out)
		}
		if out, _ := podOutput(p.NS, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
			return fmt.Errorf("eth0 still in the pod after DEL:\n%s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	allocs, err := n.Client().List(context.Background())
	if err != nil || len(allocs) != 0 {
		t.Fatalf("allocations after DEL: %v, %v", allocs, err)
	}
	// Again: nothing to do is success.
	if err := n.Del(list, p.RT); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	// Unknown container, netns that no longer exists.
	rt := *p.RT
	rt.ContainerID = "never-added"
	rt.NetNS = "/var/run/netns/does-not-exist"
	if err := n.Del(list, &rt); err != nil {
		t.Fatalf("DEL of an unknown container with a gone netns: %v", err)
	}
	// The address is free again: a new pod can have it once the pool wraps.
	q := n.MustAdd(list, "next")
	if q.IPs()[0] == p.IPs()[0] {
		t.Fatalf("address %s reused at once; want round-robin", q.IPs()[0])
	}
}

func TestDelAfterNetnsIsGone(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	p := n.MustAdd(list, "vanished")
	// The runtime removed the sandbox first: the veth pair dies with it.
	p.NS.Close()
	if err := unmount(p.NS); err != nil {
		t.Fatal(err)
	}
	if err := n.Del(list, p.RT); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if allocs, _ := n.Client().List(context.Background()); len(allocs) != 0 {
		t.Fatalf("allocation leaked: %v", allocs)
	}
}

func TestCheckDetectsBreakage(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	p := n.MustAdd(list, "checked")
	if err := n.Check(list, p.RT); err != nil {
		t.Fatalf("CHECK of a healthy pod: %v", err)
	}
	ip := p.IPs()[0].String()
	if err := n.Exec("ip", "route", "del", ip+"/32"); err != nil {
		t.Fatal(err)
	}
	err := n.Check(list, p.RT)
	if err == nil || !strings.Contains(err.Error(), "host route "+ip+"/32") {
		t.Fatalf("CHECK after deleting the host route: %v; want it to name the missing route", err)
	}
	q := n.MustAdd(list, "checked2")
	if _, err := podOutput(q.NS, "ip", "route", "del", "default"); err != nil {
		t.Fatal(err)
	}
	err = n.Check(list, q.RT)
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0/0 via 169.254.1.1") {
		t.Fatalf("CHECK after deleting the pod's default route: %v", err)
	}
	r := n.MustAdd(list, "checked3")
	if _, err := podOutput(r.NS, "ip", "neigh", "del", "169.254.1.1", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	err = n.Check(list, r.RT)
	if err == nil || !strings.Contains(err.Error(), "neighbour 169.254.1.1") {
		t.Fatalf("CHECK after deleting the gateway's neighbour entry: %v", err)
	}
	// The agent lost its record: CHECK says so.
	if _, err := n.Client().Release(context.Background(), attachment(q)); err != nil {
		t.Fatal(err)
	}
	err = n.Check(list, q.RT)
	if err == nil || !strings.Contains(err.Error(), "no allocation") {
		t.Fatalf("CHECK without the agent's record: %v", err)
	}
}

func TestGCReleasesLeakedAllocationsAndVeths(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR, "--gc-min-age=0s")
	list := n.ConfList("1.1.0")
	keep := n.MustAdd(list, "keep")
	leak1 := n.MustAdd(list, "leak1")
	leak2 := n.MustAdd(list, "leak2")

	err := gcOnly(n, list, []types.GCAttachment{{ContainerID: keep.RT.ContainerID, IfName: "eth0"}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	allocs, err := n.Client().List(context.Background())
	if err != nil || len(allocs) != 1 || allocs[0].ContainerID != keep.RT.ContainerID {
		t.Fatalf("allocations after GC: %+v, %v; want only %s", allocs, err, keep.RT.ContainerID)
	}
	if err := kubetest.EventuallyErr(5*time.Second, func() error {
		links, _ := n.Output("ip", "-o", "link", "show")
		for _, p := range []*nodetest.Pod{leak1, leak2} {
			if strings.Contains(links, p.Result.Interfaces[0].Name) {
				return fmt.Errorf("GC left host veth %s:\n%s", p.Result.Interfaces[0].Name, links)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if links, _ := n.Output("ip", "-o", "link", "show"); !strings.Contains(links, keep.Result.Interfaces[0].Name) {
		t.Fatalf("GC removed the valid pod's veth")
	}
	if err := n.Check(list, keep.RT); err != nil {
		t.Fatalf("valid pod broken by GC: %v", err)
	}
}

func TestGCSparesYoungAllocations(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR) // default --gc-min-age=1m
	list := n.ConfList("1.1.0")
	p := n.MustAdd(list, "inflight")
	err := gcOnly(n, list, nil)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := n.Check(list, p.RT); err != nil {
		t.Fatalf("a pod attached a moment ago was garbage-collected: %v", err)
	}
}

func TestStatusFollowsTheAgent(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.1.0")
	status := func() error {
		return n.InNode(func() error { return n.CNI.GetStatusNetworkList(context.Background(), list) })
	}
	if err := status(); err != nil {
		t.Fatalf("STATUS with the agent ready: %v", err)
	}
	n.StopAgent()
	err := status()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Msg, "unreachable") {
		t.Fatalf("STATUS with the agent stopped: %v; want code 50, agent unreachable", err)
	}
	n.StartAgent()
	if err := status(); err != nil {
		t.Fatalf("STATUS after restart: %v", err)
	}
}

func TestSpecVersions(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	for i, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		list := n.ConfList(v)
		p := n.MustAdd(list, fmt.Sprintf("v%d", i))
		if len(p.IPs()) != 1 {
			t.Fatalf("%s: result %+v", v, p.Result)
		}
		if err := n.Check(list, p.RT); err != nil {
			t.Fatalf("%s CHECK: %v", v, err)
		}
		if err := n.Del(list, p.RT); err != nil {
			t.Fatalf("%s DEL: %v", v, err)
		}
	}
	// A conflist with a cniVersions list: libcni picks the newest it supports.
	raw := fmt.Sprintf(`{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0"],"name":"tern","plugins":[{"type":"tern","agentSocket":%q}]}`, n.Socket())
	list, err := libcni.NetworkConfFromBytes([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.1.0" {
		t.Fatalf("cniVersions: libcni chose %s", list.CNIVersion)
	}
	n.MustAdd(list, "versions-list")
}

func TestChainedWithDebianPlugins(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	for _, p := range []string{"portmap", "tuning", "bandwidth"} {
		nodetest.RequirePath(t, filepath.Join(nodetest.DebianCNIDir, p), "Debian CNI plugin "+p)
	}
	// The node's own address, for hostPort traffic.
	for _, args := range [][]string{
		{"link", "add", "up0", "type", "veth", "peer", "name", "up0peer"}, {"link", "set", "up0", "up"},
		{"addr", "add", "10.250.0.1/32", "dev", "up0"},
	} {
		if err := n.Exec("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	list := n.ConfList("1.0.0",
		map[string]any{"type": "tuning", "sysctl": map[string]string{"net.ipv4.conf.eth0.rp_filter": "2"}},
		map[string]any{"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000},
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
	)
	podNS := n.NewPodNS()
	rt := nodetest.RuntimeConf("web", podNS)
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}}}
	res, err := n.Add(list, rt)
	if err != nil {
		t.Fatalf("ADD through tern+tuning+bandwidth+portmap: %v\n%s", err, n.AgentLog())
	}
	// prevResult went through every plugin: the final result is still ours.
	if len(res.IPs) != 1 || len(res.Interfaces) < 2 || !hostveth.IsTern(res.Interfaces[0].Name) {
		t.Fatalf("final result lost tern's result: %+v", res)
	}
	podIP := res.IPs[0].Address.IP.String()
	if v, _ := podOutput(podNS, "cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"); strings.TrimSpace(v) != "2" {
		t.Fatalf("tuning did not apply: rp_filter=%q", v)
	}
	if qd, _ := n.Output("tc", "qdisc", "show", "dev", res.Interfaces[0].Name); !strings.Contains(qd, "tbf") {
		t.Fatalf("bandwidth did not shape the host veth: %s", qd)
	}
	nodetest.Serve(t, podNS, net.JoinHostPort(podIP, "80"), "web")
	client := n.MustAdd(n.ConfList("1.0.0"), "client")
	got, err := nodetest.Dial(client.NS, "10.250.0.1:30080")
	if err != nil || !strings.HasPrefix(got, "web") {
		t.Fatalf("hostPort 30080 -> pod:80 through portmap: %q, %v", got, err)
	}
	// CHECK through the chain without portmap: Debian's portmap 1.1.1 fails
	// CHECK for IPv4-only pods on its own (containernetworking/plugins#819).
	noPortmap := *list
	noPortmap.Plugins = list.Plugins[:3]
	if err := n.Check(&noPortmap, rt); err != nil {
		t.Fatalf("CHECK through the chain: %v", err)
	}
	if err := n.Del(list, rt); err != nil {
		t.Fatalf("DEL through the chain: %v", err)
	}
}

func TestNATOutgoing(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR, "--cluster-cidr=10.244.0.0/16")
	// An "outside" host beyond the node's uplink.
	ext := n.NewPodNS()
	for _, c := range [][]string{
		{"link", "add", "up0", "type", "veth", "peer", "name", "ext0", "netns", ext.Path()},
		{"addr", "add", "10.250.1.1/30", "dev", "up0"}, {"link", "set", "up0", "up"},
	} {
		if err := n.Exec("ip", c...); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range [][]string{{"addr", "add", "10.250.1.2/30", "dev", "ext0"}, {"link", "set", "ext0", "up"}} {
		if _, err := podOutput(ext, "ip", c...); err != nil {
			t.Fatal(err)
		}
	}
	nodetest.Serve(t, ext, "10.250.1.2:9000", "ext")
	p := n.MustAdd(n.ConfList("1.0.0"), "egress")
	got, err := nodetest.Dial(p.NS, "10.250.1.2:9000")
	if err != nil || !strings.Contains(got, "from=10.250.1.1:") {
		t.Fatalf("pod -> outside: %q, %v; want the node's address as source (masquerade)", got, err)
	}
	rules, _ := n.Output("iptables-save", "-t", "nat")
	if !strings.Contains(rules, "-A POSTROUTING -m comment --comment \"tern: masquerade pod traffic leaving the cluster\" -j TERN-NAT-OUTGOING") ||
		!strings.Contains(rules, "-d 10.244.0.0/16") {
		t.Fatalf("nat table:\n%s", rules)
	}
}

func TestDualStack(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR+",fd10:244:7::/64")
	list := n.ConfList("1.0.0")
	a := n.MustAdd(list, "a6")
	b := n.MustAdd(list, "b6")
	if len(a.IPs()) != 2 || len(b.IPs()) != 2 {
		t.Fatalf("want one IPv4 and one IPv6 address each: %v %v", a.IPs(), b.IPs())
	}
	for i := range 2 {
		srv := net.JoinHostPort(b.IPs()[i].String(), "8081")
		nodetest.Serve(t, b.NS, srv, "b")
		got, err := nodetest.Dial(a.NS, srv)
		if err != nil || !strings.HasPrefix(got, "b from=") {
			t.Fatalf("a -> %s: %q, %v", srv, got, err)
		}
	}
	if err := n.Check(list, a.RT); err != nil {
		t.Fatalf("CHECK dual-stack: %v", err)
	}
}

func TestRestartDoesNotDisturbPods(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	a := n.MustAdd(list, "ra")
	b := n.MustAdd(list, "rb")
	srv := net.JoinHostPort(b.IPs()[0].String(), "8080")
	nodetest.Serve(t, b.NS, srv, "b")
	before := kernelState(t, n)

	n.KillAgent()
	if _, err := nodetest.Dial(a.NS, srv); err != nil {
		t.Fatalf("pod traffic while the agent is down: %v", err)
	}
	n.StartAgent()
	st, err := n.Client().Status(context.Background())
	if err != nil || st.DataplaneWrites != 0 {
		t.Fatalf("restarted agent wrote %d times to a kernel that was already right (%v)", st.DataplaneWrites, err)
	}
	if after := kernelState(t, n); after != before {
		t.Fatalf("kernel state changed over a restart:\n%s\nfull state before:\n%s", lineDiff(before, after), before)
	}
	if _, err := nodetest.Dial(a.NS, srv); err != nil {
		t.Fatalf("pod traffic after restart: %v", err)
	}
	// The restarted agent still knows both pods.
	for _, p := range []*nodetest.Pod{a, b} {
		if err := n.Check(list, p.RT); err != nil {
			t.Fatalf("CHECK %s after restart: %v", p.Name, err)
		}
	}
}

func TestForeignRulesAndRoutesUntouched(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	// kube-proxy-like rules and a route of another protocol.
	for _, c := range [][]string{
		{"iptables", "-t", "nat", "-N", "KUBE-POSTROUTING"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"},
		{"iptables", "-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE"},
		{"iptables", "-t", "filter", "-A", "FORWARD", "-s", "10.9.9.0/24", "-j", "DROP"},
		{"ip", "route", "add", "blackhole", "10.9.9.0/24", "proto", "static"},
	} {
		if err := n.Exec(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	n.StopAgent()
	n.StartAgent()
	save, _ := n.Output("iptables-save")
	for _, want := range []string{"-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE", "-A FORWARD -s 10.9.9.0/24 -j DROP", "-A POSTROUTING -j KUBE-POSTROUTING"} {
		if !strings.Contains(save, want) {
			t.Fatalf("foreign rule %q gone:\n%s", want, save)
		}
	}
	if r, _ := n.Output("ip", "route", "show", "10.9.9.0/24"); !strings.Contains(r, "blackhole 10.9.9.0/24 proto static") {
		t.Fatalf("foreign route gone: %q", r)
	}
}

// kernelState is what a restart must leave as it is: tern's routes and rules.
func kernelState(t *testing.T, n *nodetest.Node) string {
	t.Helper()
	routes, err := n.Output("ip", "route", "show", "proto", "96")
	if err != nil {
		t.Fatal(err)
	}
	save, err := n.Output("iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(save, "\n") {
		if !strings.HasPrefix(l, "#") {
			// Policy counters ("[packets:bytes]") move with traffic; rules do not.
			keep = append(keep, counters.ReplaceAllString(l, ""))
		}
	}
	return routes + strings.Join(keep, "\n")
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

func confListWith(t *testing.T, n *nodetest.Node, version string, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	plugin := map[string]any{"type": "tern", "agentSocket": n.Socket()}
	for k, v := range extra {
		plugin[k] = v
	}
	raw := fmt.Sprintf(`{"cniVersion":%q,"name":"tern","plugins":[%s]}`, version, mustJSON(t, plugin))
	list, err := libcni.NetworkConfFromBytes([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func linkMTU(t *testing.T, podNS ns.NetNS, name string) int {
	t.Helper()
	var mtu int
	err := podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mtu
}

func podOutput(podNS ns.NetNS, name string, args ...string) (string, error) {
	cmd := nsCommand(podNS, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return string(out), nil
}

// gcOnly sends the plugins a GC, as a runtime that has lost its attachment
// cache would: libcni's own DEL of cached stale attachments must not do the
// plugin's work for it.
func gcOnly(n *nodetest.Node, list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	noCache := libcni.NewCNIConfigWithCacheDir(n.CNI.Path, n.Dir+"/empty-cni-cache", nil)
	return n.InNode(func() error {
		return noCache.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// eventually retries check until it passes or timeout runs out.
func nsCommand(podNS ns.NetNS, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + podNS.Path(), "--", name}, args...)...)
}

func attachment(p *nodetest.Pod) agentapi.Attachment {
	return agentapi.Attachment{ContainerID: p.RT.ContainerID, IfName: p.RT.IfName}
}

func unmount(podNS ns.NetNS) error { return testutils.UnmountNS(podNS) }

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A pod's new sandbox wants the host veth name of the old one. While the old
// sandbox runs, its network is never taken: the new ADD says "try again
// later" and leaves nothing behind. After the old sandbox's DEL it succeeds,
// and a late, repeated DEL of the old sandbox leaves the new one alone.
func TestNewSandboxNeverTakesALiveSandboxsVeth(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	oldNS, newNS := n.NewPodNS(), n.NewPodNS()
	oldRT := nodetest.RuntimeConf("web", oldNS)
	oldRT.ContainerID = "sandbox-1"
	newRT := nodetest.RuntimeConf("web", newNS)
	newRT.ContainerID = "sandbox-2"
	if _, err := n.Add(list, oldRT); err != nil {
		t.Fatal(err)
	}
	_, err := n.Add(list, newRT)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "another running sandbox") {
		t.Fatalf("ADD of a new sandbox while the old one runs: %v; want code 11", err)
	}
	if err := n.Check(list, oldRT); err != nil {
		t.Fatalf("the running sandbox was damaged: %v", err)
	}
	if allocs, _ := n.Client().List(context.Background()); len(allocs) != 1 || allocs[0].ContainerID != "sandbox-1" {
		t.Fatalf("the refused ADD left an allocation: %+v", allocs)
	}
	if err := n.Del(list, oldRT); err != nil {
		t.Fatal(err)
	}
	res, err := n.Add(list, newRT)
	if err != nil {
		t.Fatalf("ADD of the new sandbox after the old one's DEL: %v", err)
	}
	if err := n.Del(list, oldRT); err != nil {
		t.Fatalf("late DEL of the old sandbox: %v", err)
	}
	// The late DEL marked for disposal whatever veth it took for the old
	// sandbox's, before its release request returned: once the agent has
	// deleted every link of the group, nothing it does is still to come.
	if err := kubetest.EventuallyErr(10*time.Second, func() error {
		out, err := n.Output("ip", "-o", "link", "show", "group", strconv.Itoa(hostveth.Group))
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("links waiting for the agent's disposal: %v\n%s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(list, newRT); err != nil {
		t.Fatalf("the new sandbox was damaged by the old one's DEL: %v", err)
	}
	allocs, _ := n.Client().List(context.Background())
	if len(allocs) != 1 || allocs[0].ContainerID != "sandbox-2" || allocs[0].IPs[0].String() != res.IPs[0].Address.IP.String() {
		t.Fatalf("allocations: %+v", allocs)
	}
}

// tern gives a pod one interface. A second tern attachment (a second network,
// as with Multus) is refused with a clear error, and neither takes nor breaks
// the first.
func TestSecondInterfaceInOnePodIsRefusedCleanly(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	list := n.ConfList("1.0.0")
	p := n.MustAdd(list, "multi")
	rt := *p.RT
	rt.IfName = "net1"
	_, err := n.Add(list, &rt)
	if err == nil || !strings.Contains(err.Error(), "one interface") {
		t.Fatalf("ADD net1: %v; want a refusal that says tern gives a pod one interface", err)
	}
	if err := n.Check(list, p.RT); err != nil {
		t.Fatalf("eth0 broken by net1's ADD: %v", err)
	}
	if allocs, _ := n.Client().List(context.Background()); len(allocs) != 1 {
		t.Fatalf("the refused ADD left an allocation: %+v", allocs)
	}
	if out, _ := podOutput(p.NS, "ip", "-o", "link", "show"); strings.Contains(out, "net1") {
		t.Fatalf("the refused ADD left net1 in the pod:\n%s", out)
	}
}

func TestRestartWithNATOffRemovesItsChain(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	if err := n.Exec("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"); err != nil {
		t.Fatal(err)
	}
	n.StopAgent()
	n.Args = append(n.Args, "--nat-outgoing=false")
	n.StartAgent()
	save, _ := n.Output("iptables-save", "-t", "nat")
	if strings.Contains(save, "TERN-NAT-OUTGOING") {
		t.Fatalf("--nat-outgoing=false left tern's NAT chain or its jump:\n%s", save)
	}
	if !strings.Contains(save, "-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE") {
		t.Fatalf("a foreign rule went with it:\n%s", save)
	}
	if f, _ := n.Output("iptables-save", "-t", "filter"); !strings.Contains(f, "-j TERN-FORWARD") {
		t.Fatalf("the forward chain went too:\n%s", f)
	}
}

func TestAgentSocketIsPrivate(t *testing.T) {
	n := nodetest.NewNode(t, podCIDR)
	fi, err := os.Stat(n.Socket())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent socket %s: mode %v, want a socket with 0600", n.Socket(), fi.Mode())
	}
	// A second agent on the same state directory refuses to start, instead of
	// handing out the same addresses twice.
	cmd := n.Command(filepath.Join(n.BinDir, "tern-agent"), "--node-name", "dup", "--pod-cidr", podCIDR,
		"--state-dir", filepath.Join(n.Dir, "state"), "--run-dir", filepath.Join(n.Dir, "run2"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ipam.db") {
		t.Fatalf("second agent on one state dir: %v\n%s", err, out)
	}
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, c := range count {
		switch {
		case c > 0:
			out = append(out, "- "+l)
		case c < 0:
			out = append(out, "+ "+l)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

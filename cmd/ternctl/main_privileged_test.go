package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/tern-net/tern/internal/nodetest"
)

func TestTernctlAgainstARealAgent(t *testing.T) {
	n := nodetest.NewNode(t, "10.244.11.0/24,fd10:244:11::/120")
	p := n.MustAdd(n.ConfList("1.0.0"), "shown")
	if len(p.IPs()) != 2 {
		t.Fatalf("a dual-stack pod got %v", p.IPs())
	}
	ip, ip6 := p.IPs()[0].String(), p.IPs()[1].String()
	var out strings.Builder
	if err := run([]string{"--socket", n.Socket(), "ipam", "show"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), ip+","+ip6) || !strings.Contains(out.String(), "default/shown") ||
		!strings.Contains(out.String(), p.Result.Interfaces[0].Name) {
		t.Fatalf("ipam show lacks the pod:\n%s", out.String())
	}
	out.Reset()
	if err := run([]string{"--socket", n.Socket(), "status"}, &out); err != nil {
		t.Fatal(err)
	}
	// A pool per family, IPv4 first, each with the pod's address in use.
	if !strings.Contains(out.String(), "ready:  yes") ||
		!regexp.MustCompile(`\nIPv4 +10\.244\.11\.0/24 +1 +254\nIPv6 +fd10:244:11::/120 +1 +255\n`).MatchString(out.String()) {
		t.Fatalf("status:\n%s", out.String())
	}
	// Standalone: no BGP, and ternctl says so rather than empty tables.
	for _, cmd := range [][]string{{"node", "status"}, {"routes"}} {
		out.Reset()
		if err := run(append([]string{"--socket", n.Socket()}, cmd...), &out); err != nil || out.String() != notRunning+"\n" {
			t.Fatalf("%v: %v\n%s", cmd, err, out.String())
		}
	}
	out.Reset()
	if err := run([]string{"--socket", n.Socket(), "ipam", "release", p.RT.ContainerID}, &out); err != nil || !strings.Contains(out.String(), ip) {
		t.Fatalf("release: %v %s", err, out.String())
	}
	out.Reset()
	if err := run([]string{"--socket", n.Socket(), "version"}, &out); err != nil || !strings.Contains(out.String(), "tern-agent: dev (node "+n.Name+")") {
		t.Fatalf("version: %v\n%s", err, out.String())
	}
	err := run([]string{"--socket", n.Dir + "/nothing.sock", "status"}, &out)
	if err == nil || !strings.Contains(err.Error(), "is tern-agent running on this node?") {
		t.Fatalf("unreachable agent: %v", err)
	}
	if err := run([]string{"--socket", n.Socket(), "frobnicate"}, &out); err == nil {
		t.Fatal("unknown command accepted")
	}
}

package main

import (
	"strings"
	"testing"

	"github.com/tern-net/tern/internal/nodetest"
)

func TestTernctlAgainstARealAgent(t *testing.T) {
	n := nodetest.NewNode(t, "10.244.11.0/24")
	p := n.MustAdd(n.ConfList("1.0.0"), "shown")
	ip := p.IPs()[0].String()
	var out strings.Builder
	if err := run([]string{"--socket", n.Socket(), "ipam", "show"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), ip) || !strings.Contains(out.String(), "default/shown") ||
		!strings.Contains(out.String(), p.Result.Interfaces[0].Name) {
		t.Fatalf("ipam show lacks the pod:\n%s", out.String())
	}
	out.Reset()
	if err := run([]string{"--socket", n.Socket(), "status"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ready:  yes") || !strings.Contains(out.String(), "10.244.11.0/24  1       254") {
		t.Fatalf("status:\n%s", out.String())
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

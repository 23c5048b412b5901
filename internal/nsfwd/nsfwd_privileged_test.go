package nsfwd_test

import (
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/nsfwd"
)

// A listener in a new namespace reaches a server on the test's loopback,
// which that namespace has no route to; once closed it refuses connections.
func TestListenForwardsOutOfTheNamespace(t *testing.T) {
	netns, here := namespaces(t)
	srv := nodetest.Serve(t, here, "127.0.0.1:0", "hello").String()

	if _, err := nodetest.Dial(netns, srv); err == nil {
		t.Fatalf("%s answers in the new namespace without the forwarder", srv)
	}
	ln, err := nsfwd.Listen(netns.Path(), "127.0.0.1:0", srv)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	for i := range 3 {
		got, err := nodetest.Dial(netns, ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %d through the forwarder: %v", i, err)
		}
		if !strings.HasPrefix(got, "hello from=127.0.0.1:") {
			t.Fatalf("dial %d: got %q, want hello from the forwarder on 127.0.0.1", i, got)
		}
	}
	ln.Close()
	if got, err := nodetest.Dial(netns, ln.Addr().String()); err == nil {
		t.Fatalf("a closed forwarder still answers: %q", got)
	}
}

// A listener on the test's loopback reaches a server in a new namespace's
// loopback, which the test's namespace cannot reach directly.
func TestListenIntoForwardsIntoTheNamespace(t *testing.T) {
	netns, here := namespaces(t)
	srv := nodetest.Serve(t, netns, "127.0.0.1:0", "inside").String()
	if got, err := nodetest.Dial(here, srv); err == nil && strings.HasPrefix(got, "inside") {
		t.Fatalf("%s answers from the test's namespace without the forwarder", srv)
	}
	ln, err := nsfwd.ListenInto("127.0.0.1:0", netns.Path(), srv)
	if err != nil {
		t.Fatalf("ListenInto: %v", err)
	}
	for i := range 3 {
		got, err := nodetest.Dial(here, ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %d through the forwarder: %v", i, err)
		}
		if !strings.HasPrefix(got, "inside from=127.0.0.1:") {
			t.Fatalf("dial %d: got %q, want the server inside", i, got)
		}
	}
	ln.Close()
	if got, err := nodetest.Dial(here, ln.Addr().String()); err == nil {
		t.Fatalf("a closed forwarder still answers: %q", got)
	}
}

// namespaces is a new network namespace with its loopback up, and the
// test's own.
func namespaces(t *testing.T) (netns, here ns.NetNS) {
	t.Helper()
	nodetest.RequireRoot(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	if err := netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("lo up in %s: %v", netns.Path(), err)
	}
	here, err = ns.GetCurrentNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { here.Close() })
	return netns, here
}

package nodetest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/lab"
)

// Forwarder listens on 127.0.0.1 inside a node namespace and forwards each
// connection to an address of the test's own namespace, such as the API
// server on the host's loopback: how an agent in a node namespace reaches the
// control plane without any address or route in the root namespace. Until
// Open is called it closes every connection at once.
type Forwarder struct {
	Addr string // inside the node namespace
	open atomic.Bool
}

// Forward starts a Forwarder in netns to target, stopped at cleanup.
func Forward(t testing.TB, netns ns.NetNS, target string, open bool) *Forwarder {
	t.Helper()
	var ln net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", netns.Path(), err)
	}
	f := &Forwarder{Addr: ln.Addr().String()}
	f.open.Store(open)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !f.open.Load() {
				c.Close()
				continue
			}
			// This goroutine's thread is in the test's namespace: the dial goes there.
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go lab.Pipe(c, up)
		}
	}()
	return f
}

// Open lets connections through.
func (f *Forwarder) Open() { f.open.Store(true) }

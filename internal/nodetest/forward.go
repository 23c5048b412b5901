package nodetest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/nsfwd"
)

// Forwarder listens on 127.0.0.1 inside a node namespace and forwards each
// connection to an address of the test's own namespace, such as the API
// server on the host's loopback: how an agent in a node namespace reaches the
// control plane without any address or route in the root namespace. Until
// Open is called it closes every connection at once; Cut closes it again.
type Forwarder struct {
	Addr string // inside the node namespace
	open atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]net.Conn // the connections being forwarded: client end to server end
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
	f := &Forwarder{Addr: ln.Addr().String(), conns: map[net.Conn]net.Conn{}}
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
			f.mu.Lock()
			f.conns[c] = up
			f.mu.Unlock()
			go func() {
				nsfwd.Pipe(c, up)
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
			}()
		}
	}()
	return f
}

// Open lets connections through.
func (f *Forwarder) Open() { f.open.Store(true) }

// Cut closes the connections being forwarded and refuses new ones until
// Open: the API server becomes unreachable from the node, as when its
// network fails.
func (f *Forwarder) Cut() {
	f.open.Store(false)
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, up := range f.conns {
		c.Close()
		up.Close()
	}
}

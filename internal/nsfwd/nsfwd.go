// Package nsfwd forwards a TCP listener inside a network namespace to an
// address of the caller's namespace, so that nothing is added to the root
// namespace: no address, route or link. The lab's nodes and the tests' node
// namespaces reach the API server on the host's loopback this way.
package nsfwd

import (
	"fmt"
	"io"
	"net"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Listen listens on addr inside the network namespace at netnsPath and
// forwards each connection to target in the caller's own namespace (such as
// the API server on the host's loopback): whatever runs in that namespace
// reaches target without any address or route in the caller's namespace.
// Closing the listener stops the forwarding of new connections.
func Listen(netnsPath, addr, target string) (net.Listener, error) {
	h, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var ln net.Listener
	if err := h.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, netnsPath, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				Pipe(c, up)
			}()
		}
	}()
	return ln, nil
}

// ListenInto is Listen the other way round: it listens on addr in the
// caller's namespace and forwards each connection to target inside the
// network namespace at netnsPath, such as an API server that runs in a
// namespace of its own, reached from the host's loopback.
func ListenInto(addr, netnsPath, target string) (net.Listener, error) {
	h, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		h.Close()
		return nil, err
	}
	go func() {
		defer h.Close()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				var up net.Conn
				err := h.Do(func(ns.NetNS) error {
					var err error
					up, err = net.Dial("tcp", target)
					return err
				})
				if err != nil {
					c.Close()
					return
				}
				Pipe(c, up)
			}()
		}
	}()
	return ln, nil
}

// Pipe copies both ways between a and b until both directions are done
// (each half-closed in turn), then closes both.
func Pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}

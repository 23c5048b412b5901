package nodetest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Serve listens on addr (TCP) inside netns and answers every connection with
// reply and the peer's address ("reply from=IP:PORT"), until the test ends.
func Serve(t testing.TB, netns ns.NetNS, addr, reply string) net.Addr {
	t.Helper()
	return ServeConn(t, netns, addr, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s from=%s\n", reply, c.RemoteAddr())
		_, _ = io.Copy(io.Discard, c)
	})
}

// ServeConn listens on addr (TCP) inside netns until the test ends and
// hands every connection to handle, in a goroutine of its own; the
// connection is closed when handle returns.
func ServeConn(t testing.TB, netns ns.NetNS, addr string, handle func(net.Conn)) net.Addr {
	t.Helper()
	var ln net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, netns.Path(), err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr()
}

// Dial connects from inside netns to addr over TCP and returns the first line
// the server sends.
func Dial(netns ns.NetNS, addr string) (string, error) {
	var line string
	err := netns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}

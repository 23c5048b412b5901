package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// portServer answers on a pod's ports: TCP sends the pod's "namespace/name"
// as its first line and then echoes lines; UDP answers every datagram with
// "namespace/name". The light lab runs one in process for each pod, in the
// pod's namespace; a real lab's pods run one in their container (`tern-lab
// serve`, the image ServerImage).
type portServer struct {
	closers []io.Closer
	wg      sync.WaitGroup
}

// Port is a port a pod serves.
type Port struct {
	Number int32
	Proto  corev1.Protocol
}

func (p Port) String() string {
	return fmt.Sprintf("%d/%s", p.Number, strings.ToLower(string(p.Proto)))
}

// ParsePort reads "80/tcp", "81/udp", "80/sctp" (the protocol in any case).
func ParsePort(s string) (Port, error) {
	num, proto, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if !ok || err != nil || n == 0 {
		return Port{}, fmt.Errorf("port %q: want NUMBER/PROTOCOL, the number 1-65535 (80/tcp)", s)
	}
	p := Port{Number: int32(n), Proto: corev1.Protocol(strings.ToUpper(proto))}
	switch p.Proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		return p, nil
	}
	return Port{}, fmt.Errorf("port %q: the protocol is tcp, udp or sctp, not %q", s, proto)
}

// podPorts are the distinct container ports pod declares.
func podPorts(pod *corev1.Pod) []Port {
	var ports []Port
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			port := Port{p.ContainerPort, p.Protocol}
			if port.Proto == "" {
				port.Proto = corev1.ProtocolTCP
			}
			if !slices.Contains(ports, port) {
				ports = append(ports, port)
			}
		}
	}
	return ports
}

// serve opens every declared port of pod in netns.
func serve(log *slog.Logger, netns string, pod *corev1.Pod) (*portServer, error) {
	h, err := ns.GetNS(NSPath(netns))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var s *portServer
	err = h.Do(func(ns.NetNS) error {
		var err error
		s, err = listenPorts(log, pod.Namespace+"/"+pod.Name, podPorts(pod))
		return err
	})
	return s, err
}

// listenPorts opens ports in the calling thread's network namespace and
// serves them as id. Protocols the kernel lacks (SCTP sockets, on this
// machine) are logged and skipped.
func listenPorts(log *slog.Logger, id string, ports []Port) (*portServer, error) {
	s := &portServer{}
	for _, p := range ports {
		addr := fmt.Sprintf(":%d", p.Number)
		switch p.Proto {
		case corev1.ProtocolTCP:
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				s.close()
				return nil, fmt.Errorf("pod %s: serve %s: %w", id, p, err)
			}
			s.closers = append(s.closers, ln)
			s.wg.Go(func() { serveTCP(ln, id) })
		case corev1.ProtocolUDP:
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				s.close()
				return nil, fmt.Errorf("pod %s: serve %s: %w", id, p, err)
			}
			s.closers = append(s.closers, pc)
			s.wg.Go(func() { serveUDP(pc, id) })
		case corev1.ProtocolSCTP:
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
			if err != nil {
				log.Info("SCTP port not served: the kernel has no SCTP sockets", "pod", id, "port", p.Number, "err", err)
				continue
			}
			unix.Close(fd)
			log.Info("SCTP port not served: Go has no SCTP listener; the rules for it still apply", "pod", id, "port", p.Number)
		}
	}
	return s, nil
}

// ServePod serves ports as the pod id ("namespace/name") in this process's
// network namespace until ctx ends: what a real lab's pods run.
func ServePod(ctx context.Context, log *slog.Logger, id string, ports []Port) error {
	if len(ports) == 0 {
		return errors.New("no port to serve")
	}
	s, err := listenPorts(log, id, ports)
	if err != nil {
		return err
	}
	log.Info("serving", "pod", id, "ports", ports)
	<-ctx.Done()
	s.close()
	return nil
}

func (s *portServer) close() {
	for _, c := range s.closers {
		c.Close()
	}
	s.wg.Wait()
}

// serveTCP serves ln until it is closed; then it closes the connections it
// still has (a connection whose peer a policy cut off would otherwise wait
// in a read for ever) and returns once they are done.
func serveTCP(ln net.Listener, id string) {
	var conns sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				c.Close()
			}()
			if _, err := fmt.Fprintf(c, "%s\n", id); err != nil {
				return
			}
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := fmt.Fprintf(c, "%s\n", sc.Text()); err != nil {
					return
				}
			}
		}()
	}
}

func serveUDP(pc net.PacketConn, id string) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(id+"\n"), from)
	}
}

// ErrNoReply: the probe got no answer in time (dropped, or nothing listening
// on UDP).
var ErrNoReply = errors.New("no reply")

// Probe connects from inside the namespace netns to dst with proto (TCP or
// UDP) and returns the first line the server sent: the serving pod's
// "namespace/name".
func Probe(ctx context.Context, netns string, dst netip.AddrPort, proto string, timeout time.Duration) (string, error) {
	h, err := ns.GetNS(NSPath(netns))
	if err != nil {
		return "", err
	}
	defer h.Close()
	var conn net.Conn
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = h.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: timeout}
		// The dial happens on this (namespaced) thread: Dialer.Control is not
		// needed, a plain DialContext runs the connect syscall here.
		var err error
		conn, err = d.DialContext(ctx, strings.ToLower(proto), dst.String())
		return err
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", ErrNoReply
		}
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var line string
	if strings.EqualFold(proto, "udp") {
		if _, err = conn.Write([]byte("probe\n")); err != nil {
			return "", err
		}
		// One datagram answers.
		buf := make([]byte, 512)
		var n int
		n, err = conn.Read(buf)
		line, _, _ = strings.Cut(string(buf[:n]), "\n")
	} else {
		// A line, or all a server that speaks first and closes (agnhost's
		// serve-hostname) wrote.
		line, err = bufio.NewReader(conn).ReadString('\n')
		if errors.Is(err, io.EOF) && line != "" {
			err = nil
		}
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", ErrNoReply
		}
		return "", err
	}
	return strings.TrimSpace(line), nil
}

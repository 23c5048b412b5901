package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs handler on a unix socket, as the agent does.
func serve(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestClientReadsAnswersOfEveryShape(t *testing.T) {
	big := make([]string, 5000)
	for i := range big {
		big[i] = fmt.Sprintf(`{"containerID":"c%d","ifName":"eth0","hostIf":"tern%d","ips":["10.0.%d.%d"]}`, i, i, i/250, i%250+1)
	}
	bigBody := "[" + strings.Join(big, ",") + "]"
	cases := []struct {
		name    string
		handler http.HandlerFunc
		check   func(t *testing.T, c *Client)
	}{
		{"large answer without Content-Length", func(w http.ResponseWriter, r *http.Request) {
			if r.Proto != "HTTP/1.0" {
				t.Errorf("proto %s", r.Proto)
			}
			w.Write([]byte(bigBody)) // more than net/http buffers: no Content-Length
		}, func(t *testing.T, c *Client) {
			list, err := c.List(context.Background())
			if err != nil || len(list) != 5000 || list[4999].HostIf != "tern4999" {
				t.Fatalf("%d allocations, %v", len(list), err)
			}
		}},
		{"error object", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "44")
			w.WriteHeader(404)
			w.Write([]byte(`{"code":"NotFound","message":"no such pod"}` + "\n"))
		}, func(t *testing.T, c *Client) {
			_, err := c.Get(context.Background(), Attachment{ContainerID: "x", IfName: "eth0"})
			if !IsCode(err, CodeNotFound) || !strings.Contains(err.Error(), "no such pod") {
				t.Fatalf("err %v", err)
			}
		}},
		{"error that is not JSON", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "boom", http.StatusBadGateway)
		}, func(t *testing.T, c *Client) {
			_, err := c.Status(context.Background())
			if !IsCode(err, CodeInternal) || !strings.Contains(err.Error(), "HTTP 502: boom") {
				t.Fatalf("err %v", err)
			}
		}},
		{"request body arrives", func(w http.ResponseWriter, r *http.Request) {
			var a Attachment
			if r.Method != "POST" || r.URL.Path != PathRelease || r.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
			}
			if err := jsonDecode(r, &a); err != nil || a.ContainerID != "abc" {
				t.Errorf("body %+v %v", a, err)
			}
			w.Write([]byte(`{"containerID":"abc","ifName":"eth0","hostIf":"ternabc","ips":["10.1.1.1"]}`))
		}, func(t *testing.T, c *Client) {
			al, err := c.Release(context.Background(), Attachment{ContainerID: "abc", IfName: "eth0"})
			if err != nil || al.IPs[0].String() != "10.1.1.1" {
				t.Fatalf("%+v %v", al, err)
			}
		}},
		{"answer too slow", func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // never answers: the client gives up and closes
		}, func(t *testing.T, c *Client) {
			c.timeout = 50 * time.Millisecond
			_, err := c.Status(context.Background())
			if !errors.Is(err, ErrUnreachable) {
				t.Fatalf("err %v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, NewClient(serve(t, tc.handler), 5*time.Second))
		})
	}
}

func TestClientAgentNotListening(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("err %v", err)
	}
}

// fakeAgent answers Allocate with NotReady until ready is called, then with
// an allocation; it counts the requests.
type fakeAgent struct {
	ready    atomic.Bool
	requests atomic.Int32
}

func (f *fakeAgent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if !f.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"code":"NotReady","message":"waiting for the Kubernetes caches"}`))
		return
	}
	w.Write([]byte(`{"containerID":"c1","ifName":"eth0","hostIf":"ternc1","ips":["10.1.1.1"]}`))
}

var allocReq = AllocateRequest{Attachment: Attachment{ContainerID: "c1", IfName: "eth0"}, HostIf: "ternc1"}

// An ADD that comes while the agent starts waits for it, within the client's
// timeout; an agent that stays not ready is answered NotReady at the bound;
// a request the agent may have acted on is never sent twice.
func TestClientWaitsForStartingAgent(t *testing.T) {
	t.Run("not ready, then ready", func(t *testing.T) {
		f := &fakeAgent{}
		c := NewClient(serve(t, f.serveHTTP), 5*time.Second).WaitForStart()
		go func() {
			for f.requests.Load() < 3 {
				time.Sleep(time.Millisecond)
			}
			f.ready.Store(true)
		}()
		al, err := c.Allocate(context.Background(), allocReq)
		if err != nil || len(al.IPs) != 1 {
			t.Fatalf("%+v %v", al, err)
		}
		if n := f.requests.Load(); n < 4 {
			t.Fatalf("%d requests; want the three NotReady ones and the one that succeeded", n)
		}
	})
	t.Run("stays not ready", func(t *testing.T) {
		f := &fakeAgent{}
		c := NewClient(serve(t, f.serveHTTP), 500*time.Millisecond).WaitForStart()
		t0 := time.Now()
		_, err := c.Allocate(context.Background(), allocReq)
		took := time.Since(t0)
		if !IsCode(err, CodeNotReady) {
			t.Fatalf("err %v; want NotReady", err)
		}
		if took < 300*time.Millisecond || took > 2*time.Second {
			t.Fatalf("gave up after %v; want about the timeout, 500 ms", took)
		}
		if n := f.requests.Load(); n < 3 || n > 6 {
			t.Fatalf("%d requests in 500 ms; want 50, 100, then 200 ms apart", n)
		}
	})
	t.Run("without WaitForStart", func(t *testing.T) {
		f := &fakeAgent{}
		c := NewClient(serve(t, f.serveHTTP), 5*time.Second)
		if _, err := c.Allocate(context.Background(), allocReq); !IsCode(err, CodeNotReady) || f.requests.Load() != 1 {
			t.Fatalf("err %v after %d requests; want NotReady after one", err, f.requests.Load())
		}
	})
	// The agent's socket appears (or a stale one is replaced) while the
	// client waits: nothing was sent before, so it tries again.
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprintf("socket appears, stale file %v", stale), func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "cni.sock")
			if stale {
				ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				ln.SetUnlinkOnClose(false)
				ln.Close() // connections are refused now
			}
			f := &fakeAgent{}
			f.ready.Store(true)
			c := NewClient(sock, 5*time.Second).WaitForStart()
			tried := make(chan error, 2)
			go func() {
				_, err := NewClient(sock, time.Second).Status(context.Background())
				tried <- err
				srv := &http.Server{Handler: http.HandlerFunc(f.serveHTTP)}
				os.Remove(sock)
				ln, err := net.Listen("unix", sock)
				if err != nil {
					tried <- err
					return
				}
				go func() { _ = srv.Serve(ln) }()
				t.Cleanup(func() { srv.Close() })
			}()
			al, err := c.Allocate(context.Background(), allocReq)
			if err != nil || len(al.IPs) != 1 {
				t.Fatalf("%+v %v", al, err)
			}
			if err := <-tried; !starting(err) {
				t.Fatalf("before the agent listened: %v; want a refused or missing socket", err)
			}
		})
	}
	t.Run("no answer in time is not sent again", func(t *testing.T) {
		var requests atomic.Int32
		sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			<-r.Context().Done()
		})
		_, err := NewClient(sock, 200*time.Millisecond).WaitForStart().Allocate(context.Background(), allocReq)
		if !errors.Is(err, ErrUnreachable) || starting(err) || requests.Load() != 1 {
			t.Fatalf("err %v after %d requests; want unreachable after one", err, requests.Load())
		}
	})
}

func jsonDecode(r *http.Request, v any) error { return json.NewDecoder(r.Body).Decode(v) }

func TestFamily(t *testing.T) {
	for _, tc := range []struct {
		addr netip.Addr
		want string
	}{
		{netip.MustParseAddr("10.0.0.1"), FamilyIPv4},
		{netip.MustParseAddr("::ffff:10.0.0.1"), FamilyIPv4}, // IPv4-mapped: the kernel's IPv4
		{netip.MustParseAddr("fd40::1"), FamilyIPv6},
		{netip.MustParseAddr("fe80::1"), FamilyIPv6},
		{netip.Addr{}, ""},
	} {
		if got := Family(tc.addr); got != tc.want {
			t.Errorf("Family(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// The BGP view of a dual-stack node reaches the client with each session,
// route and pool in its family; the answer of an agent from before the
// family fields still decodes, with the families empty.
func TestClientBGPPerFamily(t *testing.T) {
	const dual = `{"enabled":true,"asn":64512,"routerID":"10.40.0.1","ipv4":"10.40.0.1","ipv6":"fd40::1",
		"peers":[{"address":"10.40.0.2","family":"ipv4","asn":64512,"kind":"mesh","state":"Established","received":1,"sent":1},
		         {"address":"fd40::2","family":"ipv6","asn":64512,"kind":"mesh","state":"Active","received":0,"sent":0}],
		"routes":[{"dst":"10.244.2.0/24","family":"ipv4","gateways":["10.40.0.2","10.40.0.3"]},{"dst":"fd10:244:2::/64","family":"ipv6","gateways":["fd40::2"]}],
		"announced":["10.244.1.0/24","fd10:244:1::/64"],
		"families":[{"family":"ipv4","configured":1,"established":1,"received":1,"sent":1,"routes":1,"announced":1},
		            {"family":"ipv6","configured":1,"established":0,"received":0,"sent":0,"routes":1,"announced":1}]}`
	const old = `{"enabled":true,"asn":64512,"routerID":"10.40.0.1","peers":[{"address":"10.40.0.2","asn":64512,"kind":"mesh","state":"Established","received":1,"sent":1}],"routes":[]}`
	body := dual
	c := NewClient(serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != PathBGP {
			t.Errorf("path %s", r.URL.Path)
		}
		w.Write([]byte(body))
	}), 5*time.Second)
	b, err := c.BGP(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b.IPv4 != netip.MustParseAddr("10.40.0.1") || b.IPv6 != netip.MustParseAddr("fd40::1") {
		t.Errorf("addresses %s %s", b.IPv4, b.IPv6)
	}
	if len(b.Peers) != 2 || b.Peers[0].Family != FamilyIPv4 || b.Peers[1].Family != FamilyIPv6 {
		t.Errorf("peers %+v", b.Peers)
	}
	if len(b.Routes) != 2 || b.Routes[0].Family != FamilyIPv4 || len(b.Routes[0].Gateways) != 2 || b.Routes[1].Family != FamilyIPv6 {
		t.Errorf("routes %+v", b.Routes)
	}
	want := []BGPFamily{
		{Family: FamilyIPv4, Configured: 1, Established: 1, Received: 1, Sent: 1, Routes: 1, Announced: 1},
		{Family: FamilyIPv6, Configured: 1, Routes: 1, Announced: 1},
	}
	if !slices.Equal(b.Families, want) || len(b.Announced) != 2 {
		t.Errorf("families %+v, announced %v", b.Families, b.Announced)
	}
	body = old
	b, err = c.BGP(context.Background())
	if err != nil || len(b.Peers) != 1 || b.Peers[0].Family != "" || b.Families != nil || b.IPv6.IsValid() {
		t.Fatalf("an older agent's answer: %+v %v", b, err)
	}
}

package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
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
			time.Sleep(500 * time.Millisecond)
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

func jsonDecode(r *http.Request, v any) error { return json.NewDecoder(r.Body).Decode(v) }

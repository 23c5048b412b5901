package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/ipam"
)

// testAgent is an Agent serving over httptest, with no dataplane.
type testAgent struct {
	a     *Agent
	store *ipam.MemStore
	h     http.Handler
}

func newTestAgent(t *testing.T, cfg Config, store *ipam.MemStore) *testAgent {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = "node-1"
	}
	alloc, err := ipam.New(store, cfg.PodCIDRs)
	if err != nil {
		t.Fatalf("ipam.New: %v", err)
	}
	a := &Agent{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), ipam: alloc, trigger: make(chan struct{}, 1),
		disposal:    make(chan struct{}, 1), // drained only by a test that runs the loop
		deleteVeths: func() (int, error) { return 0, errors.New("a test agent deletes no links") }}
	a.ready = true
	return &testAgent{a: a, store: store, h: a.handler()}
}

func (ta *testAgent) do(t *testing.T, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	ta.h.ServeHTTP(rec, req)
	return rec
}

// decode unmarshals the answer into v, failing on a wrong status.
func decode[T any](t *testing.T, rec *httptest.ResponseRecorder, status int) T {
	t.Helper()
	var v T
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, rec.Body, err)
	}
	return v
}

func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code, msgHas string) {
	t.Helper()
	e := decode[agentapi.Error](t, rec, status)
	if e.Code != code {
		t.Errorf("code = %q, want %q (message %q)", e.Code, code, e.Message)
	}
	if e.Message == "" {
		t.Error("message is empty")
	}
	if !strings.Contains(e.Message, msgHas) {
		t.Errorf("message = %q, want it to contain %q", e.Message, msgHas)
	}
}

func allocBody(cid, ifName, hostIf string) string {
	b, _ := json.Marshal(agentapi.AllocateRequest{
		Attachment: agentapi.Attachment{ContainerID: cid, IfName: ifName},
		Namespace:  "default", Pod: "pod-" + cid, HostIf: hostIf, Netns: "/var/run/netns/" + cid,
	})
	return string(b)
}

var dualStack = Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}}

func TestAllocate(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	before := time.Now().Add(-time.Second)

	first := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", "ternaaaaaaaaaaa")), http.StatusOK)
	if first.ContainerID != "c1" || first.IfName != "eth0" || first.HostIf != "ternaaaaaaaaaaa" ||
		first.Namespace != "default" || first.Pod != "pod-c1" || first.Netns != "/var/run/netns/c1" {
		t.Errorf("allocation = %+v, want the request's attachment and pod", first)
	}
	if len(first.IPs) != 2 || !first.IPs[0].Is4() || !first.IPs[1].Is6() {
		t.Fatalf("IPs = %v, want one IPv4 then one IPv6 address", first.IPs)
	}
	for i, p := range dualStack.PodCIDRs {
		if !p.Contains(first.IPs[i]) || first.IPs[i] == p.Addr() {
			t.Errorf("IP %s is not a host address of %s", first.IPs[i], p)
		}
	}
	if first.Created.Before(before) || first.Created.After(time.Now().Add(time.Second)) {
		t.Errorf("created = %s, want about now", first.Created)
	}
	if ta.store.Len() != 1 {
		t.Errorf("store holds %d allocations, want 1 (durable before the answer)", ta.store.Len())
	}

	again := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", "ternaaaaaaaaaaa")), http.StatusOK)
	if !slices.Equal(again.IPs, first.IPs) || !again.Created.Equal(first.Created) {
		t.Errorf("repeated ADD = %v (%s), want the same %v (%s)", again.IPs, again.Created, first.IPs, first.Created)
	}

	other := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c2", "eth0", "ternbbbbbbbbbbb")), http.StatusOK)
	for _, ip := range other.IPs {
		if slices.Contains(first.IPs, ip) {
			t.Errorf("second pod got %s, already the first pod's", ip)
		}
	}
	// Another interface of the same container is another attachment.
	second := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "net1", "ternccccccccccc")), http.StatusOK)
	if slices.Equal(second.IPs, first.IPs) {
		t.Errorf("c1/net1 got c1/eth0's addresses %v", first.IPs)
	}
}

func TestAllocateConcurrentSameAttachment(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	const n = 16
	var wg sync.WaitGroup
	got := make([][]netip.Addr, n)
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest("POST", agentapi.PathAllocate, strings.NewReader(allocBody("c1", "eth0", "ternaaaaaaaaaaa")))
			rec := httptest.NewRecorder()
			ta.h.ServeHTTP(rec, req)
			codes[i] = rec.Code
			var al agentapi.Allocation
			_ = json.Unmarshal(rec.Body.Bytes(), &al)
			got[i] = al.IPs
		}()
	}
	wg.Wait()
	for i := range n {
		if codes[i] != http.StatusOK {
			t.Fatalf("request %d: status %d", i, codes[i])
		}
		if !slices.Equal(got[i], got[0]) || len(got[i]) != 2 {
			t.Errorf("request %d got %v, request 0 got %v", i, got[i], got[0])
		}
	}
	if ta.store.Len() != 1 {
		t.Errorf("store holds %d allocations, want 1", ta.store.Len())
	}
}

func TestAllocateErrors(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		noPool bool
		setup  func(t *testing.T, ta *testAgent)
		body   string
		status int
		code   string
		msgHas string
	}{
		{name: "malformed JSON", body: `{"containerID":`, status: 400, code: agentapi.CodeBadRequest, msgHas: "malformed request"},
		{name: "not an object", body: `["c1"]`, status: 400, code: agentapi.CodeBadRequest, msgHas: "malformed request"},
		{name: "empty body", body: ``, status: 400, code: agentapi.CodeBadRequest, msgHas: "malformed request"},
		{name: "unknown field", body: `{"containerID":"c1","ifName":"eth0","hostIf":"tern","bogus":1}`, status: 400, code: agentapi.CodeBadRequest, msgHas: "bogus"},
		{name: "wrong type", body: `{"containerID":7,"ifName":"eth0","hostIf":"tern"}`, status: 400, code: agentapi.CodeBadRequest, msgHas: "malformed request"},
		{name: "empty hostIf", body: allocBody("c1", "eth0", ""), status: 400, code: agentapi.CodeBadRequest, msgHas: "hostIf"},
		{name: "empty containerID", body: allocBody("", "eth0", hostveth.Prefix), status: 400, code: agentapi.CodeBadRequest, msgHas: "container ID"},
		{name: "empty ifName", body: allocBody("c1", "", hostveth.Prefix), status: 400, code: agentapi.CodeBadRequest, msgHas: "interface name"},
		{
			name: "pool full",
			cfg:  Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/30")}}, // .1 and .2
			setup: func(t *testing.T, ta *testAgent) {
				for _, c := range []string{"a", "b"} {
					decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody(c, "eth0", hostveth.Prefix+c)), 200)
				}
			},
			body: allocBody("c", "eth0", "ternc"), status: 409, code: agentapi.CodePoolFull, msgHas: "10.244.1.0/30",
		},
		{
			name: "IPv6 pool full refuses the whole attachment",
			cfg:  Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd74:6572:6e00::/127")}}, // ::1 only
			setup: func(t *testing.T, ta *testAgent) {
				decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("a", "eth0", "terna")), 200)
			},
			body: allocBody("c", "eth0", "ternc"), status: 409, code: agentapi.CodePoolFull, msgHas: "fd74:6572:6e00::/127",
		},
		{name: "no pools", noPool: true, body: allocBody("c1", "eth0", hostveth.Prefix), status: 409, code: agentapi.CodePoolFull, msgHas: "no pod CIDR"},
		{
			name:  "not ready",
			setup: func(_ *testing.T, ta *testAgent) { ta.a.ready = false },
			body:  allocBody("c1", "eth0", hostveth.Prefix), status: 503, code: agentapi.CodeNotReady, msgHas: "not programmed",
		},
		{
			name: "not ready after a failed reconcile says why",
			setup: func(_ *testing.T, ta *testAgent) {
				ta.a.ready = false
				ta.a.lastErr = errors.New("iptables-restore: exit status 4")
			},
			body: allocBody("c1", "eth0", hostveth.Prefix), status: 503, code: agentapi.CodeNotReady, msgHas: "exit status 4",
		},
		{
			name:  "store write fails",
			setup: func(_ *testing.T, ta *testAgent) { ta.store.FailPut(errors.New("disk on fire")) },
			body:  allocBody("c1", "eth0", hostveth.Prefix), status: 500, code: agentapi.CodeInternal, msgHas: "disk on fire",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if len(cfg.PodCIDRs) == 0 && !tt.noPool {
				cfg = dualStack
			}
			ta := newTestAgent(t, cfg, ipam.NewMemStore())
			if tt.setup != nil {
				tt.setup(t, ta)
			}
			before := ta.store.Len()
			rec := ta.do(t, "POST", agentapi.PathAllocate, tt.body)
			wantError(t, rec, tt.status, tt.code, tt.msgHas)
			if ta.store.Len() != before {
				t.Errorf("store went from %d to %d allocations on a refused request", before, ta.store.Len())
			}
			if n := len(ta.a.ipam.List()); n != before {
				t.Errorf("allocator holds %d allocations after a refused request, want %d", n, before)
			}
		})
	}
}

func TestAllocateAfterPoolFullFreed(t *testing.T) {
	ta := newTestAgent(t, Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/31")}}, ipam.NewMemStore())
	for _, c := range []string{"a", "b"} {
		decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody(c, "eth0", hostveth.Prefix+c)), 200)
	}
	wantError(t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c", "eth0", "ternc")), 409, agentapi.CodePoolFull, "")
	rel := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathRelease, `{"containerID":"a","ifName":"eth0"}`), 200)
	got := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c", "eth0", "ternc")), 200)
	if !slices.Equal(got.IPs, rel.IPs) {
		t.Errorf("after releasing %v the new pod got %v", rel.IPs, got.IPs)
	}
}

func TestRelease(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	al := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", "ternaaaaaaaaaaa")), 200)

	tests := []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"unknown attachment", `{"containerID":"nope","ifName":"eth0"}`, 404, agentapi.CodeNotFound},
		{"other interface of a known container", `{"containerID":"c1","ifName":"eth1"}`, 404, agentapi.CodeNotFound},
		{"empty attachment", `{}`, 404, agentapi.CodeNotFound},
		{"malformed", `{"containerID":`, 400, agentapi.CodeBadRequest},
		{"unknown field", `{"containerID":"c1","ifName":"eth0","x":1}`, 400, agentapi.CodeBadRequest},
		{"known attachment", `{"containerID":"c1","ifName":"eth0"}`, 200, ""},
		{"released twice", `{"containerID":"c1","ifName":"eth0"}`, 404, agentapi.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := ta.do(t, "POST", agentapi.PathRelease, tt.body)
			if tt.status != 200 {
				wantError(t, rec, tt.status, tt.code, "")
				return
			}
			rel := decode[agentapi.Allocation](t, rec, 200)
			if rel.ContainerID != "c1" || rel.HostIf != "ternaaaaaaaaaaa" || !slices.Equal(rel.IPs, al.IPs) {
				t.Errorf("released = %+v, want %+v", rel, al)
			}
			if ta.store.Len() != 0 {
				t.Errorf("store holds %d allocations after release, want 0", ta.store.Len())
			}
		})
	}
}

func TestReleaseStoreFailureKeepsAllocation(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", hostveth.Prefix)), 200)
	ta.store.FailDelete(errors.New("disk on fire"))
	wantError(t, ta.do(t, "POST", agentapi.PathRelease, `{"containerID":"c1","ifName":"eth0"}`), 500, agentapi.CodeInternal, "disk on fire")
	decode[agentapi.Allocation](t, ta.do(t, "GET", agentapi.PathAllocation+"?containerID=c1&ifName=eth0", ""), 200)
}

func TestGet(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	al := decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", "ternaaaaaaaaaaa")), 200)

	tests := []struct {
		name   string
		query  string
		status int
		code   string
	}{
		{"known", "?containerID=c1&ifName=eth0", 200, ""},
		{"unknown container", "?containerID=c2&ifName=eth0", 404, agentapi.CodeNotFound},
		{"unknown interface", "?containerID=c1&ifName=eth1", 404, agentapi.CodeNotFound},
		{"no container ID", "?ifName=eth0", 400, agentapi.CodeBadRequest},
		{"no interface name", "?containerID=c1", 400, agentapi.CodeBadRequest},
		{"no query", "", 400, agentapi.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := ta.do(t, "GET", agentapi.PathAllocation+tt.query, "")
			if tt.status != 200 {
				wantError(t, rec, tt.status, tt.code, "")
				return
			}
			got := decode[agentapi.Allocation](t, rec, 200)
			if got.ContainerID != al.ContainerID || got.IfName != al.IfName || got.HostIf != al.HostIf ||
				!slices.Equal(got.IPs, al.IPs) || !got.Created.Equal(al.Created) {
				t.Errorf("get = %+v, want %+v", got, al)
			}
		})
	}
}

func TestList(t *testing.T) {
	old := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	seed := ipam.Allocation{
		Key: ipam.Key{ContainerID: "seeded", IfName: "eth0"}, HostIf: "ternseeded00000",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.100")}, Created: old,
	}
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())

	empty := decode[[]agentapi.Allocation](t, ta.do(t, "GET", agentapi.PathAllocations, ""), 200)
	if empty == nil || len(empty) != 0 {
		t.Errorf("empty list = %#v, want [] (not null)", empty)
	}
	if body := strings.TrimSpace(ta.do(t, "GET", agentapi.PathAllocations, "").Body.String()); body != "[]" {
		t.Errorf("empty list body = %s, want []", body)
	}

	ta = newTestAgent(t, dualStack, ipam.NewMemStore(seed))
	decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody("c1", "eth0", "tern1")), 200)
	list := decode[[]agentapi.Allocation](t, ta.do(t, "GET", agentapi.PathAllocations, ""), 200)
	var keys []string
	for _, al := range list {
		keys = append(keys, al.ContainerID+"/"+al.IfName)
	}
	if want := []string{"seeded/eth0", "c1/eth0"}; !slices.Equal(keys, want) {
		t.Errorf("list = %v, want %v (oldest first)", keys, want)
	}
	if len(list) > 0 && (!list[0].Created.Equal(old) || !slices.Equal(list[0].IPs, seed.IPs)) {
		t.Errorf("seeded allocation = %+v, want %+v", list[0], seed)
	}
}

func TestGC(t *testing.T) {
	old := time.Now().Add(-2 * time.Hour).UTC()
	seed := func(cid, network, ip string) ipam.Allocation {
		return ipam.Allocation{
			Key: ipam.Key{ContainerID: cid, IfName: "eth0"}, Network: network, HostIf: hostveth.Prefix + cid,
			IPs: []netip.Addr{netip.MustParseAddr(ip)}, Created: old,
		}
	}
	tests := []struct {
		name   string
		minAge time.Duration
		body   string
		status int
		code   string
		stale  []string // container IDs, oldest first
	}{
		{
			name:   "lists what is not valid, spares the young",
			minAge: time.Hour,
			body:   `{"network":"tern","valid":[{"containerID":"old-valid","ifName":"eth0"}]}`,
			status: 200, stale: []string{"old-stale", "old-legacy"},
		},
		{
			name:   "without a minimum age the young are stale too",
			body:   `{"network":"tern","valid":[{"containerID":"old-valid","ifName":"eth0"}]}`,
			status: 200, stale: []string{"old-stale", "old-legacy", "new-stale"},
		},
		{
			name:   "valid matches container ID and interface",
			minAge: time.Hour,
			body:   `{"network":"tern","valid":[{"containerID":"old-valid","ifName":"eth1"},{"containerID":"old-stale","ifName":"eth0"}]}`,
			status: 200, stale: []string{"old-valid", "old-legacy"},
		},
		{
			name:   "everything valid",
			body:   `{"network":"tern","valid":[{"containerID":"old-valid","ifName":"eth0"},{"containerID":"old-stale","ifName":"eth0"},{"containerID":"new-stale","ifName":"eth0"}]}`,
			status: 200, stale: []string{"old-legacy"}, // stored before allocations carried a network
		},
		{
			name:   "another network's allocations are not judged",
			body:   `{"network":"other","valid":[]}`,
			status: 200, stale: []string{"old-legacy"},
		},
		{name: "malformed", body: `{"valid":[`, status: 400, code: agentapi.CodeBadRequest},
		{name: "unknown field", body: `{"valid":[],"dryRun":true}`, status: 400, code: agentapi.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := dualStack
			cfg.GCMinAge = tt.minAge
			valid, stale := seed("old-valid", "tern", "10.244.1.10"), seed("old-stale", "tern", "10.244.1.11")
			legacy := seed("old-legacy", "", "10.244.1.12") // stored before allocations carried a network
			stale.Created = stale.Created.Add(time.Minute)
			legacy.Created = legacy.Created.Add(2 * time.Minute)
			ta := newTestAgent(t, cfg, ipam.NewMemStore(valid, stale, legacy))
			decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate,
				`{"containerID":"new-stale","ifName":"eth0","network":"tern","hostIf":"ternnew-stale"}`), 200)

			rec := ta.do(t, "POST", agentapi.PathGC, tt.body)
			if tt.status != 200 {
				wantError(t, rec, tt.status, tt.code, "")
			} else {
				resp := decode[agentapi.GCResponse](t, rec, 200)
				if resp.Stale == nil {
					t.Errorf("response %s: stale must be a list, not null", rec.Body)
				}
				var got []string
				for _, al := range resp.Stale {
					got = append(got, al.ContainerID)
					if len(al.IPs) == 0 {
						t.Errorf("stale %s without its IPs", al.ContainerID)
					}
				}
				if !slices.Equal(got, tt.stale) {
					t.Errorf("stale = %v, want %v", got, tt.stale)
				}
			}
			// GC only lists: the release is the plugin's, after the veth is down.
			if n := len(ta.a.ipam.List()); n != 4 {
				t.Errorf("GC released something: %d allocations left, want 4", n)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(ta *testAgent)
		ready     bool
		reasonHas string
		writes    uint64
		allocate  int
		wantInUse []int
		wantSize  []uint64
		wantCIDRs []string
	}{
		{
			name:      "ready",
			setup:     func(ta *testAgent) { ta.a.writes = 7 },
			ready:     true,
			writes:    7,
			allocate:  3,
			wantCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
			wantSize:  []uint64{254, 1 << 63}, // a /64 has 2^64-1 usable addresses, reported capped at 2^63
			wantInUse: []int{3, 3},
		},
		{
			name:      "not ready",
			setup:     func(ta *testAgent) { ta.a.ready = false },
			ready:     false,
			reasonHas: "not programmed",
			wantCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
			wantSize:  []uint64{254, 1 << 63},
			wantInUse: []int{0, 0},
		},
		{
			name: "not ready with an error",
			setup: func(ta *testAgent) {
				ta.a.ready = false
				ta.a.lastErr = errors.New("add route 10.244.1.0/24: file exists")
			},
			ready:     false,
			reasonHas: "file exists",
			wantCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
			wantSize:  []uint64{254, 1 << 63},
			wantInUse: []int{0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newTestAgent(t, Config{NodeName: "worker-3", PodCIDRs: dualStack.PodCIDRs}, ipam.NewMemStore())
			for i := range tt.allocate {
				decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody(fmt.Sprint("c", i), "eth0", fmt.Sprint(hostveth.Prefix, i))), 200)
			}
			tt.setup(ta)
			st := decode[agentapi.Status](t, ta.do(t, "GET", agentapi.PathStatus, ""), 200)
			if st.Node != "worker-3" {
				t.Errorf("node = %q, want worker-3", st.Node)
			}
			if st.Ready != tt.ready {
				t.Errorf("ready = %t, want %t", st.Ready, tt.ready)
			}
			if tt.ready && st.Reason != "" {
				t.Errorf("reason = %q, want none when ready", st.Reason)
			}
			if !strings.Contains(st.Reason, tt.reasonHas) {
				t.Errorf("reason = %q, want it to contain %q", st.Reason, tt.reasonHas)
			}
			if st.DataplaneWrites != tt.writes {
				t.Errorf("dataplaneWrites = %d, want %d", st.DataplaneWrites, tt.writes)
			}
			var cidrs []string
			for _, p := range st.PodCIDRs {
				cidrs = append(cidrs, p.String())
			}
			if !slices.Equal(cidrs, tt.wantCIDRs) {
				t.Errorf("podCIDRs = %v, want %v", cidrs, tt.wantCIDRs)
			}
			if len(st.Pools) != len(tt.wantCIDRs) {
				t.Fatalf("pools = %+v, want one per pod CIDR", st.Pools)
			}
			for i, p := range st.Pools {
				if p.CIDR.String() != tt.wantCIDRs[i] || p.Size != tt.wantSize[i] || p.InUse != tt.wantInUse[i] {
					t.Errorf("pools[%d] = %+v, want %s size %d in use %d", i, p, tt.wantCIDRs[i], tt.wantSize[i], tt.wantInUse[i])
				}
				// One pool per family, each saying which.
				if want := []string{agentapi.FamilyIPv4, agentapi.FamilyIPv6}[i]; p.Family != want {
					t.Errorf("pools[%d] (%s): family %q, want %q", i, p.CIDR, p.Family, want)
				}
			}
		})
	}
}

func TestMethodsAndPaths(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	tests := []struct {
		method, path string
		status       int
	}{
		{"GET", agentapi.PathStatus, 200},
		{"POST", agentapi.PathStatus, http.StatusMethodNotAllowed},
		{"GET", agentapi.PathAllocate, http.StatusMethodNotAllowed},
		{"GET", agentapi.PathRelease, http.StatusMethodNotAllowed},
		{"DELETE", agentapi.PathAllocations, http.StatusMethodNotAllowed},
		{"GET", agentapi.PathGC, http.StatusMethodNotAllowed},
		{"GET", "/v2/status", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			if rec := ta.do(t, tt.method, tt.path, ""); rec.Code != tt.status {
				t.Errorf("status = %d, want %d", rec.Code, tt.status)
			}
		})
	}
}

// TestBGPPerFamily: /v1/bgp of a dual-stack node gives its addresses, each
// session and route under its family, and a summary per family; before the
// first BGP pass it says BGP is off, with no families.
func TestBGPPerFamily(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	off := decode[agentapi.BGP](t, ta.do(t, "GET", agentapi.PathBGP, ""), 200)
	if off.Enabled || len(off.Families) != 0 {
		t.Errorf("before any pass: %+v", off)
	}
	ta.a.bgpView = bgpView(dualStackPass())
	b := decode[agentapi.BGP](t, ta.do(t, "GET", agentapi.PathBGP, ""), 200)
	if b.IPv4.String() != "10.40.0.1" || b.IPv6.String() != "fd40::1" || b.RouterID.String() != "10.40.0.1" {
		t.Errorf("addresses %s %s, router ID %s", b.IPv4, b.IPv6, b.RouterID)
	}
	var peers, routes []string
	for _, p := range b.Peers {
		peers = append(peers, p.Family+" "+p.Address.String())
	}
	for _, r := range b.Routes {
		routes = append(routes, fmt.Sprint(r.Family, " ", r.Dst, " ", r.Gateways))
	}
	if want := []string{"ipv4 10.40.0.2", "ipv4 10.40.0.3", "ipv6 fd40::2", "ipv6 fd40::3"}; !slices.Equal(peers, want) {
		t.Errorf("peers %v, want %v", peers, want)
	}
	if want := []string{"ipv4 10.244.2.0/24 [10.40.0.2]", "ipv4 10.244.3.0/24 [10.40.0.2 10.40.0.3]", "ipv6 fd10:244:2::/64 [fd40::2]"}; !slices.Equal(routes, want) {
		t.Errorf("routes %v, want %v", routes, want)
	}
	if len(b.Families) != 2 || b.Families[0] != (agentapi.BGPFamily{Family: "ipv4", Configured: 2, Established: 2, Received: 3, Sent: 4, Routes: 2, Announced: 2}) ||
		b.Families[1] != (agentapi.BGPFamily{Family: "ipv6", Configured: 3, Established: 1, Received: 4, Sent: 1, Routes: 1, Announced: 1}) {
		t.Errorf("families %+v", b.Families)
	}
}

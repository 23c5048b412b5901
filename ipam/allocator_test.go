package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var errInjected = errors.New("injected store failure")

// failingLoad is an empty store whose Load fails with err.
func failingLoad(err error) *MemStore {
	s := NewMemStore()
	s.FailLoad(err)
	return s
}

// epoch is the first time the test clock returns.
var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// newTestAllocator returns an allocator over store and pools whose clock starts
// at epoch and advances one second per allocation.
func newTestAllocator(t *testing.T, store Store, pools ...string) *Allocator {
	t.Helper()
	a, err := New(store, prefixes(t, pools...))
	if err != nil {
		t.Fatalf("New(%v): %v", pools, err)
	}
	var ticks atomic.Int64
	a.now = func() time.Time {
		return epoch.Add(time.Duration(ticks.Add(1)-1) * time.Second)
	}
	return a
}

func prefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatalf("parse prefix %q: %v", s, err)
		}
		out = append(out, p)
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func key(id string) Key { return Key{ContainerID: id, IfName: "eth0"} }

func req(id string) Request { return Request{Key: key(id)} }

// sameAllocation reports whether a and b hold the same data; Created is
// compared as an instant.
func sameAllocation(a, b Allocation) bool {
	return a.Key == b.Key && a.Namespace == b.Namespace && a.Pod == b.Pod &&
		a.HostIf == b.HostIf && a.Netns == b.Netns &&
		slices.Equal(a.IPs, b.IPs) && a.Created.Equal(b.Created)
}

func TestKeyValidate(t *testing.T) {
	tests := []struct {
		name    string
		key     Key
		wantErr bool
	}{
		{"complete", Key{ContainerID: "c1", IfName: "eth0"}, false},
		{"empty container ID", Key{IfName: "eth0"}, true},
		{"empty interface name", Key{ContainerID: "c1"}, true},
		{"both empty", Key{}, true},
		{"runtime-style ID", Key{ContainerID: "cnitool-8f2a_1.b", IfName: "net1"}, false},
		{"container ID too long", Key{ContainerID: strings.Repeat("a", 1025), IfName: "eth0"}, true},
		{"NUL in container ID", Key{ContainerID: "a\x00b", IfName: "eth0"}, true},
		{"slash in container ID", Key{ContainerID: "a/b", IfName: "eth0"}, true},
		{"interface name of 15", Key{ContainerID: "c1", IfName: "abcdefghijklmno"}, false},
		{"interface name of 16", Key{ContainerID: "c1", IfName: "abcdefghijklmnop"}, true},
		{"slash in interface name", Key{ContainerID: "c1", IfName: "eth/0"}, true},
		{"NUL in interface name", Key{ContainerID: "c1", IfName: "eth\x000"}, true},
		{"dot interface name", Key{ContainerID: "c1", IfName: "."}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.key.Validate()
			if got := errors.Is(err, ErrInvalidKey); got != tt.wantErr {
				t.Fatalf("Validate() = %v, want ErrInvalidKey: %v", err, tt.wantErr)
			}
		})
	}
}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name  string
		pools []string
		want  []netip.Addr
	}{
		{"IPv4", []string{"10.244.1.0/24"}, addrs("10.244.1.1")},
		{"IPv6", []string{"fd00:10:244:1::/64"}, addrs("fd00:10:244:1::1")},
		{"dual stack", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, addrs("10.244.1.1", "fd00:10:244:1::1")},
		{"dual stack, IPv6 first", []string{"fd00:10:244:1::/64", "10.244.1.0/24"}, addrs("fd00:10:244:1::1", "10.244.1.1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, tt.pools...)
			r := Request{
				Key:       Key{ContainerID: "c1", IfName: "eth0"},
				Namespace: "default", Pod: "web-0", HostIf: "tern1234", Netns: "/var/run/netns/x",
			}
			got, err := a.Allocate(r)
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			want := Allocation{
				Key: r.Key, Namespace: r.Namespace, Pod: r.Pod, HostIf: r.HostIf, Netns: r.Netns,
				IPs: tt.want, Created: epoch,
			}
			if !sameAllocation(got, want) {
				t.Fatalf("Allocate = %+v, want %+v", got, want)
			}
			stored, ok := store.Get(r.Key)
			if !ok || !sameAllocation(stored, want) {
				t.Fatalf("store holds %+v (present %v), want %+v", stored, ok, want)
			}
			fromGet, err := a.Get(r.Key)
			if err != nil || !sameAllocation(fromGet, want) {
				t.Fatalf("Get = %+v, %v; want %+v", fromGet, err, want)
			}
			if list := a.List(); len(list) != 1 || !sameAllocation(list[0], want) {
				t.Fatalf("List = %+v, want [%+v]", list, want)
			}
		})
	}
}

func TestAllocateSameKeyReturnsSameAddresses(t *testing.T) {
	tests := []struct {
		name  string
		pools []string
	}{
		{"IPv4", []string{"10.0.0.0/24"}},
		{"dual stack", []string{"10.0.0.0/24", "fd74:6572:6e00::/120"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, tt.pools...)
			first, err := a.Allocate(req("c1"))
			if err != nil {
				t.Fatalf("first Allocate: %v", err)
			}
			again, err := a.Allocate(req("c1"))
			if err != nil {
				t.Fatalf("second Allocate: %v", err)
			}
			if !sameAllocation(first, again) {
				t.Fatalf("repeated Allocate = %+v, want %+v", again, first)
			}
			if n, _ := store.Counts(); n != 1 {
				t.Fatalf("store saw %d Puts, want 1", n)
			}
			other, err := a.Allocate(req("c2"))
			if err != nil {
				t.Fatalf("Allocate c2: %v", err)
			}
			for _, ip := range other.IPs {
				if slices.Contains(first.IPs, ip) {
					t.Fatalf("c2 got %s, already held by c1 (%v)", ip, first.IPs)
				}
			}
			// Same container, other interface: a different attachment.
			eth1, err := a.Allocate(Request{Key: Key{ContainerID: "c1", IfName: "eth1"}})
			if err != nil {
				t.Fatalf("Allocate c1/eth1: %v", err)
			}
			if slices.Equal(eth1.IPs, first.IPs) {
				t.Fatalf("c1/eth1 got the addresses of c1/eth0: %v", eth1.IPs)
			}
		})
	}
}

func TestAllocateSkipsNetworkAndBroadcast(t *testing.T) {
	tests := []struct {
		name string
		pool string
		want []netip.Addr // every address the pool hands out, in order
	}{
		{"IPv4 /30", "10.0.0.0/30", addrs("10.0.0.1", "10.0.0.2")},
		{"IPv4 /29", "10.0.0.8/29", addrs("10.0.0.9", "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14")},
		{"IPv4 /31 point-to-point", "10.0.0.4/31", addrs("10.0.0.4", "10.0.0.5")},
		{"IPv4 /32", "10.0.0.7/32", addrs("10.0.0.7")},
		{"IPv6 /126", "fd74:6572:6e00::/126", addrs("fd74:6572:6e00::1", "fd74:6572:6e00::2", "fd74:6572:6e00::3")},
		{"IPv6 /127", "fd74:6572:6e00::/127", addrs("fd74:6572:6e00::1")},
		{"IPv6 /128", "fd74:6572:6e00::9/128", addrs("fd74:6572:6e00::9")},
		{"IPv6 at top of space", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126",
			addrs("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAllocator(t, NewMemStore(), tt.pool)
			var got []netip.Addr
			for i := range tt.want {
				al, err := a.Allocate(req(fmt.Sprintf("c%d", i)))
				if err != nil {
					t.Fatalf("Allocate #%d: %v (got so far %v)", i, err, got)
				}
				got = append(got, al.IPs...)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("allocated %v, want %v", got, tt.want)
			}
			_, err := a.Allocate(req("one-too-many"))
			if !errors.Is(err, ErrPoolFull) {
				t.Fatalf("Allocate past %d addresses: err = %v, want ErrPoolFull", len(tt.want), err)
			}
			if u := a.Usage(); len(u) != 1 || u[0].Size != uint64(len(tt.want)) || u[0].InUse != len(tt.want) {
				t.Fatalf("Usage = %+v, want Size = InUse = %d", u, len(tt.want))
			}
		})
	}
}

func TestAllocateRoundRobin(t *testing.T) {
	type step struct {
		release bool   // release id instead of allocating it
		id      string // container ID
		want    string // address expected from Allocate
	}
	tests := []struct {
		name  string
		pool  string
		steps []step
	}{
		{
			name: "released address not reused while others are free",
			pool: "10.0.0.0/29",
			steps: []step{
				{id: "a", want: "10.0.0.1"},
				{id: "b", want: "10.0.0.2"},
				{release: true, id: "a"},
				{id: "c", want: "10.0.0.3"},
				{id: "a", want: "10.0.0.4"},
			},
		},
		{
			name: "wraps around to the freed address",
			pool: "10.0.0.0/29",
			steps: []step{
				{id: "a", want: "10.0.0.1"},
				{id: "b", want: "10.0.0.2"},
				{id: "c", want: "10.0.0.3"},
				{release: true, id: "b"},
				{id: "d", want: "10.0.0.4"},
				{id: "e", want: "10.0.0.5"},
				{id: "f", want: "10.0.0.6"},
				{id: "g", want: "10.0.0.2"},
			},
		},
		{
			name: "only free address is the one just released",
			pool: "10.0.0.0/30",
			steps: []step{
				{id: "a", want: "10.0.0.1"},
				{id: "b", want: "10.0.0.2"},
				{release: true, id: "b"},
				{id: "c", want: "10.0.0.2"},
			},
		},
		{
			name: "IPv6 wrap skips ::0",
			pool: "fd74:6572:6e00::/126",
			steps: []step{
				{id: "a", want: "fd74:6572:6e00::1"},
				{id: "b", want: "fd74:6572:6e00::2"},
				{id: "c", want: "fd74:6572:6e00::3"},
				{release: true, id: "a"},
				{id: "d", want: "fd74:6572:6e00::1"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAllocator(t, NewMemStore(), tt.pool)
			for i, s := range tt.steps {
				if s.release {
					if _, err := a.Release(key(s.id)); err != nil {
						t.Fatalf("step %d: Release(%s): %v", i, s.id, err)
					}
					continue
				}
				al, err := a.Allocate(req(s.id))
				if err != nil {
					t.Fatalf("step %d: Allocate(%s): %v", i, s.id, err)
				}
				if want := addrs(s.want); !slices.Equal(al.IPs, want) {
					t.Fatalf("step %d: Allocate(%s) = %v, want %v", i, s.id, al.IPs, want)
				}
			}
		})
	}
}

func TestAllocatePoolFull(t *testing.T) {
	tests := []struct {
		name      string
		pools     []string
		fill      int    // allocations that succeed first
		wantCIDR  string // named in the error
		wantInUse []int  // per pool, after the failed Allocate
	}{
		{"IPv4 /32", []string{"10.0.0.5/32"}, 1, "10.0.0.5/32", []int{1}},
		{"IPv4 /30", []string{"192.168.7.0/30"}, 2, "192.168.7.0/30", []int{2}},
		{"IPv6 /128", []string{"fd74:6572:6e00::5/128"}, 1, "fd74:6572:6e00::5/128", []int{1}},
		// The IPv4 address picked before the IPv6 pool turned out full must be
		// given back.
		{"dual stack, IPv6 full", []string{"10.0.0.0/24", "fd74:6572:6e00::5/128"}, 1, "fd74:6572:6e00::5/128", []int{1, 1}},
		{"dual stack, IPv4 full", []string{"10.0.0.5/32", "fd74:6572:6e00::/120"}, 1, "10.0.0.5/32", []int{1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, tt.pools...)
			for i := 0; i < tt.fill; i++ {
				if _, err := a.Allocate(req(fmt.Sprintf("fill%d", i))); err != nil {
					t.Fatalf("fill #%d: %v", i, err)
				}
			}
			_, err := a.Allocate(req("late"))
			if !errors.Is(err, ErrPoolFull) {
				t.Fatalf("Allocate = %v, want ErrPoolFull", err)
			}
			if !strings.Contains(err.Error(), tt.wantCIDR) {
				t.Fatalf("error %q does not name %s", err, tt.wantCIDR)
			}
			if _, err := a.Get(key("late")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get after failed Allocate = %v, want ErrNotFound", err)
			}
			if n, _ := store.Counts(); n != tt.fill {
				t.Fatalf("store saw %d Puts, want %d", n, tt.fill)
			}
			u := a.Usage()
			for i, want := range tt.wantInUse {
				if u[i].InUse != want {
					t.Fatalf("Usage()[%d].InUse = %d, want %d (%+v)", i, u[i].InUse, want, u)
				}
			}
		})
	}
}

func TestAllocateInvalidKey(t *testing.T) {
	tests := []struct {
		name string
		key  Key
	}{
		{"empty container ID", Key{IfName: "eth0"}},
		{"empty interface name", Key{ContainerID: "c1"}},
		{"both empty", Key{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, "10.0.0.0/24")
			_, err := a.Allocate(Request{Key: tt.key})
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("Allocate(%+v) = %v, want ErrInvalidKey", tt.key, err)
			}
			if n, _ := store.Counts(); n != 0 {
				t.Fatalf("store saw %d Puts, want 0", n)
			}
			if u := a.Usage(); u[0].InUse != 0 {
				t.Fatalf("Usage InUse = %d, want 0", u[0].InUse)
			}
		})
	}
}

func TestAllocateNoPools(t *testing.T) {
	store := NewMemStore()
	a := newTestAllocator(t, store)
	if _, err := a.Allocate(req("c1")); !errors.Is(err, ErrNoPools) {
		t.Fatalf("Allocate without pools = %v, want ErrNoPools", err)
	}
	if n, _ := store.Counts(); n != 0 {
		t.Fatalf("store saw %d Puts, want 0", n)
	}
}

func TestNotFound(t *testing.T) {
	tests := []struct {
		name string
		call func(a *Allocator) error
	}{
		{"Get of unknown key", func(a *Allocator) error {
			_, err := a.Get(key("nobody"))
			return err
		}},
		{"Release of unknown key", func(a *Allocator) error {
			_, err := a.Release(key("nobody"))
			return err
		}},
		{"Get of other interface of known container", func(a *Allocator) error {
			_, err := a.Get(Key{ContainerID: "known", IfName: "eth1"})
			return err
		}},
		{"second Release", func(a *Allocator) error {
			if _, err := a.Release(key("known")); err != nil {
				return fmt.Errorf("first Release: %w", err)
			}
			_, err := a.Release(key("known"))
			return err
		}},
		{"Get after Release", func(a *Allocator) error {
			if _, err := a.Release(key("known")); err != nil {
				return fmt.Errorf("Release: %w", err)
			}
			_, err := a.Get(key("known"))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAllocator(t, NewMemStore(), "10.0.0.0/24")
			if _, err := a.Allocate(req("known")); err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if err := tt.call(a); !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestRelease(t *testing.T) {
	tests := []struct {
		name  string
		pools []string
	}{
		{"IPv4 /32", []string{"10.0.0.5/32"}},
		{"dual stack /32 + /128", []string{"10.0.0.5/32", "fd74:6572:6e00::5/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, tt.pools...)
			al, err := a.Allocate(req("c1"))
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			released, err := a.Release(key("c1"))
			if err != nil {
				t.Fatalf("Release: %v", err)
			}
			if !sameAllocation(released, al) {
				t.Fatalf("Release returned %+v, want %+v", released, al)
			}
			if _, ok := store.Get(key("c1")); ok {
				t.Fatal("store still holds the released allocation")
			}
			for i, u := range a.Usage() {
				if u.InUse != 0 {
					t.Fatalf("Usage()[%d].InUse = %d after Release, want 0", i, u.InUse)
				}
			}
			// Every pool has one address, so the next key can only get the same ones.
			next, err := a.Allocate(req("c2"))
			if err != nil {
				t.Fatalf("Allocate after Release: %v", err)
			}
			if !slices.Equal(next.IPs, al.IPs) {
				t.Fatalf("Allocate after Release = %v, want %v", next.IPs, al.IPs)
			}
		})
	}
}

func TestAllocatePutFailureLeavesNoTrace(t *testing.T) {
	tests := []struct {
		name  string
		pools []string
	}{
		{"IPv4 /32", []string{"10.0.0.5/32"}},
		{"IPv4 /30", []string{"10.0.0.0/30"}},
		{"dual stack", []string{"10.0.0.5/32", "fd74:6572:6e00::5/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore()
			a := newTestAllocator(t, store, tt.pools...)
			store.FailPut(errInjected)
			_, err := a.Allocate(req("c1"))
			if !errors.Is(err, errInjected) {
				t.Fatalf("Allocate with failing Put = %v, want it to wrap %v", err, errInjected)
			}
			if !strings.Contains(err.Error(), key("c1").String()) {
				t.Fatalf("error %q does not name the attachment %s", err, key("c1"))
			}
			if _, err := a.Get(key("c1")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get after failed Put = %v, want ErrNotFound", err)
			}
			if l := a.List(); len(l) != 0 {
				t.Fatalf("List after failed Put = %+v, want empty", l)
			}
			for i, u := range a.Usage() {
				if u.InUse != 0 {
					t.Fatalf("Usage()[%d].InUse = %d after failed Put, want 0", i, u.InUse)
				}
			}
			if n := store.Len(); n != 0 {
				t.Fatalf("store holds %d allocations, want 0", n)
			}

			// The addresses are free again: the whole pool can be allocated.
			store.FailPut(nil)
			size := a.Usage()[0].Size
			for i := uint64(0); i < size; i++ {
				if _, err := a.Allocate(req(fmt.Sprintf("after%d", i))); err != nil {
					t.Fatalf("Allocate #%d after the failed Put: %v", i, err)
				}
			}
			if _, err := a.Allocate(req("c1")); !errors.Is(err, ErrPoolFull) {
				t.Fatalf("Allocate past pool size = %v, want ErrPoolFull", err)
			}
		})
	}
}

func TestReleaseDeleteFailureKeepsAllocation(t *testing.T) {
	store := NewMemStore()
	a := newTestAllocator(t, store, "10.0.0.5/32")
	al, err := a.Allocate(req("c1"))
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	store.FailDelete(errInjected)
	if _, err := a.Release(key("c1")); !errors.Is(err, errInjected) {
		t.Fatalf("Release with failing Delete = %v, want it to wrap %v", err, errInjected)
	}
	got, err := a.Get(key("c1"))
	if err != nil || !sameAllocation(got, al) {
		t.Fatalf("Get after failed Delete = %+v, %v; want %+v", got, err, al)
	}
	if _, ok := store.Get(key("c1")); !ok {
		t.Fatal("store lost the allocation")
	}
	if u := a.Usage(); u[0].InUse != 1 {
		t.Fatalf("Usage InUse = %d after failed Delete, want 1", u[0].InUse)
	}
	if _, err := a.Allocate(req("c2")); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("Allocate of the kept address = %v, want ErrPoolFull", err)
	}

	store.FailDelete(nil)
	if _, err := a.Release(key("c1")); err != nil {
		t.Fatalf("Release after Delete recovers: %v", err)
	}
	if _, err := a.Get(key("c1")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Release = %v, want ErrNotFound", err)
	}
}

func TestNewRebuildsIndex(t *testing.T) {
	at := func(sec int) time.Time { return epoch.Add(time.Duration(sec) * time.Second) }
	tests := []struct {
		name      string
		pools     []string
		stored    []Allocation
		wantOrder []string // container IDs, oldest first
		wantInUse []int
		wantNext  []netip.Addr // next allocation after New
	}{
		{
			name:  "IPv4, newest allocation is not the highest address",
			pools: []string{"10.0.0.0/24"},
			stored: []Allocation{
				{Key: key("old"), IPs: addrs("10.0.0.9"), Created: at(1)},
				{Key: key("newest"), IPs: addrs("10.0.0.4"), Created: at(3)},
				{Key: key("mid"), IPs: addrs("10.0.0.5"), Created: at(2)},
			},
			wantOrder: []string{"old", "mid", "newest"},
			wantInUse: []int{3},
			// Cursor at 10.0.0.4; 10.0.0.5 is taken.
			wantNext: addrs("10.0.0.6"),
		},
		{
			name:  "dual stack",
			pools: []string{"10.0.0.0/24", "fd74:6572:6e00::/120"},
			stored: []Allocation{
				{Key: key("b"), IPs: addrs("10.0.0.2", "fd74:6572:6e00::7"), Created: at(2)},
				{Key: key("a"), IPs: addrs("10.0.0.1", "fd74:6572:6e00::8"), Created: at(1)},
			},
			wantOrder: []string{"a", "b"},
			wantInUse: []int{2, 2},
			// IPv6 cursor at fd74:6572:6e00::7 (the newest), and fd74:6572:6e00::8 is taken.
			wantNext: addrs("10.0.0.3", "fd74:6572:6e00::9"),
		},
		{
			name:  "allocation outside the pools is kept",
			pools: []string{"10.0.1.0/24"},
			stored: []Allocation{
				{Key: key("gone"), IPs: addrs("10.0.0.7"), Created: at(1)},
			},
			wantOrder: []string{"gone"},
			wantInUse: []int{0},
			wantNext:  addrs("10.0.1.1"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemStore(tt.stored...)
			a := newTestAllocator(t, store, tt.pools...)
			for _, want := range tt.stored {
				got, err := a.Get(want.Key)
				if err != nil || !sameAllocation(got, want) {
					t.Fatalf("Get(%s) = %+v, %v; want %+v", want.Key, got, err, want)
				}
			}
			var order []string
			for _, al := range a.List() {
				order = append(order, al.ContainerID)
			}
			if !slices.Equal(order, tt.wantOrder) {
				t.Fatalf("List order = %v, want %v", order, tt.wantOrder)
			}
			for i, u := range a.Usage() {
				if u.InUse != tt.wantInUse[i] {
					t.Fatalf("Usage()[%d].InUse = %d, want %d", i, u.InUse, tt.wantInUse[i])
				}
			}
			next, err := a.Allocate(req("new"))
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if !slices.Equal(next.IPs, tt.wantNext) {
				t.Fatalf("Allocate after New = %v, want %v", next.IPs, tt.wantNext)
			}
			// A stored key is answered from the index, not allocated again.
			first := tt.stored[0]
			again, err := a.Allocate(Request{Key: first.Key})
			if err != nil || !slices.Equal(again.IPs, first.IPs) {
				t.Fatalf("Allocate(%s) = %v, %v; want stored %v", first.Key, again.IPs, err, first.IPs)
			}
			if n, _ := store.Counts(); n != 1 {
				t.Fatalf("store saw %d Puts, want 1", n)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name    string
		store   *MemStore
		pools   []string
		wantErr error  // matched with errors.Is, when set
		wantMsg string // contained in the error
	}{
		{
			name: "one address held twice",
			store: NewMemStore(
				Allocation{Key: key("a"), IPs: addrs("10.0.0.3"), Created: epoch},
				Allocation{Key: key("b"), IPs: addrs("10.0.0.3"), Created: epoch.Add(time.Second)},
			),
			pools:   []string{"10.0.0.0/24"},
			wantMsg: "10.0.0.3",
		},
		{
			name: "one IPv6 address held twice, outside the pools",
			store: NewMemStore(
				Allocation{Key: key("a"), IPs: addrs("10.0.0.1", "fd74:6572:6e00::3"), Created: epoch},
				Allocation{Key: key("b"), IPs: addrs("10.0.0.2", "fd74:6572:6e00::3"), Created: epoch.Add(time.Second)},
			),
			pools:   []string{"10.0.0.0/24"},
			wantMsg: "fd74:6572:6e00::3",
		},
		{
			name:    "load fails",
			store:   failingLoad(errInjected),
			pools:   []string{"10.0.0.0/24"},
			wantErr: errInjected,
			wantMsg: "load allocations",
		},
		{
			name:    "invalid pool",
			store:   NewMemStore(),
			pools:   []string{"10.0.0.1/24"},
			wantMsg: "10.0.0.1/24",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.store, prefixes(t, tt.pools...))
			if err == nil {
				t.Fatalf("New = %v, want an error", a)
			}
			if a != nil {
				t.Fatalf("New returned an allocator with error %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("New = %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("New = %q, want it to mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestSetPools(t *testing.T) {
	initial := []string{"10.0.0.0/24"}
	tests := []struct {
		name    string
		pools   []netip.Prefix
		wantErr bool
	}{
		{"one IPv4", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, false},
		{"one IPv6", []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e00::/64")}, false},
		{"dual stack", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd74:6572:6e00::/64")}, false},
		{"none", nil, false},
		{"IPv4 /32", []netip.Prefix{netip.MustParsePrefix("10.1.0.1/32")}, false},
		{"IPv6 /128", []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e00::1/128")}, false},
		{"IPv4 not masked", []netip.Prefix{netip.MustParsePrefix("10.1.0.1/24")}, true},
		{"IPv6 not masked", []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e00::1/64")}, true},
		{"zero prefix", []netip.Prefix{{}}, true},
		{"two IPv4", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")}, true},
		{"two IPv6", []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e00::/64"), netip.MustParsePrefix("fd01::/64")}, true},
		{"same IPv4 twice", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.1.0.0/24")}, true},
		{"valid then not masked", []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e00::/64"), netip.MustParsePrefix("10.1.0.1/24")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAllocator(t, NewMemStore(), initial...)
			err := a.SetPools(tt.pools)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("SetPools(%v) = %v, want error: %v", tt.pools, err, tt.wantErr)
			}
			want := tt.pools
			if tt.wantErr {
				want = prefixes(t, initial...) // unchanged
			}
			if got := a.Pools(); !slices.Equal(got, want) {
				t.Fatalf("Pools() = %v, want %v", got, want)
			}
		})
	}
}

func TestSetPoolsKeepsAllocations(t *testing.T) {
	a := newTestAllocator(t, NewMemStore(), "10.0.0.0/24")
	old, err := a.Allocate(req("old"))
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	if err := a.SetPools(prefixes(t, "10.0.1.0/24")); err != nil {
		t.Fatalf("SetPools: %v", err)
	}
	if got, err := a.Get(key("old")); err != nil || !slices.Equal(got.IPs, old.IPs) {
		t.Fatalf("Get(old) after SetPools = %v, %v; want %v", got.IPs, err, old.IPs)
	}
	al, err := a.Allocate(req("new"))
	if err != nil {
		t.Fatalf("Allocate in new pool: %v", err)
	}
	if want := addrs("10.0.1.1"); !slices.Equal(al.IPs, want) {
		t.Fatalf("Allocate in new pool = %v, want %v", al.IPs, want)
	}
	if _, err := a.Release(key("old")); err != nil {
		t.Fatalf("Release of allocation outside the pools: %v", err)
	}
}

func TestPoolsReturnsCopy(t *testing.T) {
	a := newTestAllocator(t, NewMemStore(), "10.0.0.0/24")
	p := a.Pools()
	p[0] = netip.MustParsePrefix("192.168.0.0/16")
	if got := a.Pools(); got[0] != netip.MustParsePrefix("10.0.0.0/24") {
		t.Fatalf("changing the result of Pools changed the allocator: %v", got)
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name      string
		pools     []string
		allocate  int
		release   int
		wantSize  []uint64
		wantInUse []int
	}{
		{"empty IPv4 /24", []string{"10.0.0.0/24"}, 0, 0, []uint64{254}, []int{0}},
		{"IPv4 /24 with 3", []string{"10.0.0.0/24"}, 3, 0, []uint64{254}, []int{3}},
		{"IPv4 /24 with 3, 2 released", []string{"10.0.0.0/24"}, 3, 2, []uint64{254}, []int{1}},
		{"dual stack", []string{"10.0.0.0/24", "fd74:6572:6e00::/120"}, 5, 1, []uint64{254, 255}, []int{4, 4}},
		{"IPv4 /31", []string{"10.0.0.0/31"}, 2, 0, []uint64{2}, []int{2}},
		{"IPv4 /16", []string{"10.0.0.0/16"}, 0, 0, []uint64{65534}, []int{0}},
		{"IPv6 /66", []string{"fd74:6572:6e00::/66"}, 1, 0, []uint64{1<<62 - 1}, []int{1}},
		{"IPv6 /64 is capped", []string{"fd74:6572:6e00::/64"}, 1, 0, []uint64{1 << 63}, []int{1}},
		{"IPv6 /0 is capped", []string{"::/0"}, 0, 0, []uint64{1 << 63}, []int{0}},
		{"IPv4 /0", []string{"0.0.0.0/0"}, 1, 0, []uint64{1<<32 - 2}, []int{1}},
		{"no pools", nil, 0, 0, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAllocator(t, NewMemStore(), tt.pools...)
			for i := 0; i < tt.allocate; i++ {
				if _, err := a.Allocate(req(fmt.Sprintf("c%d", i))); err != nil {
					t.Fatalf("Allocate #%d: %v", i, err)
				}
			}
			for i := 0; i < tt.release; i++ {
				if _, err := a.Release(key(fmt.Sprintf("c%d", i))); err != nil {
					t.Fatalf("Release #%d: %v", i, err)
				}
			}
			u := a.Usage()
			if len(u) != len(tt.wantSize) {
				t.Fatalf("Usage = %+v, want %d entries", u, len(tt.wantSize))
			}
			pools := prefixes(t, tt.pools...)
			for i := range u {
				if u[i].Pool != pools[i] || u[i].Size != tt.wantSize[i] || u[i].InUse != tt.wantInUse[i] {
					t.Fatalf("Usage()[%d] = %+v, want pool %s size %d in use %d",
						i, u[i], pools[i], tt.wantSize[i], tt.wantInUse[i])
				}
			}
		})
	}
}

func TestAllocateConcurrentDistinctKeys(t *testing.T) {
	const n = 200
	store := NewMemStore()
	a := newTestAllocator(t, store, "10.0.0.0/24", "fd74:6572:6e00::/120")

	results := make([]Allocation, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = a.Allocate(req(fmt.Sprintf("c%03d", i)))
		})
	}
	close(start)
	wg.Wait()

	owner := map[netip.Addr]int{}
	for i, al := range results {
		if errs[i] != nil {
			t.Fatalf("Allocate #%d: %v", i, errs[i])
		}
		if len(al.IPs) != 2 {
			t.Fatalf("Allocate #%d = %v, want two addresses", i, al.IPs)
		}
		for _, ip := range al.IPs {
			if j, dup := owner[ip]; dup {
				t.Fatalf("%s handed to both #%d and #%d", ip, j, i)
			}
			owner[ip] = i
		}
	}
	if got, _ := store.Counts(); got != n {
		t.Fatalf("store saw %d Puts, want %d", got, n)
	}
	if got := store.Len(); got != n {
		t.Fatalf("store holds %d allocations, want %d", got, n)
	}
	for i, u := range a.Usage() {
		if u.InUse != n {
			t.Fatalf("Usage()[%d].InUse = %d, want %d", i, u.InUse, n)
		}
	}
}

func TestAllocateConcurrentSameKey(t *testing.T) {
	const n = 50
	store := NewMemStore()
	// Hold the first Put open until every goroutine has had time to arrive, so
	// the others find it in flight.
	store.OnPut(func(Allocation) { time.Sleep(20 * time.Millisecond) })
	a := newTestAllocator(t, store, "10.0.0.0/24", "fd74:6572:6e00::/120")

	results := make([]Allocation, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = a.Allocate(req("same"))
		})
	}
	close(start)
	wg.Wait()

	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Allocate #%d: %v", i, errs[i])
		}
		if !sameAllocation(results[i], results[0]) {
			t.Fatalf("Allocate #%d = %+v, want %+v", i, results[i], results[0])
		}
	}
	if got, _ := store.Counts(); got != 1 {
		t.Fatalf("store saw %d Puts, want 1", got)
	}
	for i, u := range a.Usage() {
		if u.InUse != 1 {
			t.Fatalf("Usage()[%d].InUse = %d, want 1", i, u.InUse)
		}
	}
}

func TestConcurrentAllocateAndRelease(t *testing.T) {
	// Each goroutine allocates and releases its own key repeatedly over a pool
	// smaller than the number of goroutines times rounds; nothing may be
	// handed out twice at once and everything must be free at the end.
	const workers, rounds = 20, 10
	store := NewMemStore()
	a := newTestAllocator(t, store, "10.0.0.0/27")

	var (
		mu    sync.Mutex
		held  = map[netip.Addr]string{}
		fails []string
	)
	// An address stops being held only once its release is durable: an
	// allocator that handed it out earlier would be caught as a duplicate.
	store.OnDeleted(func(al Allocation) {
		mu.Lock()
		delete(held, al.IPs[0])
		mu.Unlock()
	})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			k := key(fmt.Sprintf("w%d", w))
			for range rounds {
				al, err := a.Allocate(Request{Key: k})
				if err != nil {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("Allocate %s: %v", k, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				if other, dup := held[al.IPs[0]]; dup {
					fails = append(fails, fmt.Sprintf("%s held by %s and %s", al.IPs[0], other, k))
				}
				held[al.IPs[0]] = k.String()
				mu.Unlock()

				if _, err := a.Release(k); err != nil {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("Release %s: %v", k, err))
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if len(fails) > 0 {
		t.Fatal(strings.Join(fails, "\n"))
	}
	if u := a.Usage(); u[0].InUse != 0 {
		t.Fatalf("Usage InUse = %d after all releases, want 0", u[0].InUse)
	}
	if got := store.Len(); got != 0 {
		t.Fatalf("store holds %d allocations, want 0", got)
	}
}

// SetPools must keep the round-robin promise: the cursor continues after the
// newest allocation, so a just-released address is not handed out again.
func TestSetPoolsKeepsRoundRobinCursor(t *testing.T) {
	store := NewMemStore()
	a := newTestAllocator(t, store, "10.0.0.0/24")
	for _, id := range []string{"a", "b", "c", "d"} {
		if _, err := a.Allocate(req(id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Release(key("d")); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPools(a.Pools()); err != nil {
		t.Fatal(err)
	}
	al, err := a.Allocate(req("e"))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("10.0.0.5"); al.IPs[0] != want {
		t.Fatalf("after SetPools got %s, want %s (the released .4 must not come back at once)", al.IPs[0], want)
	}
}

// What Allocate, Get and List return shares no memory with the index.
func TestReturnedAllocationsAreCopies(t *testing.T) {
	a := newTestAllocator(t, NewMemStore(), "10.0.0.0/24")
	al, err := a.Allocate(req("a"))
	if err != nil {
		t.Fatal(err)
	}
	al.IPs[0] = netip.MustParseAddr("10.0.0.99")
	got, _ := a.Get(key("a"))
	got.IPs[0] = netip.MustParseAddr("10.0.0.98")
	a.List()[0].IPs[0] = netip.MustParseAddr("10.0.0.97")
	again, _ := a.Get(key("a"))
	if again.IPs[0] != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("the index was changed through a returned value: %v", again.IPs)
	}
	rel, err := a.Release(key("a"))
	if err != nil || rel.IPs[0] != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("released %v, %v", rel.IPs, err)
	}
}

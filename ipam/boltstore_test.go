package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const testTimeout = 100 * time.Millisecond

func openTestStore(t *testing.T, path string) *BoltStore {
	t.Helper()
	s, err := OpenBoltStore(path, testTimeout)
	if err != nil {
		t.Fatalf("OpenBoltStore(%s): %v", path, err)
	}
	return s
}

func closeStore(t *testing.T, s *BoltStore) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// loadByKey returns the store's allocations indexed by key.
func loadByKey(t *testing.T, s *BoltStore) map[Key]Allocation {
	t.Helper()
	allocs, err := s.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	out := map[Key]Allocation{}
	for _, al := range allocs {
		if _, dup := out[al.Key]; dup {
			t.Fatalf("Load returned %s twice", al.Key)
		}
		out[al.Key] = al
	}
	return out
}

func TestBoltStoreRoundTrip(t *testing.T) {
	full := Allocation{
		Key:       Key{ContainerID: "0123456789abcdef", IfName: "eth0"},
		Namespace: "default", Pod: "web-0", HostIf: "tern0123", Netns: "/var/run/netns/cni-1",
		IPs:     addrs("10.244.1.7", "fd00:10:244:1::7"),
		Created: time.Date(2025, 6, 7, 8, 9, 10, 123456789, time.UTC),
	}
	tests := []struct {
		name   string
		put    []Allocation
		delete []Key
		want   []Allocation
	}{
		{"empty store", nil, nil, nil},
		{"one allocation, every field", []Allocation{full}, nil, []Allocation{full}},
		{
			name: "two interfaces of one container are two records",
			put: []Allocation{
				{Key: Key{ContainerID: "c1", IfName: "eth0"}, IPs: addrs("10.0.0.1"), Created: epoch},
				{Key: Key{ContainerID: "c1", IfName: "eth1"}, IPs: addrs("10.0.0.2"), Created: epoch},
			},
			want: []Allocation{
				{Key: Key{ContainerID: "c1", IfName: "eth0"}, IPs: addrs("10.0.0.1"), Created: epoch},
				{Key: Key{ContainerID: "c1", IfName: "eth1"}, IPs: addrs("10.0.0.2"), Created: epoch},
			},
		},
		{
			name: "put twice overwrites",
			put: []Allocation{
				{Key: key("c1"), IPs: addrs("10.0.0.1"), Created: epoch},
				{Key: key("c1"), IPs: addrs("10.0.0.9"), Created: epoch.Add(time.Second)},
			},
			want: []Allocation{{Key: key("c1"), IPs: addrs("10.0.0.9"), Created: epoch.Add(time.Second)}},
		},
		{
			name:   "delete one of two",
			put:    []Allocation{full, {Key: key("c2"), IPs: addrs("10.0.0.2"), Created: epoch}},
			delete: []Key{full.Key},
			want:   []Allocation{{Key: key("c2"), IPs: addrs("10.0.0.2"), Created: epoch}},
		},
		{
			name:   "delete of unknown key is not an error",
			put:    []Allocation{full},
			delete: []Key{key("nobody")},
			want:   []Allocation{full},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A directory that does not exist yet: OpenBoltStore creates it.
			s := openTestStore(t, filepath.Join(t.TempDir(), "state", "ipam.db"))
			defer closeStore(t, s)
			for _, al := range tt.put {
				if err := s.Put(al); err != nil {
					t.Fatalf("Put(%s): %v", al.Key, err)
				}
			}
			for _, k := range tt.delete {
				if err := s.Delete(k); err != nil {
					t.Fatalf("Delete(%s): %v", k, err)
				}
			}
			got := loadByKey(t, s)
			if len(got) != len(tt.want) {
				t.Fatalf("Load returned %d allocations, want %d: %+v", len(got), len(tt.want), got)
			}
			for _, want := range tt.want {
				if g, ok := got[want.Key]; !ok || !sameAllocation(g, want) {
					t.Fatalf("Load()[%s] = %+v (present %v), want %+v", want.Key, g, ok, want)
				}
			}
		})
	}
}

func TestBoltStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	keep := Allocation{Key: key("keep"), Pod: "p", IPs: addrs("10.0.0.1", "fd74:6572:6e00::1"), Created: epoch}
	gone := Allocation{Key: key("gone"), IPs: addrs("10.0.0.2"), Created: epoch}

	s := openTestStore(t, path)
	for _, al := range []Allocation{keep, gone} {
		if err := s.Put(al); err != nil {
			t.Fatalf("Put(%s): %v", al.Key, err)
		}
	}
	if err := s.Delete(gone.Key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	closeStore(t, s)

	s = openTestStore(t, path)
	defer closeStore(t, s)
	got := loadByKey(t, s)
	if len(got) != 1 || !sameAllocation(got[keep.Key], keep) {
		t.Fatalf("Load after reopen = %+v, want only %+v", got, keep)
	}
}

func TestBoltStoreLockedFileTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	first := openTestStore(t, path)
	defer closeStore(t, first)

	type result struct {
		s   *BoltStore
		err error
	}
	done := make(chan result, 1)
	began := time.Now()
	go func() {
		s, err := OpenBoltStore(path, testTimeout)
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			r.s.Close()
			t.Fatal("second OpenBoltStore of a held file succeeded, want a timeout error")
		}
		if !errors.Is(r.err, berrors.ErrTimeout) {
			t.Fatalf("second OpenBoltStore = %v, want it to wrap %v", r.err, berrors.ErrTimeout)
		}
		if !strings.Contains(r.err.Error(), path) {
			t.Fatalf("error %q does not name %s", r.err, path)
		}
		// bbolt gives up one 50ms retry interval early, so only the upper
		// bound is ours to check.
		if waited := time.Since(began); waited > 2*time.Second {
			t.Fatalf("second OpenBoltStore took %v with a %v timeout", waited, testTimeout)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second OpenBoltStore of a held file is still waiting after 5s")
	}

	// The first store still works.
	if err := first.Put(Allocation{Key: key("c1"), IPs: addrs("10.0.0.1"), Created: epoch}); err != nil {
		t.Fatalf("Put on the first store: %v", err)
	}
}

func TestBoltStoreConcurrentPuts(t *testing.T) {
	const n = 100
	path := filepath.Join(t.TempDir(), "ipam.db")
	s := openTestStore(t, path)

	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.Put(Allocation{
				Key:     key(fmt.Sprintf("c%03d", i)),
				IPs:     []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})},
				Created: epoch.Add(time.Duration(i) * time.Second),
			})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Put #%d: %v", i, err)
		}
	}
	closeStore(t, s)

	s = openTestStore(t, path)
	defer closeStore(t, s)
	got := loadByKey(t, s)
	if len(got) != n {
		t.Fatalf("Load after reopen returned %d allocations, want %d", len(got), n)
	}
	for i := range n {
		k := key(fmt.Sprintf("c%03d", i))
		want := []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}
		if al, ok := got[k]; !ok || !slices.Equal(al.IPs, want) {
			t.Fatalf("Load()[%s] = %+v (present %v), want IPs %v", k, al, ok, want)
		}
	}
}

func TestBoltStorePutRacingClose(t *testing.T) {
	// Puts racing with Close either fail or are in the file afterwards; none
	// may panic, hang or be acknowledged and then lost.
	const n = 50
	path := filepath.Join(t.TempDir(), "ipam.db")
	s := openTestStore(t, path)

	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.Put(Allocation{Key: key(fmt.Sprintf("c%03d", i)), IPs: addrs("10.0.0.1"), Created: epoch})
		})
	}
	close(start)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if err := s.Put(Allocation{Key: key("late"), IPs: addrs("10.0.0.2"), Created: epoch}); err == nil {
		t.Fatal("Put after Close succeeded, want an error")
	}

	s = openTestStore(t, path)
	defer closeStore(t, s)
	got := loadByKey(t, s)
	for i, err := range errs {
		k := key(fmt.Sprintf("c%03d", i))
		if _, ok := got[k]; err == nil && !ok {
			t.Fatalf("Put(%s) returned nil but the record is not in the file", k)
		}
	}
	if _, ok := got[key("late")]; ok {
		t.Fatal("the Put after Close is in the file")
	}
}

func TestBoltStoreLoadCorruptRecord(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "ipam.db"))
	defer closeStore(t, s)
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocations).Put([]byte("bad\x00eth0"), []byte("{not json"))
	})
	if err != nil {
		t.Fatalf("write corrupt record: %v", err)
	}
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("Load of a corrupt record = %v, want an error naming the record", err)
	}
}

func TestAllocatorOverBoltStoreReopen(t *testing.T) {
	tests := []struct {
		name  string
		pools []string
	}{
		{"IPv4", []string{"10.244.0.0/24"}},
		{"dual stack", []string{"10.244.0.0/24", "fd00:244::/120"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipam.db")

			s := openTestStore(t, path)
			a, err := New(s, prefixes(t, tt.pools...))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			first, err := a.Allocate(Request{Key: key("c1"), Pod: "web-0"})
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			closeStore(t, s)

			s = openTestStore(t, path)
			defer closeStore(t, s)
			a, err = New(s, prefixes(t, tt.pools...))
			if err != nil {
				t.Fatalf("New after reopen: %v", err)
			}
			got, err := a.Get(key("c1"))
			if err != nil || !sameAllocation(got, first) {
				t.Fatalf("Get after reopen = %+v, %v; want %+v", got, err, first)
			}
			again, err := a.Allocate(Request{Key: key("c1")})
			if err != nil || !sameAllocation(again, first) {
				t.Fatalf("Allocate(c1) after reopen = %+v, %v; want %+v", again, err, first)
			}
			other, err := a.Allocate(Request{Key: key("c2")})
			if err != nil {
				t.Fatalf("Allocate(c2) after reopen: %v", err)
			}
			if len(other.IPs) != len(first.IPs) {
				t.Fatalf("Allocate(c2) = %v, want %d addresses", other.IPs, len(first.IPs))
			}
			for _, ip := range other.IPs {
				if slices.Contains(first.IPs, ip) {
					t.Fatalf("c2 got %s, already held by c1 (%v)", ip, first.IPs)
				}
			}
			if n := len(loadByKey(t, s)); n != 2 {
				t.Fatalf("store holds %d allocations, want 2", n)
			}
		})
	}
}

// One write that bbolt refuses (a key over its 32 KiB limit) must not fail the
// writes committed in the same group.
func TestBoltStoreBadWriteDoesNotFailItsGroup(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "ipam.db"))
	defer closeStore(t, s)
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("r%d-c%d", round, i)
				if i == 0 {
					id = strings.Repeat("x", 40000)
				}
				errs[i] = s.Put(Allocation{Key: Key{ContainerID: id, IfName: "eth0"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}})
			}()
		}
		wg.Wait()
		if errs[0] == nil {
			t.Fatalf("round %d: a 40,000-byte key was stored", round)
		}
		for i, err := range errs[1:] {
			if err != nil {
				t.Fatalf("round %d: good write %d failed with its group: %v", round, i+1, err)
			}
		}
	}
}

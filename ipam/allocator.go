// Package ipam owns pod address management on a node: it hands out addresses from
// the node's pod CIDRs, one per address family for each attachment (container ID +
// interface name), and persists every allocation through a Store before it is
// returned, so a crash never hands one address to two pods.
package ipam

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Sentinel errors for the expected failure cases.
var (
	// ErrPoolFull means a pod CIDR has no free address left.
	ErrPoolFull = errors.New("no free address in pod CIDR")
	// ErrNotFound means there is no allocation for the attachment.
	ErrNotFound = errors.New("no allocation for this attachment")
	// ErrInvalidKey means an attachment key lacks its container ID or interface name.
	ErrInvalidKey = errors.New("invalid attachment")
	// ErrNoPools means the allocator has no pod CIDR to allocate from.
	ErrNoPools = errors.New("no pod CIDR configured on this node")
)

// Key identifies one attachment, as the CNI runtime does.
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// Validate reports whether the key is one a CNI runtime can send: a container
// ID of at most 1024 letters, digits, '_', '.' and '-' (the CNI spec's
// alphabet), and a Linux interface name (1 to 15 characters, no '/', no space,
// no control character).
func (k Key) Validate() error {
	if k.ContainerID == "" {
		return fmt.Errorf("%w: container ID is empty", ErrInvalidKey)
	}
	if len(k.ContainerID) > 1024 {
		return fmt.Errorf("%w: container ID is %d characters long (at most 1024)", ErrInvalidKey, len(k.ContainerID))
	}
	for _, c := range k.ContainerID {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("%w: container ID %q has %q; use letters, digits, '_', '.' and '-'", ErrInvalidKey, k.ContainerID, c)
		}
	}
	if k.IfName == "" {
		return fmt.Errorf("%w: interface name is empty", ErrInvalidKey)
	}
	if len(k.IfName) > 15 || k.IfName == "." || k.IfName == ".." {
		return fmt.Errorf("%w: %q is not a Linux interface name (1 to 15 characters)", ErrInvalidKey, k.IfName)
	}
	for _, c := range k.IfName {
		if c <= ' ' || c == '/' || c == ':' || c == 0x7f {
			return fmt.Errorf("%w: interface name %q has %q", ErrInvalidKey, k.IfName, c)
		}
	}
	return nil
}

// Allocation is one attachment's addresses and who it belongs to.
type Allocation struct {
	Key
	Network   string       `json:"network,omitempty"` // the CNI network's name
	Namespace string       `json:"namespace,omitempty"`
	Pod       string       `json:"pod,omitempty"`
	PodUID    string       `json:"podUID,omitempty"`
	HostIf    string       `json:"hostIf,omitempty"`
	Netns     string       `json:"netns,omitempty"`
	IPs       []netip.Addr `json:"ips"`
	Created   time.Time    `json:"created"`
}

// clone returns a copy that shares no memory with al.
func (al Allocation) clone() Allocation {
	al.IPs = slices.Clone(al.IPs)
	return al
}

// Store persists allocations. Put and Delete must be durable when they return.
type Store interface {
	Load() ([]Allocation, error)
	Put(Allocation) error
	Delete(Key) error
}

// Request asks for the addresses of one attachment.
type Request struct {
	Key
	Network   string
	Namespace string
	Pod       string
	PodUID    string
	HostIf    string
	Netns     string
}

// Allocator hands out addresses from a node's pod CIDRs. It is safe for
// concurrent use. Its in-memory index is rebuilt from the Store at start.
type Allocator struct {
	store Store
	now   func() time.Time

	mu       sync.Mutex
	pools    []netip.Prefix
	byKey    map[Key]*Allocation
	used     map[netip.Addr]Key
	pending  map[Key]chan struct{} // attachments whose Put is in flight
	lastUsed map[int]netip.Addr    // pool index -> cursor, for round-robin reuse
}

// New loads the allocations in store and returns an allocator over pools.
func New(store Store, pools []netip.Prefix) (*Allocator, error) {
	a := &Allocator{
		store:    store,
		now:      time.Now,
		byKey:    map[Key]*Allocation{},
		used:     map[netip.Addr]Key{},
		pending:  map[Key]chan struct{}{},
		lastUsed: map[int]netip.Addr{},
	}
	if err := a.SetPools(pools); err != nil {
		return nil, err
	}
	allocs, err := store.Load()
	if err != nil {
		return nil, fmt.Errorf("load allocations: %w", err)
	}
	sort.Slice(allocs, func(i, j int) bool { return allocs[i].Created.Before(allocs[j].Created) })
	for i := range allocs {
		al := allocs[i]
		for _, ip := range al.IPs {
			if other, dup := a.used[ip]; dup {
				// Cannot happen through this package; report rather than hide it.
				return nil, fmt.Errorf("store holds %s twice: %s and %s", ip, other, al.Key)
			}
			a.used[ip] = al.Key
			a.advanceCursor(ip)
		}
		a.byKey[al.Key] = &al
	}
	return a, nil
}

// SetPools replaces the pod CIDRs. Allocations outside the new pools stay until
// released.
func (a *Allocator) SetPools(pools []netip.Prefix) error {
	seen := map[bool]bool{}
	for _, p := range pools {
		if !p.IsValid() || p != p.Masked() {
			return fmt.Errorf("pod CIDR %s is not a network prefix", p)
		}
		if seen[p.Addr().Is4()] {
			return fmt.Errorf("pod CIDRs %v: at most one per address family", pools)
		}
		seen[p.Addr().Is4()] = true
		if usable(p) < 1 {
			return fmt.Errorf("pod CIDR %s has no usable address", p)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// A pool that stays keeps its cursor; a new one continues after its
	// newest allocation.
	kept := map[netip.Prefix]netip.Addr{}
	for i, p := range a.pools {
		if c, ok := a.lastUsed[i]; ok {
			kept[p] = c
		}
	}
	a.pools = slices.Clone(pools)
	a.lastUsed = map[int]netip.Addr{}
	allocs := make([]*Allocation, 0, len(a.byKey))
	for _, al := range a.byKey {
		allocs = append(allocs, al)
	}
	sort.Slice(allocs, func(i, j int) bool { return allocs[i].Created.Before(allocs[j].Created) })
	for _, al := range allocs {
		for _, ip := range al.IPs {
			a.advanceCursor(ip)
		}
	}
	for i, p := range a.pools {
		if c, ok := kept[p]; ok {
			a.lastUsed[i] = c
		}
	}
	return nil
}

// Pools returns the pod CIDRs.
func (a *Allocator) Pools() []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.pools)
}

// Allocate returns the attachment's allocation, creating it if needed. A repeated
// request for the same key returns the same addresses. The allocation is durable
// in the store when Allocate returns.
func (a *Allocator) Allocate(req Request) (Allocation, error) {
	if err := req.Key.Validate(); err != nil {
		return Allocation{}, err
	}
	for {
		a.mu.Lock()
		if wait, busy := a.pending[req.Key]; busy {
			// A concurrent request for the same attachment is being stored; wait
			// for it and then answer from the index.
			a.mu.Unlock()
			<-wait
			continue
		}
		if al, ok := a.byKey[req.Key]; ok {
			out := al.clone()
			a.mu.Unlock()
			return out, nil
		}
		if len(a.pools) == 0 {
			a.mu.Unlock()
			return Allocation{}, ErrNoPools
		}
		al := Allocation{
			Key: req.Key, Network: req.Network, Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID,
			HostIf: req.HostIf, Netns: req.Netns, Created: a.now().UTC(),
		}
		for i, p := range a.pools {
			ip, err := a.pick(i, p)
			if err != nil {
				for _, got := range al.IPs {
					delete(a.used, got)
				}
				a.mu.Unlock()
				return Allocation{}, err
			}
			a.used[ip] = req.Key
			al.IPs = append(al.IPs, ip)
		}
		done := make(chan struct{})
		a.pending[req.Key] = done
		a.mu.Unlock()

		err := a.store.Put(al)

		a.mu.Lock()
		delete(a.pending, req.Key)
		close(done)
		if err != nil {
			for _, ip := range al.IPs {
				delete(a.used, ip)
			}
			a.mu.Unlock()
			return Allocation{}, fmt.Errorf("persist allocation %s: %w", req.Key, err)
		}
		stored := al.clone()
		a.byKey[req.Key] = &stored
		a.mu.Unlock()
		return al, nil
	}
}

// Get returns the allocation of key.
func (a *Allocator) Get(key Key) (Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byKey[key]
	if !ok {
		return Allocation{}, ErrNotFound
	}
	return al.clone(), nil
}

// List returns every allocation, oldest first.
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Allocation, 0, len(a.byKey))
	for _, al := range a.byKey {
		out = append(out, al.clone())
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Created.Equal(out[j].Created) {
			return out[i].Key.String() < out[j].Key.String()
		}
		return out[i].Created.Before(out[j].Created)
	})
	return out
}

// Release frees the attachment's addresses and returns what was released. It
// returns ErrNotFound when there is nothing to release.
func (a *Allocator) Release(key Key) (Allocation, error) {
	for {
		a.mu.Lock()
		if wait, busy := a.pending[key]; busy {
			a.mu.Unlock()
			<-wait
			continue
		}
		al, ok := a.byKey[key]
		if !ok {
			a.mu.Unlock()
			return Allocation{}, ErrNotFound
		}
		done := make(chan struct{})
		a.pending[key] = done
		a.mu.Unlock()

		err := a.store.Delete(key)

		a.mu.Lock()
		delete(a.pending, key)
		close(done)
		if err != nil {
			a.mu.Unlock()
			return Allocation{}, fmt.Errorf("delete allocation %s: %w", key, err)
		}
		delete(a.byKey, key)
		for _, ip := range al.IPs {
			delete(a.used, ip)
		}
		a.mu.Unlock()
		return al.clone(), nil
	}
}

// Stats counts the addresses of one pool.
type Stats struct {
	Pool  netip.Prefix `json:"pool"`
	Size  uint64       `json:"size"`
	InUse int          `json:"inUse"`
}

// Usage returns per-pool address counts.
func (a *Allocator) Usage() []Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Stats, len(a.pools))
	for i, p := range a.pools {
		out[i] = Stats{Pool: p, Size: usable(p)}
	}
	for ip := range a.used {
		for i, p := range a.pools {
			if p.Contains(ip) {
				out[i].InUse++
			}
		}
	}
	return out
}

// pick returns the next free address of pool i after its cursor. Called with mu held.
func (a *Allocator) pick(i int, p netip.Prefix) (netip.Addr, error) {
	first, last := bounds(p)
	start, ok := a.lastUsed[i]
	if !ok || start.Less(first) || last.Less(start) {
		start = last
	}
	ip := start
	for {
		ip = ip.Next()
		if !ip.IsValid() || !p.Contains(ip) || ip.Compare(last) > 0 {
			ip = first
		}
		if _, taken := a.used[ip]; !taken {
			a.lastUsed[i] = ip
			return ip, nil
		}
		if ip == start {
			return netip.Addr{}, fmt.Errorf("%w %s (%d addresses, all allocated)", ErrPoolFull, p, usable(p))
		}
	}
}

// advanceCursor moves the round-robin cursor of ip's pool to ip. Called with mu held.
func (a *Allocator) advanceCursor(ip netip.Addr) {
	for i, p := range a.pools {
		if p.Contains(ip) {
			a.lastUsed[i] = ip
		}
	}
}

// bounds returns the first and last usable address of p: the network address is
// never handed out, nor the IPv4 broadcast address of prefixes shorter than /31.
func bounds(p netip.Prefix) (first, last netip.Addr) {
	first = p.Addr()
	bits := p.Addr().BitLen()
	host := bits - p.Bits()
	b := p.Addr().AsSlice()
	for i := 0; i < host; i++ {
		b[len(b)-1-i/8] |= 1 << (i % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	if host == 0 {
		return first, last
	}
	if p.Addr().Is4() && host == 1 {
		return first, last // RFC 3021 point-to-point /31
	}
	first = first.Next()
	if p.Addr().Is4() {
		last = last.Prev()
	}
	return first, last
}

// usable is the number of addresses bounds admits, capped at 2^63.
func usable(p netip.Prefix) uint64 {
	first, last := bounds(p)
	if last.Less(first) {
		return 0
	}
	n := new(big.Int).Sub(new(big.Int).SetBytes(last.AsSlice()), new(big.Int).SetBytes(first.AsSlice()))
	n.Add(n, big.NewInt(1))
	if !n.IsUint64() || n.Uint64() > 1<<63 {
		return 1 << 63
	}
	return n.Uint64()
}

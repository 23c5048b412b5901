package ipam

import (
	"slices"
	"sync"
)

// MemStore keeps allocations in memory: nothing survives the process. It is
// for tests and tools that need a Store without a file. Its operations can
// be made to fail and be watched, to test how callers handle a store.
//
// Load returns the allocations newest first, the reverse of the order in
// which a caller rebuilding its state must replay them, so a caller that
// forgets to sort shows it.
type MemStore struct {
	mu        sync.Mutex
	allocs    map[Key]Allocation
	loadErr   error
	putErr    error
	deleteErr error
	puts      int
	deletes   int
	onPut     func(Allocation)
	onDeleted func(Allocation)
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns a MemStore holding seed.
func NewMemStore(seed ...Allocation) *MemStore {
	s := &MemStore{allocs: map[Key]Allocation{}}
	for _, al := range seed {
		s.allocs[al.Key] = al.clone()
	}
	return s
}

// Load returns every allocation, newest first.
func (s *MemStore) Load() ([]Allocation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	out := make([]Allocation, 0, len(s.allocs))
	for _, al := range s.allocs {
		out = append(out, al.clone())
	}
	slices.SortFunc(out, func(a, b Allocation) int { return b.Created.Compare(a.Created) })
	return out, nil
}

// Put stores al, or returns the error set by FailPut. The function set by
// OnPut runs first, outside the store's lock.
func (s *MemStore) Put(al Allocation) error {
	s.mu.Lock()
	hook := s.onPut
	s.mu.Unlock()
	if hook != nil {
		hook(al)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.puts++
	if s.putErr != nil {
		return s.putErr
	}
	s.allocs[al.Key] = al.clone()
	return nil
}

// Delete removes the allocation of k, or returns the error set by
// FailDelete. Once it is removed, the function set by OnDeleted runs with
// it, outside the store's lock, before Delete returns.
func (s *MemStore) Delete(k Key) error {
	s.mu.Lock()
	s.deletes++
	if s.deleteErr != nil {
		s.mu.Unlock()
		return s.deleteErr
	}
	gone := s.allocs[k]
	delete(s.allocs, k)
	hook := s.onDeleted
	s.mu.Unlock()
	if hook != nil {
		hook(gone)
	}
	return nil
}

// FailLoad makes Load return err; nil makes it succeed again.
func (s *MemStore) FailLoad(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadErr = err
}

// FailPut makes Put return err without storing; nil makes it succeed again.
func (s *MemStore) FailPut(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putErr = err
}

// FailDelete makes Delete return err without deleting; nil makes it
// succeed again.
func (s *MemStore) FailDelete(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteErr = err
}

// OnPut makes every later Put call f with its allocation first.
func (s *MemStore) OnPut(f func(Allocation)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onPut = f
}

// OnDeleted makes every later successful Delete call f with the allocation
// it removed (the zero Allocation if there was none).
func (s *MemStore) OnDeleted(f func(Allocation)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onDeleted = f
}

// Counts returns how many times Put and Delete were called, failed calls
// included.
func (s *MemStore) Counts() (puts, deletes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts, s.deletes
}

// Get returns the stored allocation of k.
func (s *MemStore) Get(k Key) (Allocation, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	al, ok := s.allocs[k]
	return al.clone(), ok
}

// Len returns the number of stored allocations.
func (s *MemStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.allocs)
}

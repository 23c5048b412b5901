package ipam

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestMemStore(t *testing.T) {
	old := Allocation{Key: key("old"), IPs: addrs("10.0.0.1"), Created: epoch}
	s := NewMemStore(old)
	var putSeen, deleted []Key
	s.OnPut(func(al Allocation) { putSeen = append(putSeen, al.Key) })
	s.OnDeleted(func(al Allocation) {
		if s.Len() != 1 {
			t.Errorf("OnDeleted ran with %d allocations stored, want the delete done", s.Len())
		}
		deleted = append(deleted, al.Key)
	})

	al := Allocation{Key: key("new"), IPs: addrs("10.0.0.2"), Created: epoch.Add(time.Second)}
	if err := s.Put(al); err != nil {
		t.Fatal(err)
	}
	al.IPs[0] = addrs("10.0.0.9")[0]
	if got, _ := s.Get(key("new")); got.IPs[0] != addrs("10.0.0.2")[0] {
		t.Errorf("Get = %v: the store shares the caller's memory", got.IPs)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if keys := []Key{got[0].Key, got[1].Key}; !slices.Equal(keys, []Key{key("new"), key("old")}) {
		t.Errorf("Load = %v, want newest first", keys)
	}

	errDisk := errors.New("disk on fire")
	s.FailPut(errDisk)
	if err := s.Put(Allocation{Key: key("x")}); !errors.Is(err, errDisk) {
		t.Errorf("Put = %v, want %v", err, errDisk)
	}
	s.FailDelete(errDisk)
	if err := s.Delete(key("old")); !errors.Is(err, errDisk) {
		t.Errorf("Delete = %v, want %v", err, errDisk)
	}
	s.FailLoad(errDisk)
	if _, err := s.Load(); !errors.Is(err, errDisk) {
		t.Errorf("Load = %v, want %v", err, errDisk)
	}
	if s.Len() != 2 {
		t.Errorf("Len = %d after failed writes, want 2", s.Len())
	}

	s.FailDelete(nil)
	if err := s.Delete(key("old")); err != nil {
		t.Fatal(err)
	}
	if puts, deletes := s.Counts(); puts != 2 || deletes != 2 {
		t.Errorf("Counts = %d puts, %d deletes, want 2 and 2 (failed calls count)", puts, deletes)
	}
	if !slices.Equal(putSeen, []Key{key("new"), key("x")}) || !slices.Equal(deleted, []Key{key("old")}) {
		t.Errorf("hooks saw puts %v and deletes %v", putSeen, deleted)
	}
}

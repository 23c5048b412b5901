package ipam

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketAllocations = []byte("allocations")

// BoltStore keeps allocations in a bbolt file. Every write is committed and
// fsynced before it returns; concurrent writes share one commit (group commit).
type BoltStore struct {
	db *bolt.DB
}

var _ Store = (*BoltStore)(nil)

// OpenBoltStore opens (or creates) the store at path. It fails after timeout if
// another process holds the file, instead of waiting for ever.
func OpenBoltStore(path string, timeout time.Duration) (*BoltStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("open IPAM store %s: %w", path, err)
	}
	// Group commit: concurrent Puts within a few hundred microseconds share one fsync.
	db.MaxBatchDelay = 500 * time.Microsecond
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketAllocations)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init IPAM store %s: %w", path, err)
	}
	return &BoltStore{db: db}, nil
}

// Close closes the file.
func (s *BoltStore) Close() error { return s.db.Close() }

func storeKey(k Key) []byte { return []byte(k.ContainerID + "\x00" + k.IfName) }

// Load returns every stored allocation.
func (s *BoltStore) Load() ([]Allocation, error) {
	var out []Allocation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocations).ForEach(func(k, v []byte) error {
			var al Allocation
			if err := json.Unmarshal(v, &al); err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			out = append(out, al)
			return nil
		})
	})
	return out, err
}

// Put stores al durably.
func (s *BoltStore) Put(al Allocation) error {
	v, err := json.Marshal(al)
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocations).Put(storeKey(al.Key), v)
	})
}

// Delete removes the allocation of k durably.
func (s *BoltStore) Delete(k Key) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocations).Delete(storeKey(k))
	})
}

package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketAllocations = []byte("allocations")

// BoltStore keeps allocations in a bbolt file. Every write is committed and
// fsynced before it returns. Writes that arrive while a commit is in progress
// share the next one (group commit), so concurrent ADDs do not queue for one
// fsync each, and a lone write does not wait for company.
type BoltStore struct {
	db     *bolt.DB
	writes chan write
	wg     sync.WaitGroup

	mu     sync.RWMutex // guards closed and the close of writes
	closed bool
}

type write struct {
	key   []byte
	value []byte // nil: delete
	done  chan error
}

var _ Store = (*BoltStore)(nil)

// ErrStoreClosed is returned by writes after Close.
var ErrStoreClosed = errors.New("IPAM store is closed")

// OpenBoltStore opens (or creates) the store at path. It fails after timeout if
// another process holds the file, instead of waiting for ever.
func OpenBoltStore(path string, timeout time.Duration) (*BoltStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open IPAM store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketAllocations)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init IPAM store %s: %w", path, err)
	}
	s := &BoltStore{db: db, writes: make(chan write, 256)}
	s.wg.Add(1)
	go s.committer()
	return s, nil
}

// Close waits for pending writes and closes the file.
func (s *BoltStore) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.writes)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return s.db.Close()
}

// committer is the one writer: it commits every write queued since the last
// commit in one transaction.
func (s *BoltStore) committer() {
	defer s.wg.Done()
	for {
		w, ok := <-s.writes
		if !ok {
			return
		}
		batch := []write{w}
	drain:
		for len(batch) < 1024 {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break drain
				}
				batch = append(batch, w)
			default:
				break drain
			}
		}
		err := s.commit(batch)
		if err != nil && len(batch) > 1 {
			// One bad write must not fail the others: commit each alone.
			for _, w := range batch {
				w.done <- s.commit([]write{w})
			}
			continue
		}
		for _, w := range batch {
			w.done <- err
		}
	}
}

// commit writes batch in one transaction.
func (s *BoltStore) commit(batch []write) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocations)
		for _, w := range batch {
			var err error
			if w.value == nil {
				err = b.Delete(w.key)
			} else {
				err = b.Put(w.key, w.value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *BoltStore) submit(key, value []byte) error {
	w := write{key: key, value: value, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrStoreClosed
	}
	s.writes <- w
	s.mu.RUnlock()
	return <-w.done
}

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
	return s.submit(storeKey(al.Key), v)
}

// Delete removes the allocation of k durably.
func (s *BoltStore) Delete(k Key) error {
	return s.submit(storeKey(k), nil)
}

package agent

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/ipam"
)

// goroutineID is the id of the calling goroutine, as its stack trace names
// it (-1 if it cannot be read).
func goroutineID() int64 {
	var buf [64]byte
	f := strings.Fields(string(buf[:runtime.Stack(buf[:], false)]))
	if len(f) < 2 || f[0] != "goroutine" {
		return -1
	}
	id, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return -1
	}
	return id
}

func releaseBody(cid, hostIf string, index int) string {
	b, _ := json.Marshal(agentapi.ReleaseRequest{
		Attachment: agentapi.Attachment{ContainerID: cid, IfName: "eth0"},
		Dispose:    []hostveth.Link{{Name: hostIf, Index: index}},
	})
	return string(b)
}

// The CNI DEL handler does not delete veths: it wakes the reconcile
// goroutine, the one writer of kernel state, which deletes them without a
// whole pass; DELs that come while it is busy coalesce into one deletion.
func TestDisposeInReconcileGoroutine(t *testing.T) {
	cfg := dualStack
	cfg.Resync = time.Hour // no pass: a test agent has no dataplane
	ta := newTestAgent(t, cfg, ipam.NewMemStore())
	a := ta.a
	type call struct{ goroutine int64 }
	calls := make(chan call, 16)
	unblock := make(chan struct{})
	first := true
	a.deleteVeths = func() (int, error) {
		calls <- call{goroutineID()}
		if first { // the loop is busy while the next DELs come
			first = false
			<-unblock
		}
		return 1, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	loopID := make(chan int64, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		loopID <- goroutineID()
		a.reconcileLoop(ctx)
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	defer stop()
	loop := <-loopID
	if loop < 0 {
		t.Fatal("cannot read goroutine ids")
	}

	for _, c := range []string{"c1", "c2", "c3", "c4"} {
		decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody(c, "eth0", hostveth.Prefix+c)), 200)
	}
	next := func(what string) call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(5 * time.Second):
			close(unblock)
			t.Fatalf("%s: the veths were not deleted within 5 s", what)
			return call{}
		}
	}

	decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathRelease, releaseBody("c1", hostveth.Prefix+"c1", 11)), 200)
	if c := next("first DEL"); c.goroutine != loop {
		t.Errorf("veths deleted by goroutine %d, want the reconcile goroutine %d: two writers", c.goroutine, loop)
	}
	// The loop is inside the first deletion: these DELs are answered at
	// once and leave one request behind.
	for i, c := range []string{"c2", "c3", "c4"} {
		decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathRelease, releaseBody(c, hostveth.Prefix+c, 12+i)), 200)
	}
	select {
	case c := <-calls:
		t.Fatalf("veths deleted by goroutine %d while the reconcile goroutine %d was deleting: two writers", c.goroutine, loop)
	default:
	}
	close(unblock)
	if c := next("DELs during a deletion"); c.goroutine != loop {
		t.Errorf("veths deleted by goroutine %d, want the reconcile goroutine %d: two writers", c.goroutine, loop)
	}
	stop()
	if n := len(calls); n != 0 {
		t.Errorf("%d more deletions, want the DELs that came during one deletion coalesced into one", n)
	}
}

// Nothing is deleted before the agent is ready; a reconcile pass's own
// deletion answers the requests that came before it.
func TestDisposeWaitsForReady(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	a := ta.a
	n := 0
	a.deleteVeths = func() (int, error) { n++; return 1, nil }
	a.ready = false
	a.dispose([]hostveth.Link{{Name: hostveth.Prefix + "a", Index: 7}})
	<-a.disposal // as the loop takes it
	a.disposeIfReady()
	if n != 0 {
		t.Fatalf("veths deleted %d times before the agent was ready, want none", n)
	}
	a.ready = true
	a.dispose(nil)
	if len(a.disposal) != 0 {
		t.Error("a DEL without veths woke the reconcile goroutine")
	}
	a.dispose([]hostveth.Link{{Name: hostveth.Prefix + "b", Index: 8}})
	a.deleteDisposed() // the end of a reconcile pass
	if n != 1 || len(a.disposal) != 0 {
		t.Errorf("after a pass: %d deletions, %d requests pending; want 1 and none", n, len(a.disposal))
	}
}

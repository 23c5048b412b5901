package agent

import (
	"context"
	"time"

	"github.com/tern-net/tern/ipam"
)

// apiCalls are the requests to the API server that a reconcile pass needs
// but must not wait for: a pass never blocks on the network. Each runs in a
// goroutine of its own, which posts its answer back and triggers a pass; the
// reconcile goroutine takes the answer in, and alone changes state from it.
// Owned by the reconcile goroutine.
type apiCalls struct {
	// The NetworkUnavailable patch in flight, and its outcome.
	patching bool
	patched  chan error
	// The API server's word on pods that the cache says are gone: a batch in
	// flight, its answers, and those taken in but not yet used.
	checking bool
	checked  chan []podCheck
	answers  map[ipam.Key]podCheck
}

// podCheck is the API server's answer on the pod of an allocation.
type podCheck struct {
	key  ipam.Key
	gone bool
	err  error
}

// apiTimeout bounds each call to the API server.
const apiTimeout = 10 * time.Second

// setNetworkAvailable patches the node's NetworkUnavailable condition without
// waiting: it takes in the outcome of the patch in flight (done once one has
// succeeded), or starts one.
func (a *Agent) setNetworkAvailable(ctx context.Context) (done bool, err error) {
	c := &a.api
	if c.patched == nil {
		c.patched = make(chan error, 1)
	}
	if c.patching {
		select {
		case err := <-c.patched:
			c.patching = false
			return err == nil, err
		default:
			return false, nil // its goroutine triggers a pass when it is over
		}
	}
	c.patching = true
	go func(out chan<- error) {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		out <- a.cluster.SetNetworkAvailable(ctx)
		a.Trigger()
	}(c.patched)
	return false, nil
}

// podAnswer returns the API server's answer on al's pod when it has come, and
// otherwise notes al for the next batch of questions (askPods).
func (a *Agent) podAnswer(al ipam.Allocation, ask *[]ipam.Allocation) (podCheck, bool) {
	c := &a.api
	select {
	case out := <-c.checked: // a nil channel: nothing asked yet
		c.checking = false
		if c.answers == nil {
			c.answers = map[ipam.Key]podCheck{}
		}
		for _, p := range out {
			c.answers[p.key] = p
		}
	default:
	}
	p, ok := c.answers[al.Key]
	if !ok {
		*ask = append(*ask, al)
		return p, false
	}
	delete(c.answers, al.Key)
	return p, true
}

// askPods asks the API server, in a goroutine, about the pods of ask, unless
// a batch is in flight (ask waits for the pass after it), and forgets the
// answers on allocations that are no longer missing: they may be stale.
func (a *Agent) askPods(ctx context.Context, ask []ipam.Allocation, missing map[ipam.Key]bool) {
	c := &a.api
	for k := range c.answers {
		if !missing[k] {
			delete(c.answers, k)
		}
	}
	if c.checking || len(ask) == 0 {
		return
	}
	if c.checked == nil {
		c.checked = make(chan []podCheck, 1)
	}
	c.checking = true
	go func(out chan<- []podCheck) {
		var answers []podCheck
		for _, al := range ask {
			cctx, cancel := context.WithTimeout(ctx, apiTimeout)
			gone, err := a.cluster.PodGone(cctx, al.Namespace, al.Pod, al.PodUID)
			cancel()
			answers = append(answers, podCheck{key: al.Key, gone: gone, err: err})
			if err != nil {
				break // the API server does not answer: the rest wait for another batch
			}
		}
		out <- answers
		a.Trigger()
	}(c.checked)
}

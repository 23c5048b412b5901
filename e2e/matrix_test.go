package e2e

// The truth-table machinery of the NetworkPolicy tests (policy_test.go).
//
// A case states what it expects as a model: a small predicate over
// (from-pod, to-pod, port/protocol) written in the case itself, from the
// NetworkPolicy semantics, without tern's policy compiler or evaluator (using
// them would test the code against itself). The observation is one probe per
// cell, made from inside the source pod's network namespace. The two are
// compared, again and again while the agents catch up, and printed side by
// side, one matrix per port/protocol, when they still differ.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
)

const (
	probeParallel = 48               // probes in flight at once
	probeTimeout  = time.Second      // per probe: no reply by then is a denial
	settleTimeout = 15 * time.Second // how long the agents get to converge
	roundPause    = 250 * time.Millisecond
)

// podRef names a pod of the matrix.
type podRef struct{ NS, Name string }

func (p podRef) String() string { return p.NS + "/" + p.Name }

// target is a port and protocol every pod of the matrix serves.
type target struct {
	Port  uint16
	Proto string // TCP or UDP: the lab serves no SCTP
}

func (t target) String() string { return fmt.Sprintf("%d/%s", t.Port, t.Proto) }

// probeTargets are the planes of the matrix.
var probeTargets = []target{{80, "TCP"}, {81, "TCP"}, {80, "UDP"}, {81, "UDP"}}

// cell is one probe: from a pod to a pod on a port/protocol.
type cell struct {
	From, To podRef
	T        target
}

func (c cell) String() string { return fmt.Sprintf("%s -> %s %s", c.From, c.To, c.T) }

// model says whether a case's policies allow a connection.
type model func(from, to podRef, t target) bool

// allowAll is the model with no NetworkPolicy at all.
func allowAll(podRef, podRef, target) bool { return true }

// truth is an expected matrix.
type truth map[cell]bool

// expected evaluates m on every cell. A pod's traffic to its own address
// never leaves its namespace, so no node can police it: loopback is always
// allowed, as upstream Kubernetes' netpol e2e has it (AllowLoopback).
func expected(pods []podRef, m model) truth {
	want := truth{}
	for _, from := range pods {
		for _, to := range pods {
			for _, tg := range probeTargets {
				want[cell{from, to, tg}] = from == to || m(from, to, tg)
			}
		}
	}
	return want
}

// outcome is one observed probe.
type outcome struct {
	Allowed bool
	Detail  string // the reply, or why there was none
}

// observation is an observed matrix.
type observation map[cell]outcome

// probeAll probes every cell, probeParallel at a time. A probe counts as
// allowed only if the reply names the pod probed.
func probeAll(ctx context.Context, pods []podRef, info map[string]lab.PodInfo) observation {
	work := make(chan cell)
	obs := observation{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range probeParallel {
		wg.Go(func() {
			for c := range work {
				o := probeCell(ctx, c, info)
				mu.Lock()
				obs[c] = o
				mu.Unlock()
			}
		})
	}
	for _, from := range pods {
		for _, to := range pods {
			for _, tg := range probeTargets {
				work <- cell{from, to, tg}
			}
		}
	}
	close(work)
	wg.Wait()
	return obs
}

func probeCell(ctx context.Context, c cell, info map[string]lab.PodInfo) outcome {
	from, to := info[c.From.String()], info[c.To.String()]
	if from.NetNS == "" || len(to.IPs) == 0 {
		return outcome{Detail: "pod not running"}
	}
	got, err := lab.Probe(ctx, from.NetNS, netip.AddrPortFrom(to.IPs[0], c.T.Port), c.T.Proto, probeTimeout)
	switch {
	case errors.Is(err, lab.ErrNoReply):
		return outcome{Detail: "no reply"}
	case errors.Is(err, syscall.ECONNREFUSED):
		return outcome{Detail: "refused"}
	case err != nil:
		return outcome{Detail: err.Error()}
	case got != c.To.String():
		return outcome{Detail: fmt.Sprintf("answered by %q", got)}
	}
	return outcome{Allowed: true, Detail: "reply " + got}
}

// differences lists, in matrix order, the cells where obs is not want.
func differences(pods []podRef, want truth, obs observation) []cell {
	var out []cell
	for _, tg := range probeTargets {
		for _, from := range pods {
			for _, to := range pods {
				c := cell{from, to, tg}
				if o, ok := obs[c]; !ok || o.Allowed != want[c] {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// maxDiffLines bounds the per-cell explanations under the matrices.
const maxDiffLines = 16

// render prints, for each port/protocol, the expected and the observed
// matrix side by side (rows: from, columns: to; "." allowed, "X" denied),
// the observed cells that differ from the expected in brackets, then what
// the first differing probes saw.
func render(pods []podRef, want truth, obs observation) string {
	w := 0
	for _, p := range pods {
		w = max(w, len(p.String()))
	}
	colw, roww := w+1, w+2
	for _, tg := range probeTargets {
		roww = max(roww, len(tg.String())+2)
	}
	var cols strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&cols, "%-*s", colw, p)
	}
	mark := func(allowed, known, differs bool) string {
		m := "X"
		switch {
		case !known:
			m = "?"
		case allowed:
			m = "."
		}
		open, closing := " ", " "
		if differs {
			open, closing = "[", "]"
		}
		return fmt.Sprintf("%-*s", colw, open+m+closing)
	}
	var b strings.Builder
	b.WriteString(`rows: from, columns: to; "." allowed, "X" denied, [ ] observed differs from expected` + "\n")
	for _, tg := range probeTargets {
		fmt.Fprintf(&b, "\n%-*s%-*s   %s\n", roww, tg, len(pods)*colw, "expected", "observed")
		fmt.Fprintf(&b, "%-*s%s   %s\n", roww, "", cols.String(), strings.TrimRight(cols.String(), " "))
		for _, from := range pods {
			var l, r strings.Builder
			for _, to := range pods {
				c := cell{from, to, tg}
				o, ok := obs[c]
				l.WriteString(mark(want[c], true, false))
				r.WriteString(mark(o.Allowed, ok, !ok || o.Allowed != want[c]))
			}
			fmt.Fprintf(&b, "%-*s%s   %s\n", roww, from, l.String(), strings.TrimRight(r.String(), " "))
		}
	}
	diff := differences(pods, want, obs)
	if len(diff) > 0 {
		b.WriteString("\n")
	}
	for i, c := range diff {
		if i == maxDiffLines {
			fmt.Fprintf(&b, "  ... and %d more\n", len(diff)-maxDiffLines)
			break
		}
		verdict := map[bool]string{true: "allowed", false: "denied"}
		o, ok := obs[c]
		if !ok {
			o.Detail = "not probed"
		}
		fmt.Fprintf(&b, "  %s: expected %s, observed %s (%s)\n", c, verdict[want[c]], verdict[o.Allowed], o.Detail)
	}
	return b.String()
}

// expectMatrix probes the whole matrix until it equals m's or settleTimeout
// has passed since the call (the agents apply policies asynchronously), and
// then fails printing the expected and the last observed matrices.
func expectMatrix(t *testing.T, pods []podRef, info map[string]lab.PodInfo, what string, m model) {
	t.Helper()
	want := expected(pods, m)
	allowed := 0
	for _, ok := range want {
		if ok {
			allowed++
		}
	}
	t0 := time.Now()
	for round := 1; ; round++ {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		obs := probeAll(c, pods, info)
		cancel()
		diff := differences(pods, want, obs)
		if len(diff) == 0 {
			t.Logf("%s: matrix as expected (%d of %d probes allowed) after %s, round %d",
				what, allowed, len(want), time.Since(t0).Round(10*time.Millisecond), round)
			return
		}
		if time.Since(t0) >= settleTimeout {
			t.Fatalf("%s: after %s (%d rounds) %d of %d probes still differ from the expected matrix:\n%s",
				what, time.Since(t0).Round(10*time.Millisecond), round, len(diff), len(want), render(pods, want, obs))
		}
		time.Sleep(roundPause)
	}
}

// TestPolicyMatrixRender: the mismatch report brackets exactly the differing
// cells, in the right plane, and explains them. Pure: it probes nothing.
func TestPolicyMatrixRender(t *testing.T) {
	pods := []podRef{{"x", "a"}, {"x", "b"}, {"y", "a"}}
	want := expected(pods, func(from, to podRef, tg target) bool { return to.NS != "x" || tg.Proto == "UDP" })
	obs := observation{}
	for c, ok := range want {
		obs[c] = outcome{Allowed: ok, Detail: "as expected"}
	}
	wrong := cell{pods[2], pods[0], target{81, "TCP"}} // y/a -> x/a 81/TCP: denied, seen allowed
	obs[wrong] = outcome{Allowed: true, Detail: "reply x/a"}
	out := render(pods, want, obs)
	t.Logf("\n%s", out)
	if n := strings.Count(out, "["); n != 2 { // one in the legend, one cell
		t.Errorf("%d bracketed cells, want 1", n-1)
	}
	// In the 81/TCP plane, y/a's row: expected X X . | observed [.] X .
	plane := out[strings.Index(out, "\n81/TCP"):strings.Index(out, "\n80/UDP")]
	if !strings.Contains(plane, "\ny/a      X   X   .     [.]  X   .\n") {
		t.Errorf("81/TCP plane:\n%s", plane)
	}
	if !strings.Contains(out, "y/a -> x/a 81/TCP: expected denied, observed allowed (reply x/a)") {
		t.Errorf("no explanation of the differing cell in:\n%s", out)
	}
	if d := differences(pods, want, obs); len(d) != 1 || d[0] != wrong {
		t.Errorf("differences: %v, want [%v]", d, wrong)
	}
}

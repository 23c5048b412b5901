package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
)

func TestLabPhases(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	full := lab.Timings{
		Up: t0, KubeEnvUp: 20 * time.Second, ControlPlaneUp: t0.Add(30 * time.Second),
		NodesStarted: map[string]time.Time{"n1": t0.Add(31 * time.Second), "n2": t0.Add(33 * time.Second)},
		Ready:        t0.Add(50 * time.Second),
	}
	ph, err := phasesOf(full, []string{"n1", "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if ph.controlPlane != 30*time.Second || ph.kubeEnv != 20*time.Second || !ph.lastStarted.Equal(t0.Add(33*time.Second)) {
		t.Fatalf("%+v", ph)
	}

	// Every milestone missing is named; none is a silent zero.
	_, err = phasesOf(lab.Timings{Up: t0, NodesStarted: map[string]time.Time{"n1": t0}}, []string{"n1", "n2"})
	if err == nil {
		t.Fatal("missing milestones accepted")
	}
	for _, want := range []string{"kubeEnvUp", "controlPlaneUp", "ready", "nodesStarted[n2]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "nodesStarted[n1]") || strings.Contains(err.Error(), " up") {
		t.Errorf("%v: names a milestone that is there", err)
	}
}

func TestLabLogWaitsAndRestarts(t *testing.T) {
	log := `time=2025-01-02T03:04:05.000Z level=INFO msg="control plane up" took=30s
time=2025-01-02T03:04:06.000Z level=INFO msg=waiting for="agents ready (3 of 20)"
time=2025-01-02T03:04:09.500Z level=WARN msg="process exited; restarting in 1 s" name="tern-agent n4"
time=2025-01-02T03:04:10.000Z level=INFO msg=waiting for="routes"
`
	ev := parseLabLog(log)
	if ev.restarts != 1 || len(ev.waits) != 2 {
		t.Fatalf("%+v", ev)
	}
	if ev.waits[0].what != "agents ready (3 of 20)" || ev.waits[0].took != 3500*time.Millisecond || !strings.HasSuffix(ev.waits[1].what, "(never came)") {
		t.Fatalf("%+v", ev.waits)
	}
}

package bench

import (
	"os"
	"testing"

	"github.com/tern-net/tern/internal/kubetest"
)

// TestMain runs the benchmarks with the shared control plane, or, started
// by a BGP benchmark with envSpeaker set, one node's BGP speaker.
func TestMain(m *testing.M) {
	if path := os.Getenv(envSpeaker); path != "" {
		os.Exit(runSpeaker(path))
	}
	kubetest.Main(m)
}

package agent

import (
	"testing"
	"time"

	"github.com/tern-net/tern/bgp"
)

// TestSettle: routes not relearned after a restart are swept once every
// graceful-restart peer has sent End-of-RIB, a moment after plain peers came
// up, or when the graceful-restart time is over; never while a peer is down.
func TestSettle(t *testing.T) {
	up := func(gr, eor bool) bgp.PeerStatus {
		return bgp.PeerStatus{State: "Established", GracefulRestart: gr, EndOfRIB: eor}
	}
	down := bgp.PeerStatus{State: "Active"}
	for _, tc := range []struct {
		name       string
		peers      []bgp.PeerStatus
		configured int
		upFor      time.Duration // since the last peer came up
		runFor     time.Duration // since the speaker started
		want       bool
	}{
		{"all sent End-of-RIB", []bgp.PeerStatus{up(true, true), up(true, true)}, 2, 0, time.Second, true},
		{"one End-of-RIB missing", []bgp.PeerStatus{up(true, true), up(true, false)}, 2, time.Minute, time.Minute, false},
		{"a peer down", []bgp.PeerStatus{up(true, true), down}, 2, time.Minute, time.Minute, false},
		{"plain peer just up", []bgp.PeerStatus{up(false, false)}, 1, 0, time.Second, false},
		{"plain peer up a while", []bgp.PeerStatus{up(false, false)}, 1, settleTime, time.Minute, true},
		{"mixed, waiting for the plain one", []bgp.PeerStatus{up(true, true), up(false, false)}, 2, 0, time.Second, false},
		{"no peers", nil, 0, 0, 0, true},
		{"graceful restart time over", []bgp.PeerStatus{down}, 1, 0, 3 * time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &routing{peers: tc.peers, started: time.Now().Add(-tc.runFor)}
			if tc.upFor > 0 {
				r.upSince = time.Now().Add(-tc.upFor)
			}
			r.settle(tc.configured, 2*time.Minute)
			if r.settled != tc.want {
				t.Errorf("settled = %v, want %v", r.settled, tc.want)
			}
		})
	}
}

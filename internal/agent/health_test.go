package agent

import (
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/ipam"
)

// scrape returns the agent's /metrics, as Prometheus reads them.
func scrape(t *testing.T, a *Agent) string {
	t.Helper()
	rec := httptest.NewRecorder()
	a.healthHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: status %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// TestMetricsPerFamily: on a dual-stack node the session, route and pool
// figures come per address family, each session and pool under its own.
func TestMetricsPerFamily(t *testing.T) {
	cfg := Config{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd10:244:1::/120")}}
	ta := newTestAgent(t, cfg, ipam.NewMemStore())
	for i := range 3 {
		decode[agentapi.Allocation](t, ta.do(t, "POST", agentapi.PathAllocate, allocBody(fmt.Sprint("c", i), "eth0", fmt.Sprint(hostveth.Prefix, i))), 200)
	}
	a := ta.a
	a.metrics = newMetrics()
	a.metrics.register(a)
	a.bgpView = bgpView(dualStackPass())
	body := scrape(t, a)
	for _, want := range []string{
		// Per session, with its family.
		`tern_bgp_session_up{family="ipv4",kind="mesh",peer="10.40.0.2"} 1`,
		`tern_bgp_session_up{family="ipv6",kind="mesh",peer="fd40::2"} 1`,
		`tern_bgp_session_up{family="ipv6",kind="mesh",peer="fd40::3"} 0`,
		`tern_bgp_prefixes_received{family="ipv6",kind="mesh",peer="fd40::2"} 4`,
		`tern_bgp_prefixes_sent{family="ipv4",kind="mesh",peer="10.40.0.3"} 2`,
		// Per family.
		`tern_bgp_sessions{family="ipv4"} 2`,
		`tern_bgp_sessions{family="ipv6"} 3`,
		`tern_bgp_sessions_established{family="ipv4"} 2`,
		`tern_bgp_sessions_established{family="ipv6"} 1`,
		`tern_bgp_routes_installed{family="ipv4"} 2`,
		`tern_bgp_routes_installed{family="ipv6"} 1`,
		`tern_bgp_prefixes_announced{family="ipv4"} 2`,
		`tern_bgp_prefixes_announced{family="ipv6"} 1`,
		// IPAM: a pool per family.
		`tern_ipam_addresses_in_use{cidr="10.244.1.0/24",family="ipv4"} 3`,
		`tern_ipam_addresses_in_use{cidr="fd10:244:1::/120",family="ipv6"} 3`,
		`tern_ipam_addresses_capacity{cidr="10.244.1.0/24",family="ipv4"} 254`,
		`tern_ipam_addresses_capacity{cidr="fd10:244:1::/120",family="ipv6"} 255`,
		"tern_ipam_allocations 3",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// TestMetricsWithoutBGP: no BGP pass yet, no BGP figures (not zeros that
// would read as every session down).
func TestMetricsWithoutBGP(t *testing.T) {
	ta := newTestAgent(t, dualStack, ipam.NewMemStore())
	ta.a.metrics = newMetrics()
	ta.a.metrics.register(ta.a)
	body := scrape(t, ta.a)
	if strings.Contains(body, "\ntern_bgp_session") || strings.Contains(body, "\ntern_bgp_routes_installed{") {
		t.Errorf("BGP figures without BGP:\n%s", body)
	}
	if !strings.Contains(body, `tern_ipam_addresses_in_use{cidr="fd00:10:244:1::/64",family="ipv6"} 0`) {
		t.Errorf("/metrics lacks the IPv6 pool:\n%s", body)
	}
}

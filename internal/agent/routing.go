package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/k8s"
)

// routing is the BGP side of the agent, owned by the reconcile goroutine.
type routing struct {
	speaker *bgp.Speaker
	global  bgp.Global
	started time.Time
	// settled: every peer has been up long enough to have sent its routes
	// (or the graceful-restart time is over): routes not relearned may go.
	settled bool
	upSince time.Time
	peers   []bgp.PeerStatus // as of the last pass
	// downSince: peers not established, since when; warned: logged once.
	downSince  map[string]time.Time
	warned     map[string]bool
	warnedPlan map[string]bool // the plan's warnings of the last pass, logged once each
	// leaving: since when the speaker's routes are withdrawn for a node gone
	// from the API; its sessions close leaveDelay later, in another pass.
	leaving time.Time
}

// leaveDelay: between the withdrawals and the Cease, so that peers receive
// the withdrawals first.
const leaveDelay = 200 * time.Millisecond

// downWarnAfter: a session not up after this long gets a log line.
const downWarnAfter = 20 * time.Second

func sameIdentity(a, b bgp.Global) bool {
	return a.ASN == b.ASN && a.RouterID == b.RouterID && a.ListenPort == b.ListenPort && slices.Equal(a.ListenAddrs, b.ListenAddrs)
}

// settleTime: after the last peer came up, how long its routes may take.
const settleTime = 3 * time.Second

// syncBGP plans this node's BGP from the API, applies it to the speaker, and
// installs the routes learned.
func (a *Agent) syncBGP(ctx context.Context) error {
	local, err := k8s.BGPNode(a.localNode)
	if err != nil {
		return err
	}
	nodes, cfg, specs, errs := a.cluster.BGPInput()
	for _, e := range errs {
		if errors.Is(e, k8s.ErrCustomResourcesNotSynced) || errors.Is(e, k8s.ErrSecretsNotSynced) {
			return nil // the watcher triggers a pass when they are in
		}
	}
	svcIPs, err := a.cluster.ServiceIPs()
	if err != nil {
		errs = append(errs, err)
	}
	g, d, err := bgp.Plan(bgp.Snapshot{Local: local, Nodes: nodes, Config: cfg, Peers: specs, ServiceIPs: svcIPs})
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	r := &a.routing
	if !r.leaving.IsZero() {
		// The node is back before its leave was over: finish it (the
		// sessions close), then start afresh.
		if time.Since(r.leaving) < leaveDelay {
			return nil // leaveBGP's timer triggers the pass
		}
		a.leaveBGP(ctx)
	}
	// Only the speaker's identity restarts it (with a Cease to every peer);
	// a changed graceful-restart time waits for the next start.
	if r.speaker != nil && !sameIdentity(r.global, g) {
		a.log.Info("BGP identity changed; restarting the speaker", "from", r.global, "to", g)
		_ = r.speaker.Stop(ctx, true)
		r.speaker = nil
	}
	if r.speaker == nil {
		sp, err := bgp.Start(a.runCtx, g, a.log, a.Trigger)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		r.speaker, r.global, r.started, r.settled = sp, g, time.Now(), false
		a.log.Info("BGP speaker started", "asn", g.ASN, "routerID", g.RouterID, "port", g.ListenPort)
	}
	if err := r.speaker.Apply(ctx, d); err != nil {
		errs = append(errs, err)
	}
	warnings := append(slices.Clone(d.Warnings), outsideClusterCIDRs(nodes, a.cfg.ClusterCIDRs)...)
	if len(d.Unannounced) > 0 {
		warnings = append(warnings, fmt.Sprintf("pod CIDRs %v not announced: the node has no address of their family (IPv4 %v, IPv6 %v; InternalIP, or the tern.io/address annotation)",
			d.Unannounced, local.IPv4, local.IPv6))
	}
	for _, w := range warnings {
		if !r.warnedPlan[w] {
			a.log.Warn("BGP: " + w)
		}
	}
	r.warnedPlan = map[string]bool{}
	for _, w := range warnings {
		r.warnedPlan[w] = true
	}
	routes, err := r.speaker.Routes(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	r.peers, _ = r.speaker.Peers(ctx)
	r.settle(len(d.Peers), cfg.GracefulRestart)
	a.warnDownPeers(d.Peers)

	allowed := importRanges(nodes, a.cfg.ClusterCIDRs)
	// Service ranges are never imported: every node announces the cluster
	// IP range and kube-proxy serves it on every node, so a learned route
	// for it could only carry a packet to an IP no Service holds from node
	// to node (or back to a router) until its TTL ran out.
	var learned []dataplane.LearnedRoute
	for _, rt := range routes {
		learned = append(learned, dataplane.LearnedRoute{Dst: rt.Prefix, Gateways: rt.NextHops})
	}
	keep, dropped := dataplane.FilterImport(learned, allowed, local.PodCIDRs)
	if len(dropped) > 0 {
		a.log.Debug("BGP routes not imported (outside the cluster's ranges, or this node's own)", "prefixes", dropped)
	}
	st, err := dataplane.SyncLearned(keep, r.settled)
	if err != nil {
		errs = append(errs, err)
	}
	a.mu.Lock()
	a.writes += uint64(st.Added + st.Replaced + st.Deleted)
	a.bgpView = bgpView(g, local, d, r.peers, keep)
	a.mu.Unlock()
	return errors.Join(errs...)
}

// settle decides when routes that were not relearned may be removed.
func (r *routing) settle(configured int, grace time.Duration) {
	if r.settled {
		return
	}
	up, eor, plain := 0, 0, 0
	for _, p := range r.peers {
		if p.State == "Established" {
			up++
			switch {
			case p.EndOfRIB:
				eor++
			case !p.GracefulRestart:
				plain++
			}
		}
	}
	switch {
	case up >= configured && up > 0:
		if r.upSince.IsZero() {
			r.upSince = time.Now()
		}
		// Peers with graceful restart say when they have sent everything
		// (End-of-RIB); for the others, wait a little after the last came up.
		r.settled = eor+plain == up && (plain == 0 || time.Since(r.upSince) >= settleTime)
	case configured == 0:
		r.settled = true
	default:
		r.upSince = time.Time{}
	}
	if grace <= 0 {
		grace = bgp.DefaultGracefulRestart
	}
	if time.Since(r.started) > grace {
		r.settled = true
	}
}

// leaveBGP is for a node that is gone from the API: withdraw its routes and
// close its sessions with a Cease, so that peers flush it at once. It does
// not wait in the pass: the first call withdraws and asks for a pass
// leaveDelay later; the call of that pass (or of any later one) closes the
// sessions.
func (a *Agent) leaveBGP(ctx context.Context) {
	r := &a.routing
	if r.speaker == nil {
		return
	}
	if r.leaving.IsZero() {
		if err := r.speaker.Withdraw(ctx); err != nil {
			a.log.Warn("withdraw on leaving", "err", err)
		}
		r.leaving = time.Now()
		time.AfterFunc(leaveDelay, a.Trigger)
		return
	}
	if time.Since(r.leaving) < leaveDelay {
		return // the timer triggers the pass that goes on
	}
	if err := r.speaker.Stop(ctx, true); err != nil {
		a.log.Warn("stop BGP", "err", err)
	}
	if _, err := dataplane.SyncLearned(nil, true); err != nil {
		a.log.Warn("remove learned routes on leaving", "err", err)
	}
	r.speaker, r.leaving = nil, time.Time{}
	a.mu.Lock()
	a.bgpView = agentapi.BGP{}
	a.mu.Unlock()
	a.log.Info("node removed from the API: BGP routes withdrawn, sessions closed")
}

// warnDownPeers logs, once per outage, a session that has not come up.
func (a *Agent) warnDownPeers(configured []bgp.Peer) {
	r := &a.routing
	if r.downSince == nil {
		r.downSince, r.warned = map[string]time.Time{}, map[string]bool{}
	}
	withPassword := map[string]bool{}
	for _, p := range configured {
		withPassword[p.Address.String()] = p.Password != ""
	}
	now := time.Now()
	for _, p := range r.peers {
		k := p.Address.String()
		if p.State == "Established" {
			delete(r.downSince, k)
			delete(r.warned, k)
			continue
		}
		since, ok := r.downSince[k]
		if !ok {
			r.downSince[k] = now
			continue
		}
		if now.Sub(since) >= min(downWarnAfter, 5*a.cfg.Resync) && !r.warned[k] {
			r.warned[k] = true
			hint := "check that the peer is reachable, and the AS numbers on both sides"
			if withPassword[k] {
				hint += ", and the MD5 password: with a wrong one the peer's kernel drops every TCP segment, so nothing else reports it"
			}
			a.log.Warn("BGP session not established", "peer", k, "asn", p.ASN, "kind", p.Kind, "state", p.State,
				"for", now.Sub(since).Round(time.Second), "hint", hint)
		}
	}
}

// importRanges are the prefixes routes may be imported for, per family:
// the cluster CIDRs of that family (--cluster-cidr), or without one of
// that family every node's pod CIDRs of it (as the node's NAT rules do), so
// that a cluster-cidr naming IPv4 alone on a dual-stack cluster still lets
// the IPv6 pod routes in.
func importRanges(nodes []bgp.NodeInfo, cluster []netip.Prefix) []netip.Prefix {
	out := slices.Clone(cluster)
	for _, v6 := range []bool{false, true} {
		if slices.ContainsFunc(cluster, func(p netip.Prefix) bool { return p.Addr().Is6() == v6 }) {
			continue
		}
		for _, n := range nodes {
			for _, c := range n.PodCIDRs {
				if c.Addr().Is6() == v6 {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// outsideClusterCIDRs says which nodes' pod CIDRs lie outside the cluster
// CIDRs of their family the agent was given (--cluster-cidr, the
// ConfigMap's cluster-cidr): their routes are not imported, and with NAT on
// for that family traffic to them is masqueraded. A family the cluster CIDRs
// do not name falls back to the nodes' pod CIDRs (importRanges).
func outsideClusterCIDRs(nodes []bgp.NodeInfo, cluster []netip.Prefix) []string {
	var out []string
	for _, n := range nodes {
		for _, c := range n.PodCIDRs {
			fam := slices.DeleteFunc(slices.Clone(cluster), func(p netip.Prefix) bool { return p.Addr().Is6() != c.Addr().Is6() })
			if len(fam) > 0 && !slices.ContainsFunc(fam, func(p netip.Prefix) bool { return p.Bits() <= c.Bits() && p.Contains(c.Addr()) }) {
				out = append(out, fmt.Sprintf("node %s's pod CIDR %s is outside the cluster CIDRs %v: its routes are not imported (and with NAT on for its family, traffic to it is masqueraded); set the ConfigMap's cluster-cidr (--cluster-cidr) to every pod range of the cluster, one per family", n.Name, c, fam))
			}
		}
	}
	return out
}

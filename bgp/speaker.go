package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// connectRetry is short: GoBGP's default (120 s, jittered up to 240 s) keeps a
// dropped session down for minutes.
const connectRetry = 3 // seconds

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// Speaker is the embedded GoBGP server.
type Speaker struct {
	s      *server.BgpServer
	log    *slog.Logger
	global Global
	cancel context.CancelFunc // ends the event watch

	mu    sync.Mutex // one Apply at a time
	peers map[netip.Addr]Peer
	ann   map[netip.Prefix]Announcement
}

// Start runs a speaker. changed is called (from GoBGP's goroutines; it must
// not block) whenever a best path or a peer's state changes.
func Start(ctx context.Context, g Global, log *slog.Logger, changed func()) (*Speaker, error) {
	if g.ASN == 0 || !g.RouterID.Is4() {
		return nil, fmt.Errorf("BGP: need an AS number and an IPv4 router ID (have AS %d, router ID %v)", g.ASN, g.RouterID)
	}
	s := server.NewBgpServer(server.LoggerOption(&logger{log: log.With("component", "gobgp")}))
	go s.Serve()
	sp := &Speaker{s: s, log: log, global: g, peers: map[netip.Addr]Peer{}, ann: map[netip.Prefix]Announcement{}}
	gl := &api.Global{Asn: g.ASN, RouterId: g.RouterID.String(), ListenPort: g.ListenPort}
	for _, a := range g.ListenAddrs {
		gl.ListenAddresses = append(gl.ListenAddresses, a.String())
	}
	if g.GracefulRestart > 0 {
		gl.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(g.GracefulRestart.Seconds())}
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: gl}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("start BGP (AS %d, router ID %s, port %d): %w", g.ASN, g.RouterID, g.ListenPort, err)
	}
	watchCtx, cancel := context.WithCancel(ctx)
	sp.cancel = cancel
	err := s.WatchEvent(watchCtx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}, func(*api.WatchEventResponse) { changed() })
	if err != nil {
		cancel()
		_ = s.StopBgp(ctx, &api.StopBgpRequest{})
		s.Stop()
		return nil, fmt.Errorf("watch BGP events: %w", err)
	}
	return sp, nil
}

// Apply brings peers and announcements to d, changing only what differs.
func (sp *Speaker) Apply(ctx context.Context, d Desired) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var errs []error
	// Announcements first: a peer added below gets them before End-of-RIB.
	wantAnn := map[netip.Prefix]Announcement{}
	for _, a := range d.Announcements {
		wantAnn[a.Prefix.Masked()] = a
	}
	addA, delA := diffAnnouncements(sp.ann, wantAnn)
	for _, a := range delA {
		if err := sp.s.DeletePath(ctx, &api.DeletePathRequest{Family: family(a.Prefix), Path: apiPath(a)}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", a.Prefix, err))
			continue
		}
		delete(sp.ann, a.Prefix)
		sp.log.Info("BGP withdraw", "prefix", a.Prefix)
	}
	for _, a := range addA {
		if _, err := sp.s.AddPath(ctx, &api.AddPathRequest{Path: apiPath(a)}); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", a.Prefix, err))
			continue
		}
		sp.ann[a.Prefix] = a
		sp.log.Info("BGP announce", "prefix", a.Prefix, "nexthop", a.NextHop)
	}
	want := map[netip.Addr]Peer{}
	for _, p := range d.Peers {
		if err := p.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		want[p.Address] = p
	}
	add, del, change := diffPeers(sp.peers, want)
	for _, p := range append(del, change...) {
		if err := sp.s.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %s: %w", p.Address, err))
			continue
		}
		delete(sp.peers, p.Address)
	}
	for _, p := range append(add, change...) {
		if err := sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: sp.apiPeer(p)}); err != nil {
			errs = append(errs, fmt.Errorf("add peer %s (AS %d): %w", p.Address, p.ASN, err))
			continue
		}
		sp.peers[p.Address] = p
		sp.log.Info("BGP peer configured", "peer", p.Address, "asn", p.ASN, "kind", p.Kind, "passive", p.Passive)
	}

	return errors.Join(errs...)
}

func (sp *Speaker) apiPeer(p Peer) *api.Peer {
	hold, ka := uint64(90), uint64(30)
	switch {
	case p.HoldTime == NoHoldTime:
		hold, ka = 0, 0
	case p.HoldTime > 0:
		hold = uint64(p.HoldTime.Seconds())
		ka = hold / 3
	}
	if p.Keepalive > 0 && hold > 0 {
		ka = uint64(p.Keepalive.Seconds())
	}
	out := &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: connectRetry, HoldTime: hold, KeepaliveInterval: ka}},
		Transport: &api.Transport{PassiveMode: p.Passive},
	}
	if p.LocalAddress.IsValid() {
		out.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.Multihop > 0 {
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	if p.RRClient {
		out.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.ClusterID.String()}
	}
	gr := p.GracefulRestart > 0
	if gr {
		out.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(p.GracefulRestart.Seconds())}
	}
	// One family per session, the family of the peer's address: its next
	// hops are then always addresses of the session's own family
	// (DESIGN.md, "BGP and address families").
	f := familyV4
	if p.Address.Is6() {
		f = familyV6
	}
	as := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}}
	if gr {
		as.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	out.AfiSafis = append(out.AfiSafis, as)
	return out
}

func family(p netip.Prefix) *api.Family {
	if p.Addr().Is4() {
		return familyV4
	}
	return familyV6
}

func apiPath(a Announcement) *api.Path {
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: a.Prefix.Addr().String(), PrefixLen: uint32(a.Prefix.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	attrs := []*anypb.Any{origin}
	if a.Prefix.Addr().Is4() {
		nh, _ := anypb.New(&api.NextHopAttribute{NextHop: a.NextHop.String()})
		attrs = append(attrs, nh)
	} else {
		mp, _ := anypb.New(&api.MpReachNLRIAttribute{Family: familyV6, NextHops: []string{a.NextHop.String()}, Nlris: []*anypb.Any{nlri}})
		attrs = append(attrs, mp)
	}
	if len(a.Communities) > 0 {
		c, _ := anypb.New(&api.CommunitiesAttribute{Communities: a.Communities})
		attrs = append(attrs, c)
	}
	if len(a.LargeCommunities) > 0 {
		lc := &api.LargeCommunitiesAttribute{}
		for _, l := range a.LargeCommunities {
			lc.Communities = append(lc.Communities, &api.LargeCommunity{GlobalAdmin: l.Global, LocalData1: l.Local1, LocalData2: l.Local2})
		}
		c, _ := anypb.New(lc)
		attrs = append(attrs, c)
	}
	return &api.Path{Family: family(a.Prefix), Nlri: nlri, Pattrs: attrs}
}

// Routes returns the best paths learned from peers (not this speaker's own),
// with every equally good next hop.
func (sp *Speaker) Routes(ctx context.Context) ([]Route, error) {
	var out []Route
	for _, f := range []*api.Family{familyV4, familyV6} {
		err := sp.s.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: f}, func(d *api.Destination) {
			if r, ok := bestPaths(d); ok {
				out = append(out, r)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("list BGP paths: %w", err)
		}
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return out, nil
}

// bestPaths turns a destination into a Route: the best path's next hop, and
// those of the other paths equal to it in local preference, AS path length,
// origin and MED (multipath).
func bestPaths(d *api.Destination) (Route, bool) {
	var best *api.Path
	for _, p := range d.Paths {
		if p.Best && !p.IsWithdraw && !p.Filtered {
			best = p
		}
	}
	if best == nil || !fromPeer(best) {
		return Route{}, false
	}
	prefix, err := netip.ParsePrefix(d.Prefix)
	if err != nil {
		return Route{}, false
	}
	bk := rank(best)
	r := Route{Prefix: prefix.Masked()}
	for _, p := range d.Paths {
		if p.IsWithdraw || p.Filtered || !fromPeer(p) || rank(p) != bk {
			continue
		}
		if nh, ok := nextHop(p); ok && !slices.Contains(r.NextHops, nh) {
			r.NextHops = append(r.NextHops, nh)
		}
	}
	slices.SortFunc(r.NextHops, netip.Addr.Compare)
	return r, len(r.NextHops) > 0
}

func fromPeer(p *api.Path) bool {
	ip, err := netip.ParseAddr(p.NeighborIp)
	return err == nil && ip.IsValid() && !ip.IsUnspecified()
}

type pathRank struct {
	localPref, med uint32
	asPathLen      int
	origin         uint32
}

func rank(p *api.Path) pathRank {
	r := pathRank{localPref: 100}
	for _, a := range p.Pattrs {
		switch {
		case a.MessageIs(&api.LocalPrefAttribute{}):
			var v api.LocalPrefAttribute
			if a.UnmarshalTo(&v) == nil {
				r.localPref = v.LocalPref
			}
		case a.MessageIs(&api.MultiExitDiscAttribute{}):
			var v api.MultiExitDiscAttribute
			if a.UnmarshalTo(&v) == nil {
				r.med = v.Med
			}
		case a.MessageIs(&api.OriginAttribute{}):
			var v api.OriginAttribute
			if a.UnmarshalTo(&v) == nil {
				r.origin = v.Origin
			}
		case a.MessageIs(&api.AsPathAttribute{}):
			var v api.AsPathAttribute
			if a.UnmarshalTo(&v) == nil {
				for _, s := range v.Segments {
					r.asPathLen += len(s.Numbers)
				}
			}
		}
	}
	return r
}

func nextHop(p *api.Path) (netip.Addr, bool) {
	for _, a := range p.Pattrs {
		switch {
		case a.MessageIs(&api.NextHopAttribute{}):
			var v api.NextHopAttribute
			if a.UnmarshalTo(&v) == nil {
				ip, err := netip.ParseAddr(v.NextHop)
				return ip, err == nil
			}
		case a.MessageIs(&api.MpReachNLRIAttribute{}):
			var v api.MpReachNLRIAttribute
			if a.UnmarshalTo(&v) == nil && len(v.NextHops) > 0 {
				// A global next hop first; a link-local one follows it.
				ip, err := netip.ParseAddr(v.NextHops[0])
				return ip, err == nil
			}
		}
	}
	return netip.Addr{}, false
}

// Peers returns every configured peer's state.
func (sp *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	sp.mu.Lock()
	kinds := map[string]string{}
	gr := map[string]bool{}
	for a, p := range sp.peers {
		kinds[a.String()] = p.Kind
		gr[a.String()] = p.GracefulRestart > 0
	}
	sp.mu.Unlock()
	var out []PeerStatus
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		st := PeerStatus{Address: addr, ASN: p.GetConf().GetPeerAsn(), Kind: kinds[addr.String()]}
		st.State = sessionState(p.GetState().GetSessionState())
		if ts := p.GetTimers().GetState(); ts != nil {
			if st.State == "Established" && ts.GetUptime() != nil {
				st.Since = ts.GetUptime().AsTime()
			} else if ts.GetDowntime() != nil {
				st.Since = ts.GetDowntime().AsTime()
			}
		}
		eor, grFams := true, 0
		for _, as := range p.GetAfiSafis() {
			if g := as.GetMpGracefulRestart().GetState(); g.GetEnabled() && g.GetReceived() {
				grFams++
				eor = eor && g.GetEndOfRibReceived()
			}
			st.Received += as.GetState().GetReceived()
			sent := as.GetState().GetAdvertised()
			if gr[addr.String()] && sent > 0 {
				sent-- // GoBGP counts the End-of-RIB marker it sends with graceful restart
			}
			st.Sent += sent
		}
		st.GracefulRestart = grFams > 0
		st.EndOfRIB = st.GracefulRestart && eor && st.State == "Established"
		out = append(out, st)
	})
	slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return out, err
}

func sessionState(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_ESTABLISHED:
		return "Established"
	case api.PeerState_IDLE:
		return "Idle"
	case api.PeerState_CONNECT:
		return "Connect"
	case api.PeerState_ACTIVE:
		return "Active"
	case api.PeerState_OPENSENT:
		return "OpenSent"
	case api.PeerState_OPENCONFIRM:
		return "OpenConfirm"
	default:
		return "Unknown"
	}
}

// Stop ends the speaker. With cease, peers are told (a Cease notification)
// and flush this node's routes at once: for a node that is leaving. Without
// it, the process just goes: peers that help with graceful restart keep the
// routes until the agent is back.
func (sp *Speaker) Stop(ctx context.Context, cease bool) error {
	if !cease {
		return nil
	}
	sp.cancel()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := sp.s.StopBgp(ctx, &api.StopBgpRequest{})
	sp.s.Stop()
	return err
}

// Withdraw takes back every announcement, keeping the sessions.
func (sp *Speaker) Withdraw(ctx context.Context) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var errs []error
	for p, a := range sp.ann {
		if err := sp.s.DeletePath(ctx, &api.DeletePathRequest{Family: family(a.Prefix), Path: apiPath(a)}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", a.Prefix, err))
			continue
		}
		delete(sp.ann, p)
	}
	return errors.Join(errs...)
}

// logger adapts GoBGP's logger to slog.
type logger struct{ log *slog.Logger }

var _ gobgplog.Logger = (*logger)(nil)

func (l *logger) attrs(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		out = append(out, k, v)
	}
	return out
}
func (l *logger) Panic(msg string, f gobgplog.Fields) { l.log.Error(msg, l.attrs(f)...); panic(msg) }
func (l *logger) Fatal(msg string, f gobgplog.Fields) { l.log.Error(msg, l.attrs(f)...) }
func (l *logger) Error(msg string, f gobgplog.Fields) { l.log.Error(msg, l.attrs(f)...) }
func (l *logger) Warn(msg string, f gobgplog.Fields)  { l.log.Warn(msg, l.attrs(f)...) }
func (l *logger) Info(msg string, f gobgplog.Fields)  { l.log.Info(msg, l.attrs(f)...) }
func (l *logger) Debug(msg string, f gobgplog.Fields) { l.log.Debug(msg, l.attrs(f)...) }
func (l *logger) SetLevel(gobgplog.LogLevel)          {}
func (l *logger) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }

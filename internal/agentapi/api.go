// Package agentapi is the wire contract between tern-agent and its local clients
// (the CNI plugin and ternctl): JSON over HTTP on the agent's unix socket.
package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tern-net/tern/hostveth"
)

// Paths served on the socket.
const (
	PathStatus      = "/v1/status"
	PathAllocate    = "/v1/allocate"
	PathRelease     = "/v1/release"
	PathAllocation  = "/v1/allocation"
	PathAllocations = "/v1/allocations"
	PathGC          = "/v1/gc"
	PathBGP         = "/v1/bgp"
	PathPolicy      = "/v1/policy"
)

// DefaultSocket is where the CNI plugin finds the agent unless configured.
const DefaultSocket = "/run/tern/cni.sock"

// Attachment names one CNI attachment.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AllocateRequest asks for an attachment's addresses.
type AllocateRequest struct {
	Attachment
	Network   string `json:"network,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	PodUID    string `json:"podUID,omitempty"`
	HostIf    string `json:"hostIf"`
	Netns     string `json:"netns,omitempty"`
}

// Allocation is the agent's record of an attachment.
type Allocation struct {
	Attachment
	Network   string       `json:"network,omitempty"`
	Namespace string       `json:"namespace,omitempty"`
	Pod       string       `json:"pod,omitempty"`
	PodUID    string       `json:"podUID,omitempty"`
	HostIf    string       `json:"hostIf"`
	Netns     string       `json:"netns,omitempty"`
	IPs       []netip.Addr `json:"ips"`
	Created   time.Time    `json:"created"`
	// MTU is the MTU of the node's uplink, for the pod's interface (answers
	// to allocate only).
	MTU int `json:"mtu,omitempty"`
}

// ReleaseRequest frees an attachment's addresses. Dispose lists host veths of
// the attachment, already without routes, that the agent deletes after it
// answers: deleting a veth waits for the kernel (an RCU grace period, 10-20 ms)
// and the runtime need not wait for that.
type ReleaseRequest struct {
	Attachment
	Dispose []hostveth.Link `json:"dispose,omitempty"`
}

// Address families, as the API and the agent's metrics name them.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
)

// Family is the address family of a: FamilyIPv4 (an IPv4-mapped IPv6
// address too), FamilyIPv6, or "" for the zero Addr.
func Family(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return ""
	case a.Unmap().Is4():
		return FamilyIPv4
	default:
		return FamilyIPv6
	}
}

// BGP is the agent's BGP speaker and what it installed. The speaker runs one
// session per address family, between two addresses of that family; each
// peer and route says which family it is of, and Families sums them up.
type BGP struct {
	Enabled  bool       `json:"enabled"`
	ASN      uint32     `json:"asn,omitempty"`
	RouterID netip.Addr `json:"routerID,omitzero"`
	// IPv4 and IPv6 are the node's addresses, the local ends of its
	// sessions of each family; either may be unset.
	IPv4   netip.Addr `json:"ipv4,omitzero"`
	IPv6   netip.Addr `json:"ipv6,omitzero"`
	Peers  []BGPPeer  `json:"peers"`
	Routes []BGPRoute `json:"routes"`
	// Announced are the prefixes the node announces (its pod CIDRs, and the
	// Service addresses the BGPConfiguration advertises).
	Announced []netip.Prefix `json:"announced,omitempty"`
	// Families has one entry per family the node has an address, a session,
	// a route or an announcement of: IPv4 first.
	Families []BGPFamily `json:"families,omitempty"`
}

// BGPFamily sums up one address family's sessions and routes.
type BGPFamily struct {
	Family string `json:"family"` // FamilyIPv4 or FamilyIPv6
	// Configured sessions (the peers the node is to have), and of them the
	// established ones.
	Configured  int `json:"configured"`
	Established int `json:"established"`
	// Received and Sent: prefixes, over the family's sessions.
	Received uint64 `json:"received"`
	Sent     uint64 `json:"sent"`
	// Routes learned and installed; Announced prefixes.
	Routes    int `json:"routes"`
	Announced int `json:"announced"`
}

// BGPPeer is one session.
type BGPPeer struct {
	Address  netip.Addr `json:"address"`
	Family   string     `json:"family"` // of Address: the one family the session carries
	ASN      uint32     `json:"asn"`
	Kind     string     `json:"kind"` // mesh, peer, reflector, reflector-client
	State    string     `json:"state"`
	Since    time.Time  `json:"since,omitzero"`
	Received uint64     `json:"received"`
	Sent     uint64     `json:"sent"`
	// GracefulRestart: both sides negotiated it; EndOfRIB: the peer has sent
	// its End-of-RIB marker for every family since the session came up.
	GracefulRestart bool `json:"gracefulRestart,omitempty"`
	EndOfRIB        bool `json:"endOfRib,omitempty"`
}

// BGPRoute is a route tern installed from BGP; several gateways make an
// ECMP route.
type BGPRoute struct {
	Dst      netip.Prefix `json:"dst"`
	Family   string       `json:"family"`
	Gateways []netip.Addr `json:"gateways"`
}

// Status is the agent's readiness.
type Status struct {
	Version  string         `json:"version"`
	Ready    bool           `json:"ready"`
	Reason   string         `json:"reason,omitempty"`
	Node     string         `json:"node"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	Pools    []PoolUsage    `json:"pools"`
	// DataplaneWrites counts the kernel writes (routes added or deleted,
	// chains rewritten) the agent made since it started.
	DataplaneWrites uint64 `json:"dataplaneWrites"`
}

// PoolUsage counts the addresses of one pod CIDR (a node has at most one
// per family).
type PoolUsage struct {
	CIDR   netip.Prefix `json:"cidr"`
	Family string       `json:"family"`
	Size   uint64       `json:"size"`
	InUse  int          `json:"inUse"`
}

// GCRequest lists the attachments of a network that the runtime still has.
type GCRequest struct {
	Network string       `json:"network"`
	Valid   []Attachment `json:"valid"`
}

// GCResponse lists the network's stale allocations: not valid, and older than
// the agent's --gc-min-age. Nothing is released yet: the plugin takes each
// one's veth down first, then releases it as DEL does.
type GCResponse struct {
	Stale []Allocation `json:"stale"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeNotFound   = "NotFound"
	CodePoolFull   = "PoolFull"
	CodeBadRequest = "BadRequest"
	CodeNotReady   = "NotReady"
	CodeInternal   = "Internal"
)

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrUnreachable wraps failures to reach the agent at all.
var ErrUnreachable = errors.New("tern-agent unreachable")

// IsCode reports whether err is an agent Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Client talks to the agent over its unix socket. It speaks the small part
// of HTTP the agent needs (HTTP/1.0, one request per connection) without
// net/http, which would double the CNI plugin's size and add a
// millisecond to every exec of it.
type Client struct {
	socket    string
	timeout   time.Duration
	waitStart bool
}

// NewClient returns a client of the agent at socket. timeout bounds each
// call, the waits of WaitForStart included.
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{socket: socket, timeout: timeout}
}

// WaitForStart returns a client whose calls wait for an agent that is
// starting: its socket is not there yet or refuses connections (nothing was
// sent), or it answers NotReady (it refused the request, and released any
// address the request had made it allocate). The call is tried again after
// 50 ms, then 100 ms, then every 200 ms, until the client's timeout or ctx
// ends; then the last failure is returned. A failure after the request went
// out (no answer in time, a broken connection) is never tried again: the
// agent may have acted on it.
func (c *Client) WaitForStart() *Client {
	w := *c
	w.waitStart = true
	return &w
}

// Pauses between the tries of WaitForStart.
const (
	firstPause = 50 * time.Millisecond
	maxPause   = 200 * time.Millisecond
)

// Status asks whether the agent is ready.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, "GET", PathStatus, nil, &st)
	return st, err
}

// Allocate asks for the addresses of an attachment.
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (Allocation, error) {
	var al Allocation
	err := c.do(ctx, "POST", PathAllocate, req, &al)
	return al, err
}

// Get returns the agent's record of an attachment.
func (c *Client) Get(ctx context.Context, a Attachment) (Allocation, error) {
	var al Allocation
	q := url.Values{"containerID": {a.ContainerID}, "ifName": {a.IfName}}
	err := c.do(ctx, "GET", PathAllocation+"?"+q.Encode(), nil, &al)
	return al, err
}

// Release frees an attachment's addresses; it returns the released record, or a
// NotFound error when there was none. The veths in dispose are deleted in
// either case.
func (c *Client) Release(ctx context.Context, a Attachment, dispose ...hostveth.Link) (Allocation, error) {
	var al Allocation
	err := c.do(ctx, "POST", PathRelease, ReleaseRequest{Attachment: a, Dispose: dispose}, &al)
	return al, err
}

// List returns every allocation.
func (c *Client) List(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := c.do(ctx, "GET", PathAllocations, nil, &out)
	return out, err
}

// BGP returns the speaker's sessions and the routes it installed.
func (c *Client) BGP(ctx context.Context) (BGP, error) {
	var out BGP
	err := c.do(ctx, "GET", PathBGP, nil, &out)
	return out, err
}

// PodPolicy is the NetworkPolicy in force for one pod on the node.
type PodPolicy struct {
	Pod    string       `json:"pod"`
	HostIf string       `json:"hostIf"`
	IPs    []netip.Addr `json:"ips"`
	// Ingress/Egress: the NetworkPolicies ("namespace/name") selecting the
	// pod in that direction.
	Ingress []string `json:"ingress"`
	Egress  []string `json:"egress"`
	// The ClusterNetworkPolicies whose rules of a direction apply to the
	// pod, by tier, in the order they are evaluated (the Baseline tier's
	// only when no NetworkPolicy isolates the pod). A direction none of
	// these name is open.
	AdminIngress    []string `json:"adminIngress,omitempty"`
	AdminEgress     []string `json:"adminEgress,omitempty"`
	BaselineIngress []string `json:"baselineIngress,omitempty"`
	BaselineEgress  []string `json:"baselineEgress,omitempty"`
	IngressChain    string   `json:"ingressChain,omitempty"`
	EgressChain     string   `json:"egressChain,omitempty"`
	IngressRules    []string `json:"ingressRules,omitempty"`
	EgressRules     []string `json:"egressRules,omitempty"`
	// The rules of the IPv6 chains of the same names (ip6tables), on a
	// node with IPv6 pods; the fields above are the IPv4 chains'.
	IngressRulesIPv6 []string `json:"ingressRulesIPv6,omitempty"`
	EgressRulesIPv6  []string `json:"egressRulesIPv6,omitempty"`
	// The tail chains (the tiers after the Admin tier, gone to from the
	// chains above) of a pod with Admin rules and later ones, with their
	// rules of each family.
	IngressTailChain     string      `json:"ingressTailChain,omitempty"`
	EgressTailChain      string      `json:"egressTailChain,omitempty"`
	IngressTailRules     []string    `json:"ingressTailRules,omitempty"`
	EgressTailRules      []string    `json:"egressTailRules,omitempty"`
	IngressTailRulesIPv6 []string    `json:"ingressTailRulesIPv6,omitempty"`
	EgressTailRulesIPv6  []string    `json:"egressTailRulesIPv6,omitempty"`
	Sets                 []PolicySet `json:"sets,omitempty"`
}

// PolicySet is an ipset the pod's rules use.
type PolicySet struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Family  string `json:"family,omitempty"` // FamilyIPv4 or FamilyIPv6
	Comment string `json:"comment"`
	Members int    `json:"members"`
}

// Policy returns the NetworkPolicy in force for the pod "namespace/name".
func (c *Client) Policy(ctx context.Context, pod string) (PodPolicy, error) {
	var out PodPolicy
	err := c.do(ctx, "GET", PathPolicy+"?pod="+url.QueryEscape(pod), nil, &out)
	return out, err
}

// GC lists the allocations of network that are not in valid.
func (c *Client) GC(ctx context.Context, network string, valid []Attachment) (GCResponse, error) {
	var out GCResponse
	err := c.do(ctx, "POST", PathGC, GCRequest{Network: network, Valid: valid}, &out)
	return out, err
}

// maxAnswer bounds what the client reads from the agent.
const maxAnswer = 16 << 20

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	pause := firstPause
	var notReady error // the agent's last NotReady: its reason beats a timeout's
	for {
		err := c.once(ctx, method, path, body, in != nil, out)
		if notReady != nil && ctx.Err() != nil {
			return notReady
		}
		if !c.waitStart || !starting(err) {
			return err
		}
		if IsCode(err, CodeNotReady) {
			notReady = err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
}

// HeaderBudget carries, in milliseconds, how long the client still waits
// for the answer; an agent that has to wait for something answers before
// then.
const HeaderBudget = "Tern-Budget-Ms"

// ParseBudget reads the value of HeaderBudget: the time the client still
// waits, less a margin for the answer's way back; ok is false when the
// client did not say.
func ParseBudget(v string) (time.Duration, bool) {
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return 0, false
	}
	const margin = 100 * time.Millisecond
	return max(time.Duration(ms)*time.Millisecond-margin, time.Millisecond), true
}

// starting reports whether err says the agent is starting and did nothing
// with the request: it answered NotReady, or no connection was made.
func starting(err error) bool {
	var dial *dialError
	return IsCode(err, CodeNotReady) || errors.As(err, &dial) &&
		(errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EAGAIN))
}

// dialError is a failure to connect: nothing was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// once makes one request.
func (c *Client) once(ctx context.Context, method, path string, body []byte, hasBody bool, out any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socket, &dialError{err})
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var req bytes.Buffer
	// HTTP/1.0: one request per connection, and never a chunked answer.
	fmt.Fprintf(&req, "%s %s HTTP/1.0\r\nHost: tern-agent\r\n", method, path)
	if dl, ok := ctx.Deadline(); ok {
		// The agent answers within what is left, rather than after the
		// client has stopped listening.
		fmt.Fprintf(&req, "%s: %d\r\n", HeaderBudget, max(time.Until(dl).Milliseconds(), 1))
	}
	if hasBody {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return fmt.Errorf("%w at %s: send: %w", ErrUnreachable, c.socket, err)
	}
	status, data, err := readAnswer(bufio.NewReader(conn))
	if err != nil {
		return fmt.Errorf("%w at %s: read answer: %w", ErrUnreachable, c.socket, err)
	}
	if status/100 != 2 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e = &Error{Code: CodeInternal, Message: fmt.Sprintf("HTTP %d: %s", status, bytes.TrimSpace(data))}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer of %s: %w", path, err)
	}
	return nil
}

// readAnswer reads an HTTP response: status line, headers, and a body of
// Content-Length bytes (or up to EOF without one).
func readAnswer(r *bufio.Reader) (int, []byte, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, nil, err
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0, nil, fmt.Errorf("not an HTTP answer: %q", line)
	}
	status, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, nil, fmt.Errorf("status line %q: %w", line, err)
	}
	length := -1
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			return 0, nil, err
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		switch {
		case strings.EqualFold(k, "Content-Length"):
			if length, err = strconv.Atoi(strings.TrimSpace(v)); err != nil || length < 0 || length > maxAnswer {
				return 0, nil, fmt.Errorf("bad Content-Length %q", v)
			}
		case strings.EqualFold(k, "Transfer-Encoding"):
			return 0, nil, fmt.Errorf("unexpected Transfer-Encoding %q", v)
		}
	}
	if length >= 0 {
		data := make([]byte, length)
		_, err := io.ReadFull(r, data)
		return status, data, err
	}
	data, err := io.ReadAll(io.LimitReader(r, maxAnswer))
	return status, data, err
}

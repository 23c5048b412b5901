// Package agentapi is the wire contract between tern-agent and its local clients
// (the CNI plugin and ternctl): JSON over HTTP on the agent's unix socket.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// Paths served on the socket.
const (
	PathStatus      = "/v1/status"
	PathAllocate    = "/v1/allocate"
	PathRelease     = "/v1/release"
	PathAllocation  = "/v1/allocation"
	PathAllocations = "/v1/allocations"
	PathGC          = "/v1/gc"
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
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	HostIf    string `json:"hostIf"`
	Netns     string `json:"netns,omitempty"`
}

// Allocation is the agent's record of an attachment.
type Allocation struct {
	Attachment
	Namespace string       `json:"namespace,omitempty"`
	Pod       string       `json:"pod,omitempty"`
	HostIf    string       `json:"hostIf"`
	Netns     string       `json:"netns,omitempty"`
	IPs       []netip.Addr `json:"ips"`
	Created   time.Time    `json:"created"`
	// MTU is the MTU of the node's uplink, for the pod's interface (answers
	// to allocate only).
	MTU int `json:"mtu,omitempty"`
}

// Status is the agent's readiness.
type Status struct {
	Ready    bool           `json:"ready"`
	Reason   string         `json:"reason,omitempty"`
	Node     string         `json:"node"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	Pools    []PoolUsage    `json:"pools"`
	// DataplaneWrites counts the kernel writes (routes added or deleted,
	// chains rewritten) the agent made since it started.
	DataplaneWrites uint64 `json:"dataplaneWrites"`
}

// PoolUsage counts the addresses of one pod CIDR.
type PoolUsage struct {
	CIDR  netip.Prefix `json:"cidr"`
	Size  uint64       `json:"size"`
	InUse int          `json:"inUse"`
}

// GCRequest lists the attachments the runtime still has.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse says what was released and which host interfaces belong to
// allocations that remain.
type GCResponse struct {
	Released []Allocation `json:"released"`
	KeepIfs  []string     `json:"keepInterfaces"`
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

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the agent at socket.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Status asks whether the agent is ready.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &st)
	return st, err
}

// Allocate asks for the addresses of an attachment.
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (Allocation, error) {
	var al Allocation
	err := c.do(ctx, http.MethodPost, PathAllocate, req, &al)
	return al, err
}

// Get returns the agent's record of an attachment.
func (c *Client) Get(ctx context.Context, a Attachment) (Allocation, error) {
	var al Allocation
	q := url.Values{"containerID": {a.ContainerID}, "ifName": {a.IfName}}
	err := c.do(ctx, http.MethodGet, PathAllocation+"?"+q.Encode(), nil, &al)
	return al, err
}

// Release frees an attachment's addresses; it returns the released record, or a
// NotFound error when there was none.
func (c *Client) Release(ctx context.Context, a Attachment) (Allocation, error) {
	var al Allocation
	err := c.do(ctx, http.MethodPost, PathRelease, a, &al)
	return al, err
}

// List returns every allocation.
func (c *Client) List(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := c.do(ctx, http.MethodGet, PathAllocations, nil, &out)
	return out, err
}

// GC releases every allocation not in valid.
func (c *Client) GC(ctx context.Context, valid []Attachment) (GCResponse, error) {
	var out GCResponse
	err := c.do(ctx, http.MethodPost, PathGC, GCRequest{Valid: valid}, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tern-agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%w at %s: read answer: %w", ErrUnreachable, c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e = &Error{Code: CodeInternal, Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(data))}
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

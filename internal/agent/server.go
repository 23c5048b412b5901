package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/ipam"
)

// handler serves the agent's API on its unix socket.
func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.PathStatus, a.serveStatus)
	mux.HandleFunc("POST "+agentapi.PathAllocate, a.serveAllocate)
	mux.HandleFunc("POST "+agentapi.PathRelease, a.serveRelease)
	mux.HandleFunc("GET "+agentapi.PathAllocation, a.serveGet)
	mux.HandleFunc("GET "+agentapi.PathAllocations, a.serveList)
	mux.HandleFunc("POST "+agentapi.PathGC, a.serveGC)
	mux.HandleFunc("GET "+agentapi.PathPolicy, a.servePolicy)
	mux.HandleFunc("GET "+agentapi.PathBGP, func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		v := a.bgpView
		a.mu.Unlock()
		writeJSON(w, http.StatusOK, v)
	})
	return mux
}

func (a *Agent) serveStatus(w http.ResponseWriter, _ *http.Request) {
	st := agentapi.Status{Node: a.cfg.NodeName, Version: a.cfg.Version, PodCIDRs: a.ipam.Pools()}
	st.Ready, st.Reason = a.readiness()
	a.mu.Lock()
	st.DataplaneWrites = a.writes
	a.mu.Unlock()
	for _, u := range a.ipam.Usage() {
		st.Pools = append(st.Pools, agentapi.PoolUsage{CIDR: u.Pool, Family: agentapi.Family(u.Pool.Addr()), Size: u.Size, InUse: u.InUse})
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *Agent) serveAllocate(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	var req agentapi.AllocateRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !strings.HasPrefix(req.HostIf, hostveth.Prefix) || len(req.HostIf) > 15 {
		writeError(w, http.StatusBadRequest, agentapi.CodeBadRequest,
			fmt.Sprintf("hostIf %q is not a tern host veth name (%q and at most 11 more characters)", req.HostIf, hostveth.Prefix))
		return
	}
	if ready, reason := a.readiness(); !ready {
		writeError(w, http.StatusServiceUnavailable, agentapi.CodeNotReady, reason)
		return
	}
	al, err := a.ipam.Allocate(ipam.Request{
		Key:     ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName},
		Network: req.Network, Namespace: req.Namespace, Pod: req.Pod, PodUID: req.PodUID, HostIf: req.HostIf, Netns: req.Netns,
	})
	switch {
	case errors.Is(err, ipam.ErrPoolFull) || errors.Is(err, ipam.ErrNoPools):
		a.log.Warn("allocation refused", "attachment", req.Attachment, "pod", req.Namespace+"/"+req.Pod, "err", err)
		writeError(w, http.StatusConflict, agentapi.CodePoolFull, err.Error())
		return
	case errors.Is(err, ipam.ErrInvalidKey):
		writeError(w, http.StatusBadRequest, agentapi.CodeBadRequest, err.Error())
		return
	case err != nil:
		a.log.Error("allocation failed", "attachment", req.Attachment, "err", err)
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	a.log.Debug("allocated", "attachment", req.Attachment, "pod", req.Namespace+"/"+req.Pod, "ips", al.IPs)
	ctx := r.Context()
	if budget, ok := agentapi.ParseBudget(r.Header.Get(agentapi.HeaderBudget)); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, budget)
		defer cancel()
	}
	if err := a.awaitPolicy(ctx, req.Namespace, req.Pod, req.PodUID); err != nil {
		// Fail closed: no address for a pod whose rules are not in force.
		// An allocation this request made is released; the runtime retries.
		if !al.Created.Before(started) {
			if _, rerr := a.ipam.Release(al.Key); rerr != nil {
				a.log.Warn("release after a failed policy wait", "attachment", req.Attachment, "err", rerr)
			}
		}
		a.log.Warn("pod refused for now", "pod", req.Namespace+"/"+req.Pod, "err", err)
		writeError(w, http.StatusServiceUnavailable, agentapi.CodeNotReady, err.Error())
		return
	}
	out := toAPI(al)
	out.MTU = a.uplinkMTU()
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) serveRelease(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ReleaseRequest
	if !readJSON(w, r, &req) {
		return
	}
	for _, l := range req.Dispose {
		if !strings.HasPrefix(l.Name, hostveth.Prefix) || l.Index <= 0 {
			writeError(w, http.StatusBadRequest, agentapi.CodeBadRequest, fmt.Sprintf("dispose: %+v is not a tern host veth", l))
			return
		}
	}
	al, err := a.ipam.Release(ipam.Key{ContainerID: req.ContainerID, IfName: req.IfName})
	if err == nil || errors.Is(err, ipam.ErrNotFound) {
		a.dispose(req.Dispose)
	}
	if errors.Is(err, ipam.ErrNotFound) {
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, fmt.Sprintf("no allocation for %s/%s", req.ContainerID, req.IfName))
		return
	}
	if err != nil {
		a.log.Error("release failed", "attachment", req.Attachment, "err", err)
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	a.log.Debug("released", "attachment", req.Attachment, "ips", al.IPs)
	writeJSON(w, http.StatusOK, toAPI(al))
}

func (a *Agent) serveGet(w http.ResponseWriter, r *http.Request) {
	key := ipam.Key{ContainerID: r.URL.Query().Get("containerID"), IfName: r.URL.Query().Get("ifName")}
	if err := key.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeBadRequest, err.Error())
		return
	}
	al, err := a.ipam.Get(key)
	if err != nil {
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, fmt.Sprintf("no allocation for %s", key))
		return
	}
	writeJSON(w, http.StatusOK, toAPI(al))
}

func (a *Agent) serveList(w http.ResponseWriter, _ *http.Request) {
	list := a.ipam.List()
	out := make([]agentapi.Allocation, 0, len(list))
	for _, al := range list {
		out = append(out, toAPI(al))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) serveGC(w http.ResponseWriter, r *http.Request) {
	var req agentapi.GCRequest
	if !readJSON(w, r, &req) {
		return
	}
	valid := map[ipam.Key]bool{}
	for _, v := range req.Valid {
		valid[ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName}] = true
	}
	resp := agentapi.GCResponse{Stale: []agentapi.Allocation{}}
	youngest := time.Now().Add(-a.cfg.GCMinAge)
	for _, al := range a.ipam.List() {
		// Another network's allocations are not this GC's to judge; an ADD
		// may be in flight for a young one.
		if valid[al.Key] || (al.Network != "" && al.Network != req.Network) || al.Created.After(youngest) {
			continue
		}
		resp.Stale = append(resp.Stale, toAPI(al))
	}
	writeJSON(w, http.StatusOK, resp)
}

func toAPI(al ipam.Allocation) agentapi.Allocation {
	return agentapi.Allocation{
		Attachment: agentapi.Attachment{ContainerID: al.ContainerID, IfName: al.IfName},
		Network:    al.Network, Namespace: al.Namespace, PodUID: al.PodUID, Pod: al.Pod, HostIf: al.HostIf, Netns: al.Netns,
		IPs: append([]netip.Addr(nil), al.IPs...), Created: al.Created,
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeBadRequest, "malformed request: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"code":"Internal","message":"cannot encode the answer"}`)
	}
	data = append(data, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, agentapi.Error{Code: code, Message: msg})
}

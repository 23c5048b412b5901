// The control socket the CLI talks to, and the state it reports (also
// written to state.json).

package lab

import (
	"encoding/json"
	"errors"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tern-net/tern/internal/kubenode"
)

// State returns the lab's state.
func (d *daemon) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := State{PID: os.Getpid(), Phase: d.phase, Error: d.err, Config: d.cfg, Kubeconfig: d.admin, KubeDir: d.kubeDir, Namespaces: slices.Clone(d.shared),
		MountPoints: slices.Clone(d.mountPoints), Tunables: maps.Clone(d.tunables), Timings: d.timings}
	s.Timings.NodesStarted = maps.Clone(d.timings.NodesStarted)
	for _, ln := range d.nodes {
		ns := NodeState{Node: ln.Node, NetNS: ln.netns, Dir: ln.dir, Socket: filepath.Join(ln.dir, "run", "cni.sock")}
		if ln.real != nil {
			// The DaemonSet's agent: its hostPath /run/tern is the node's.
			ns.Socket = ln.real.HostPath("/run/tern/cni.sock")
			if pids := ln.real.PIDsOf("tern-agent"); len(pids) == 1 {
				ns.AgentPID = pids[0]
			}
		}
		if ln.agent != nil {
			ns.AgentPID = ln.agent.PID()
			ln.agent.mu.Lock()
			ns.Restarts = ln.agent.restarts
			ln.agent.mu.Unlock()
		}
		s.Nodes = append(s.Nodes, ns)
	}
	slices.SortFunc(s.Nodes, func(a, b NodeState) int { return a.Number - b.Number })
	for _, lr := range d.routers {
		rs := RouterState{Router: lr.Router, NetNS: lr.netns, ClientNetNS: lr.client, Dir: lr.dir}
		for _, p := range lr.procs {
			rs.PIDs = append(rs.PIDs, p.PID())
		}
		s.Routers = append(s.Routers, rs)
	}
	return s
}

// writeState records the state on disk for `down` and for cleanup after a crash.
func (d *daemon) writeState() {
	b, _ := json.MarshalIndent(d.State(), "", "  ")
	tmp := StatePath(d.cfg.Dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		_ = os.Rename(tmp, StatePath(d.cfg.Dir))
	}
}

// Pods lists the pods the lab's kubelets run.
func (d *daemon) Pods() []PodInfo {
	d.mu.Lock()
	var ks []*kubelet
	real := map[string]*kubenode.Node{}
	for _, ln := range d.nodes {
		if ln.kubelet != nil {
			ks = append(ks, ln.kubelet)
		}
		if ln.real != nil {
			real[ln.Name] = ln.real
		}
	}
	d.mu.Unlock()
	var out []PodInfo
	for _, k := range ks {
		out = append(out, k.Pods()...)
	}
	if len(real) > 0 {
		out = append(out, d.realPods(real)...)
	}
	slices.SortFunc(out, func(a, b PodInfo) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// serveControl serves the CLI's requests on the lab's unix socket.
func (d *daemon) serveControl() (*http.Server, error) {
	path := SocketPath(d.cfg.Dir)
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) { reply(w, d.State(), nil) })
	mux.HandleFunc("GET /pods", func(w http.ResponseWriter, r *http.Request) { reply(w, d.Pods(), nil) })
	mux.HandleFunc("POST /nodes", func(w http.ResponseWriter, r *http.Request) {
		rack, _ := strconv.Atoi(r.URL.Query().Get("rack"))
		if d.State().Phase != PhaseReady {
			reply(w, nil, errors.New("the lab is not ready"))
			return
		}
		n, err := d.AddNode(r.Context(), rack)
		reply(w, n, err)
	})
	mux.HandleFunc("DELETE /nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := d.removeNode(r.Context(), r.PathValue("name"))
		reply(w, map[string]string{"removed": r.PathValue("name")}, err)
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"stopping": "true"}, nil)
		go func() {
			time.Sleep(100 * time.Millisecond)
			d.mu.Lock()
			select {
			case <-d.down:
			default:
				close(d.down)
			}
			d.mu.Unlock()
		}()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

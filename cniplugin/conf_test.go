package cniplugin

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tern-net/tern/internal/agentapi"
)

// cniError returns err as a CNI error, failing the test if it is not one.
func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return e
}

func TestParseConfValid(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want NetConf // only the tern fields and CNIVersion/Name/Type are compared
	}{
		{
			name: "minimal 0.4.0 gets defaults",
			conf: `{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"tern"}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "0.4.0", Name: "k8s-pod-network", Type: "tern"},
				AgentSocket:    "/run/tern/cni.sock",
				TimeoutSeconds: 30,
			},
		},
		{
			name: "minimal 1.0.0 gets defaults",
			conf: `{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tern"}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "1.0.0", Name: "k8s-pod-network", Type: "tern"},
				AgentSocket:    "/run/tern/cni.sock",
				TimeoutSeconds: 30,
			},
		},
		{
			name: "minimal 1.1.0 gets defaults",
			conf: `{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"tern"}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "1.1.0", Name: "k8s-pod-network", Type: "tern"},
				AgentSocket:    "/run/tern/cni.sock",
				TimeoutSeconds: 30,
			},
		},
		{
			name: "every key set is kept",
			conf: `{"cniVersion":"1.0.0","name":"net","type":"tern","agentSocket":"/var/run/tern.sock",
				"mtu":1450,"logFile":"/var/log/tern.log","logLevel":"debug","agentTimeoutSeconds":5}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "1.0.0", Name: "net", Type: "tern"},
				AgentSocket:    "/var/run/tern.sock",
				MTU:            1450,
				LogFile:        "/var/log/tern.log",
				LogLevel:       "debug",
				TimeoutSeconds: 5,
			},
		},
		{
			name: "mtu bounds are inclusive",
			conf: `{"cniVersion":"1.0.0","name":"net","type":"tern","mtu":576,"agentTimeoutSeconds":600}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "1.0.0", Name: "net", Type: "tern"},
				AgentSocket:    "/run/tern/cni.sock",
				MTU:            576,
				TimeoutSeconds: 600,
			},
		},
		{
			name: "mtu upper bound and upper-case log level",
			conf: `{"cniVersion":"1.0.0","name":"net","type":"tern","mtu":65535,"logLevel":"WARN"}`,
			want: NetConf{
				PluginConf:     types.PluginConf{CNIVersion: "1.0.0", Name: "net", Type: "tern"},
				AgentSocket:    "/run/tern/cni.sock",
				MTU:            65535,
				LogLevel:       "WARN",
				TimeoutSeconds: 30,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConf([]byte(tt.conf))
			if err != nil {
				t.Fatalf("ParseConf: %v", err)
			}
			if got.CNIVersion != tt.want.CNIVersion || got.Name != tt.want.Name || got.Type != tt.want.Type {
				t.Errorf("plugin conf = %q/%q/%q, want %q/%q/%q", got.CNIVersion, got.Name, got.Type,
					tt.want.CNIVersion, tt.want.Name, tt.want.Type)
			}
			if got.AgentSocket != tt.want.AgentSocket {
				t.Errorf("AgentSocket = %q, want %q", got.AgentSocket, tt.want.AgentSocket)
			}
			if got.MTU != tt.want.MTU {
				t.Errorf("MTU = %d, want %d", got.MTU, tt.want.MTU)
			}
			if got.LogFile != tt.want.LogFile {
				t.Errorf("LogFile = %q, want %q", got.LogFile, tt.want.LogFile)
			}
			if got.LogLevel != tt.want.LogLevel {
				t.Errorf("LogLevel = %q, want %q", got.LogLevel, tt.want.LogLevel)
			}
			if got.TimeoutSeconds != tt.want.TimeoutSeconds {
				t.Errorf("TimeoutSeconds = %d, want %d", got.TimeoutSeconds, tt.want.TimeoutSeconds)
			}
			if got.PrevResult != nil {
				t.Errorf("PrevResult = %v, want nil without a prevResult key", got.PrevResult)
			}
		})
	}
}

func TestParseConfDefaultSocketIsTheAgents(t *testing.T) {
	if agentapi.DefaultSocket != "/run/tern/cni.sock" {
		t.Fatalf("agentapi.DefaultSocket = %q, want /run/tern/cni.sock", agentapi.DefaultSocket)
	}
}

func TestParseConfErrors(t *testing.T) {
	const (
		decode  = 6 // types.ErrDecodingFailure
		invalid = 7 // types.ErrInvalidNetworkConfig
	)
	tests := []struct {
		name    string
		conf    string
		code    uint
		msgHas  string // must appear in Msg
		details bool   // Details must be non-empty
	}{
		{"type is not tern", `{"cniVersion":"1.0.0","name":"n","type":"bridge"}`, invalid, `"type"`, true},
		{"ipam is present", `{"cniVersion":"1.0.0","name":"n","type":"tern","ipam":{"type":"host-local"}}`, invalid, `"ipam"`, true},
		{"ipam is present but empty", `{"cniVersion":"1.0.0","name":"n","type":"tern","ipam":{}}`, invalid, `"ipam"`, true},
		{"agentSocket is relative", `{"cniVersion":"1.0.0","name":"n","type":"tern","agentSocket":"run/tern.sock"}`, invalid, `"agentSocket"`, true},
		{"mtu below 576", `{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":575}`, invalid, `"mtu"`, true},
		{"mtu negative", `{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":-1}`, invalid, `"mtu"`, true},
		{"mtu above 65535", `{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":65536}`, invalid, `"mtu"`, true},
		{"logLevel unknown", `{"cniVersion":"1.0.0","name":"n","type":"tern","logLevel":"verbose"}`, invalid, `"logLevel"`, true},
		{"logFile relative", `{"cniVersion":"1.0.0","name":"n","type":"tern","logFile":"tern.log"}`, invalid, `"logFile"`, true},
		{"agentTimeoutSeconds negative", `{"cniVersion":"1.0.0","name":"n","type":"tern","agentTimeoutSeconds":-1}`, invalid, `"agentTimeoutSeconds"`, true},
		{"agentTimeoutSeconds above 600", `{"cniVersion":"1.0.0","name":"n","type":"tern","agentTimeoutSeconds":601}`, invalid, `"agentTimeoutSeconds"`, true},
		{"name empty", `{"cniVersion":"1.0.0","name":"","type":"tern"}`, invalid, `"name"`, true},
		{"name missing", `{"cniVersion":"1.0.0","type":"tern"}`, invalid, `"name"`, true},
		{"not JSON", `{"cniVersion":"1.0.0",`, decode, "cannot decode", true},
		{"empty input", ``, decode, "cannot decode", true},
		{"JSON array", `[]`, decode, "cannot decode", true},
		{"mtu is a string", `{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":"1500"}`, decode, "cannot decode", true},
		{"prevResult is garbage", `{"cniVersion":"1.0.0","name":"n","type":"tern","prevResult":{"ips":"nope"}}`, decode, "prevResult", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConf([]byte(tt.conf))
			if err == nil {
				t.Fatalf("ParseConf = %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("ParseConf returned a conf with its error: %+v", got)
			}
			e := cniError(t, err)
			if e.Code != tt.code {
				t.Errorf("Code = %d, want %d (msg %q)", e.Code, tt.code, e.Msg)
			}
			if !strings.Contains(e.Msg, tt.msgHas) {
				t.Errorf("Msg = %q, want it to name %s", e.Msg, tt.msgHas)
			}
			if tt.details && e.Details == "" {
				t.Errorf("Details is empty, want a hint for the operator (msg %q)", e.Msg)
			}
		})
	}
}

func TestParseConfPrevResult(t *testing.T) {
	tests := []struct {
		name    string
		version string
	}{
		{"0.4.0", "0.4.0"},
		{"1.0.0", "1.0.0"},
		{"1.1.0", "1.1.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := `{"cniVersion":"` + tt.version + `","name":"n","type":"tern","prevResult":{
				"cniVersion":"` + tt.version + `",
				"interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],
				"ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":0}],
				"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}}`
			got, err := ParseConf([]byte(conf))
			if err != nil {
				t.Fatalf("ParseConf: %v", err)
			}
			if got.PrevResult == nil {
				t.Fatal("PrevResult is nil, want the parsed prevResult")
			}
			if got.RawPrevResult != nil {
				t.Errorf("RawPrevResult = %v, want it consumed", got.RawPrevResult)
			}
			res, err := current.NewResultFromResult(got.PrevResult)
			if err != nil {
				t.Fatalf("convert prevResult: %v", err)
			}
			if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.244.1.5/32" {
				t.Errorf("prevResult IPs = %v, want [10.244.1.5/32]", res.IPs)
			}
			if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "eth0" {
				t.Errorf("prevResult interfaces = %v, want [eth0]", res.Interfaces)
			}
			if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
				t.Errorf("prevResult routes = %v, want [0.0.0.0/0]", res.Routes)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    string
		want    PodArgs
		wantErr bool
	}{
		{name: "empty", args: "", want: PodArgs{}},
		{
			name: "kubernetes pod args",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-abc;K8S_POD_INFRA_CONTAINER_ID=123;K8S_POD_UID=u-1",
			want: PodArgs{Namespace: "kube-system", Name: "coredns-abc", UID: "u-1"},
		},
		{name: "unknown keys only", args: "FOO=bar;IgnoreUnknown=true", want: PodArgs{}},
		{name: "empty segments", args: ";K8S_POD_NAMESPACE=default;;K8S_POD_NAME=web-0;", want: PodArgs{Namespace: "default", Name: "web-0"}},
		{name: "only separators", args: ";;;", want: PodArgs{}},
		{name: "value with equals sign", args: "K8S_POD_NAME=a=b", want: PodArgs{Name: "a=b"}},
		{name: "empty value", args: "K8S_POD_NAMESPACE=", want: PodArgs{}},
		{name: "pair without equals", args: "K8S_POD_NAMESPACE=default;garbage", wantErr: true},
		{name: "single word", args: "K8S_POD_NAME", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseArgs(tt.args)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseArgs(%q) = %+v, want an error", tt.args, got)
				}
				e := cniError(t, err)
				if e.Code != 4 {
					t.Errorf("Code = %d, want 4 (ErrInvalidEnvironmentVariables)", e.Code)
				}
				if !strings.Contains(e.Msg, "CNI_ARGS") {
					t.Errorf("Msg = %q, want it to name CNI_ARGS", e.Msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseArgs(%q): %v", tt.args, err)
			}
			if got != tt.want {
				t.Errorf("ParseArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
		})
	}
}

// FuzzParseConf checks that ParseConf never panics and that its answer is
// always either a usable conf or a CNI error with code 6 or 7.
func FuzzParseConf(f *testing.F) {
	seeds := []string{
		`{"cniVersion":"0.4.0","name":"n","type":"tern"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":1450,"logLevel":"debug"}`,
		`{"cniVersion":"1.1.0","name":"n","type":"tern","agentSocket":"/run/x.sock","logFile":"/tmp/t.log","agentTimeoutSeconds":5}`,
		`{"cniVersion":"1.0.0","name":"n","type":"bridge"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","ipam":{"type":"host-local"}}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","agentSocket":"rel.sock"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":100}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","mtu":70000}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","logLevel":"loud"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","logFile":"rel.log"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","agentTimeoutSeconds":9999}`,
		`{"cniVersion":"1.0.0","name":"","type":"tern"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"tern","prevResult":{"ips":[{"address":"10.0.0.1/32"}]}}`,
		`{"cniVersion":"0.4.0","name":"n","type":"tern","prevResult":{"interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.0.0.1/32","interface":0}]}}`,
		`{"cniVersion":"9.9.9","name":"n","type":"tern","prevResult":{}}`,
		"\x00\xff garbage",
		``,
		`null`,
		strings.Repeat("[", 5000) + strings.Repeat("]", 5000),
		`{"name":"n","a":` + strings.Repeat(`{"a":`, 2000) + `1` + strings.Repeat(`}`, 2000) + `}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConf(data)
		if err != nil {
			if conf != nil {
				t.Fatalf("ParseConf returned both a conf and an error: %+v, %v", conf, err)
			}
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not a *types.Error", err, err)
			}
			if e.Code != types.ErrDecodingFailure && e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error code %d, want 6 or 7: %v", e.Code, err)
			}
			return
		}
		if conf == nil {
			t.Fatal("ParseConf returned neither a conf nor an error")
		}
		if !filepath.IsAbs(conf.AgentSocket) {
			t.Errorf("AgentSocket %q is not absolute", conf.AgentSocket)
		}
		if conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 65535) {
			t.Errorf("MTU %d is out of range", conf.MTU)
		}
		if conf.TimeoutSeconds < 1 || conf.TimeoutSeconds > 600 {
			t.Errorf("TimeoutSeconds %d is out of range 1..600", conf.TimeoutSeconds)
		}
		if conf.Name == "" {
			t.Error("Name is empty")
		}
	})
}

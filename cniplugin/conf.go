// Package cniplugin is tern's CNI plugin: it parses what the runtime hands it,
// asks tern-agent for the pod's addresses over the agent's unix socket, and does
// the per-pod netlink work (a point-to-point veth with host routes).
package cniplugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tern-net/tern/internal/agentapi"
)

// SupportedVersions are the CNI spec versions tern accepts.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// NetConf is tern's plugin configuration.
type NetConf struct {
	types.PluginConf
	// AgentSocket is the agent's unix socket (default /run/tern/cni.sock).
	AgentSocket string `json:"agentSocket,omitempty"`
	// MTU of the pod's interface; 0 means the MTU of the host's uplink.
	MTU int `json:"mtu,omitempty"`
	// LogFile, if set, receives the plugin's log in addition to stderr.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `json:"logLevel,omitempty"`
	// TimeoutSeconds bounds each call to the agent (default 30).
	TimeoutSeconds int `json:"agentTimeoutSeconds,omitempty"`
}

// ParseConf decodes and validates a plugin configuration. Its errors are CNI
// errors with code 6 (cannot decode) or 7 (invalid configuration).
func ParseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the network configuration: "+err.Error(),
			"the runtime passed something that is not a JSON object of a CNI plugin configuration")
	}
	// "ipam" in any form (even empty) says the author expects an IPAM plugin
	// to run; tern will not, so say so rather than ignore it.
	var keys map[string]json.RawMessage
	if json.Unmarshal(data, &keys) == nil {
		if _, ok := keys["ipam"]; ok && conf.IPAM.Type == "" {
			conf.IPAM.Type = "(none)"
		}
	}
	if err := validate(conf); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid tern network configuration: "+err.Error(),
			"fix the conflist under the runtime's CNI configuration directory (usually /etc/cni/net.d)")
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = agentapi.DefaultSocket
	}
	if conf.TimeoutSeconds == 0 {
		conf.TimeoutSeconds = 30
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult: "+err.Error(), "")
		}
	}
	return conf, nil
}

func validate(c *NetConf) error {
	if c.Name == "" {
		return fmt.Errorf(`"name" is empty: every CNI network needs a name`)
	}
	if c.Type != "" && c.Type != "tern" {
		// The runtime picks the plugin by type; another type here means a copied binary.
		return fmt.Errorf(`"type" is %q; tern's plugin type is "tern"`, c.Type)
	}
	if c.IPAM.Type != "" {
		return fmt.Errorf(`"ipam" (type %q) is not supported: tern-agent owns pod addressing; remove the "ipam" key`, c.IPAM.Type)
	}
	if c.AgentSocket != "" && !filepath.IsAbs(c.AgentSocket) {
		return fmt.Errorf(`"agentSocket" %q is not an absolute path`, c.AgentSocket)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf(`"mtu" %d is out of range: use 576 to 65535, or leave it out to follow the host's uplink`, c.MTU)
	}
	if c.TimeoutSeconds < 0 || c.TimeoutSeconds > 600 {
		return fmt.Errorf(`"agentTimeoutSeconds" %d is out of range 1..600`, c.TimeoutSeconds)
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf(`"logLevel" %q: use debug, info, warn or error`, c.LogLevel)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return fmt.Errorf(`"logFile" %q is not an absolute path`, c.LogFile)
	}
	return nil
}

// PodArgs are the Kubernetes arguments the runtime passes in CNI_ARGS.
type PodArgs struct {
	Namespace string
	Name      string
	UID       string
}

// ParseArgs reads CNI_ARGS ("K=V;K=V"). Unknown keys are ignored; a pair
// without "=" is an error (code 4).
func ParseArgs(s string) (PodArgs, error) {
	var a PodArgs
	if s == "" {
		return a, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return a, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv), "CNI_ARGS must be KEY=VALUE pairs separated by ';'")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			a.Namespace = v
		case "K8S_POD_NAME":
			a.Name = v
		case "K8S_POD_UID":
			a.UID = v
		}
	}
	return a, nil
}

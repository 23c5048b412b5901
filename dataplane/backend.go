package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// BackendEnv overrides the detected iptables backend: "nft" or "legacy".
const BackendEnv = "TERN_IPTABLES_BACKEND"

// Backend is the iptables variant tern writes with: "nft" (iptables-nft, the
// nf_tables kernel API) or "legacy" (x_tables). Rules written through one are
// invisible to the other's -save, so the node driver, the policy driver and
// kube-proxy must all use the same one: detect it once with DetectBackend and
// hand it to both drivers (Node.UseBackend, Policy.UseBackend).
type Backend struct {
	Mode   string // "nft" or "legacy"
	v4, v6 iptablesBins
}

// iptablesBins are the binaries of one family; a field is "" when missing.
type iptablesBins struct{ cmd, save, restore string }

func (b Backend) bins(v6 bool) iptablesBins {
	if v6 {
		return b.v6
	}
	return b.v4
}

func (b Backend) String() string { return b.Mode }

// errNoBinaries says a family's iptables binaries are not installed.
var errNoBinaries = errors.New("iptables binaries not found")

// has reports whether the family's binaries are all there.
func (b iptablesBins) has() bool { return b.cmd != "" && b.save != "" && b.restore != "" }

// BackendFor resolves the binaries of a backend ("nft" or "legacy"):
// iptables-<mode>, iptables-<mode>-save, iptables-<mode>-restore and the
// ip6tables ones, or the plain iptables binaries when they are that mode
// (distributions that install only one variant).
func BackendFor(mode string) (Backend, error) {
	if mode != "nft" && mode != "legacy" {
		return Backend{}, fmt.Errorf("iptables backend %q: want nft or legacy", mode)
	}
	b := Backend{Mode: mode}
	for _, v6 := range []bool{false, true} {
		base := "iptables"
		if v6 {
			base = "ip6tables"
		}
		bins := lookBins(base+"-"+mode, base+"-"+mode+"-save", base+"-"+mode+"-restore")
		if !bins.has() {
			if plain := lookBins(base, base+"-save", base+"-restore"); plain.has() && versionMode(plain.cmd) == mode {
				bins = plain
			}
		}
		if v6 {
			b.v6 = bins
		} else {
			b.v4 = bins
		}
	}
	if !b.v4.has() {
		return Backend{}, fmt.Errorf("iptables backend %s: %w", mode, errNoBinaries)
	}
	return b, nil
}

func lookBins(cmd, save, restore string) iptablesBins {
	var b iptablesBins
	b.cmd, _ = exec.LookPath(cmd)
	b.save, _ = exec.LookPath(save)
	b.restore, _ = exec.LookPath(restore)
	if !b.has() {
		return iptablesBins{}
	}
	return b
}

// DetectBackend chooses the iptables backend of the current network namespace
// the way kube-proxy's iptables-wrapper does: BackendEnv if set; else, when
// both variants are installed, the one that already holds more rules (kubelet
// and kube-proxy write theirs before tern starts); on a tie (e.g. no rules at
// all), the one `iptables` points to.
func DetectBackend() (Backend, error) {
	if m := os.Getenv(BackendEnv); m != "" {
		b, err := BackendFor(m)
		if err != nil {
			return Backend{}, fmt.Errorf("%s: %w", BackendEnv, err)
		}
		return b, nil
	}
	nft, errNFT := BackendFor("nft")
	legacy, errLegacy := BackendFor("legacy")
	switch {
	case errNFT != nil && errLegacy != nil:
		return Backend{}, fmt.Errorf("no iptables backend: %w", errors.Join(errNFT, errLegacy))
	case errNFT != nil:
		return legacy, nil
	case errLegacy != nil:
		return nft, nil
	}
	nNFT, nLegacy := nft.countRules(), legacy.countRules()
	switch {
	case nNFT > nLegacy:
		return nft, nil
	case nLegacy > nNFT:
		return legacy, nil
	}
	if p, err := exec.LookPath("iptables"); err == nil && versionMode(p) == "legacy" {
		return legacy, nil
	}
	return nft, nil
}

// countRules counts the rules of both families of this backend, as lines of
// -save output that start with "-" (iptables-wrapper's measure: comment and
// chain lines are not rules).
func (b Backend) countRules() int {
	n := 0
	for _, v6 := range []bool{false, true} {
		bins := b.bins(v6)
		if !bins.has() {
			continue
		}
		out, _ := exec.Command(bins.save).Output()
		n += countRuleLines(out)
	}
	return n
}

func countRuleLines(save []byte) int {
	n := 0
	for _, l := range bytes.Split(save, []byte("\n")) {
		if bytes.HasPrefix(l, []byte("-")) {
			n++
		}
	}
	return n
}

// versionMode runs `bin --version` and returns "nft", "legacy" or "".
func versionMode(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	return parseVersionMode(string(out))
}

// parseVersionMode reads the mode from `iptables --version` output:
// "iptables v1.8.9 (nf_tables)" is nft; "(legacy)", and versions before 1.8
// that print no mode, are legacy.
func parseVersionMode(v string) string {
	switch {
	case strings.Contains(v, "(nf_tables)"):
		return "nft"
	case strings.Contains(v, "(legacy)"):
		return "legacy"
	case strings.HasPrefix(strings.TrimSpace(v), "iptables v") || strings.HasPrefix(strings.TrimSpace(v), "ip6tables v"):
		return "legacy"
	}
	return ""
}

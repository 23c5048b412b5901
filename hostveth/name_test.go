package hostveth

import (
	"regexp"
	"strings"
	"testing"
)

// nameRe is the external interface: "tern" and 11 lowercase hex characters.
var nameRe = regexp.MustCompile(`^tern[0-9a-f]{11}$`)

func TestName(t *testing.T) {
	tests := []struct {
		name, ns, pod, cid string
	}{
		{"pod args", "default", "web-0", "c1"},
		{"other namespace", "prod", "web-0", "c1"},
		{"other pod", "default", "web-1", "c1"},
		{"no pod args", "", "", "0123456789abcdef"},
		{"other container", "", "", "fedcba9876543210"},
		{"namespace only", "default", "", "c2"},
		{"name only", "", "web-0", "c3"},
		{"empty everything", "", "", ""},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Name(tt.ns, tt.pod, tt.cid, "eth0")
			if len(got) != 15 {
				t.Errorf("Name = %q, len %d, want 15 (IFNAMSIZ-1)", got, len(got))
			}
			if !nameRe.MatchString(got) || !IsTern(got) {
				t.Errorf("Name = %q, want tern + 11 lowercase hex characters", got)
			}
			if again := Name(tt.ns, tt.pod, tt.cid, "eth0"); again != got {
				t.Errorf("Name is not deterministic: %q then %q", got, again)
			}
			if other, dup := seen[got]; dup {
				t.Errorf("Name(%s) = %q, same as for %s", tt.name, got, other)
			}
			seen[got] = tt.name
		})
	}
}

func TestNameKeys(t *testing.T) {
	if a, b := Name("default", "web-0", "c1", "eth0"), Name("default", "web-0", "c2", "eth0"); a != b {
		t.Errorf("with pod args the container ID must not matter: %q vs %q", a, b)
	}
	// Without both pod args, the container ID is the key.
	for _, p := range [][2]string{{}, {"default", ""}, {"", "web-0"}} {
		if a, b := Name(p[0], p[1], "c1", "eth0"), Name("", "", "c1", "eth0"); a != b {
			t.Errorf("Name(%q, %q, c1) = %q, want the container-ID name %q", p[0], p[1], a, b)
		}
	}
	// A fixed vector pins the hash, so names survive upgrades of the plugin.
	if got, want := Name("", "", "", "eth0"), "terne3b0c44298f"; got != want {
		t.Errorf("Name of the empty key = %q, want %q (sha256 of \"\")", got, want)
	}
}

func TestNamePerInterface(t *testing.T) {
	eth0, net1 := Name("default", "web", "c1", "eth0"), Name("default", "web", "c1", "net1")
	if eth0 == net1 || len(net1) != 15 {
		t.Fatalf("eth0 %q and net1 %q of one pod must differ", eth0, net1)
	}
	if Name("default", "web", "c1", "") != eth0 {
		t.Fatal("an empty interface name must name eth0's veth")
	}
}

func TestIsTern(t *testing.T) {
	for name, want := range map[string]bool{
		"tern0123456789a": true, "ternfffffffffff": true, Name("app", "web", "", "eth0"): true,
		"tern0123456789": false, "tern0123456789ab": false, "tern0123456789A": false, "tern012345678g9": false,
		"eth0123456789ab": false, "ternweb1": false, "": false, "TERN0123456789a": false,
	} {
		if got := IsTern(name); got != want {
			t.Errorf("IsTern(%q) = %t", name, got)
		}
	}
}

func TestInterface(t *testing.T) {
	// Kept stable: scripts, policy rules and running nodes rely on them.
	if !nameRe.MatchString(Prefix+strings.Repeat("0", HexLen)) || Group != 0x7e52 || MAC.String() != "ee:ee:ee:ee:ee:ee" {
		t.Errorf("Prefix %q, HexLen %d, Group %#x, MAC %s changed", Prefix, HexLen, Group, MAC)
	}
}

package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// --cluster-cidr takes one CIDR per family, comma-separated (the
// ConfigMap's cluster-cidr).
func TestParseCIDRs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{"", nil, ""},
		{"10.244.0.0/16", []string{"10.244.0.0/16"}, ""},
		{"10.244.0.0/16,fd10:244::/56", []string{"10.244.0.0/16", "fd10:244::/56"}, ""},
		{" fd10:244::/56 , 10.244.0.0/16 ", []string{"fd10:244::/56", "10.244.0.0/16"}, ""},
		{"10.244.0.0/16,fd10:244::1/56", nil, "host bits set; did you mean fd10:244::/56"},
		{"10.244.0.0/16;fd10:244::/56", nil, "is not a CIDR"},
	} {
		got, err := parseCIDRs("--cluster-cidr", tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		var want []netip.Prefix
		for _, w := range tc.want {
			want = append(want, netip.MustParsePrefix(w))
		}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v %v, want %v", tc.in, got, err, want)
		}
	}
}

// --nat-outgoing-ipv6 is a flag of its own, a boolean.
func TestNATOutgoingIPv6Flag(t *testing.T) {
	if err := run([]string{"--nat-outgoing-ipv6=true", "--version"}); err != nil {
		t.Fatalf("--nat-outgoing-ipv6=true: %v", err)
	}
	if err := run([]string{"--nat-outgoing-ipv6=perhaps", "--version"}); err == nil {
		t.Fatal("--nat-outgoing-ipv6=perhaps accepted")
	}
}

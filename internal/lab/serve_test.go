package lab

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestParsePort(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Port
		wantErr string
	}{
		{in: "80/tcp", want: Port{80, corev1.ProtocolTCP}},
		{in: "81/UDP", want: Port{81, corev1.ProtocolUDP}},
		{in: "65535/sctp", want: Port{65535, corev1.ProtocolSCTP}},
		{in: "80", wantErr: "want NUMBER/PROTOCOL"},
		{in: "0/tcp", wantErr: "the number 1-65535"},
		{in: "65536/tcp", wantErr: "the number 1-65535"},
		{in: "http/tcp", wantErr: "want NUMBER/PROTOCOL"},
		{in: "80/icmp", wantErr: `not "icmp"`},
	} {
		got, err := ParsePort(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParsePort(%q) = %v, %v; want an error with %q", c.in, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParsePort(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
		if back, err := ParsePort(got.String()); err != nil || back != got {
			t.Errorf("ParsePort(%q.String() = %q) = %v, %v", c.in, got.String(), back, err)
		}
	}
}

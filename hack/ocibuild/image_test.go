package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// base writes a one-file tar, standing in for a root file system.
func base(t *testing.T, dir string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644, Size: 5},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("base\n"))
		}
	}
	tw.Close()
	p := filepath.Join(dir, "base.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func spec(t *testing.T) Spec {
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Tags:       []string{"ghcr.io/tern-net/tern:test", "localhost/tern:latest"},
		Platform:   v1.Platform{OS: "linux", Architecture: "amd64"},
		Layers:     []string{base(t, dir)},
		Files:      []File{{Src: bin, Dst: "/usr/local/bin/tern-agent", Mode: 0o755}},
		Symlinks:   []Symlink{{Name: "/usr/local/bin/agent-2", Target: "tern-agent"}},
		Dirs:       []string{"/uploads"},
		Entrypoint: []string{"/usr/local/bin/tern-agent"},
		Cmd:        []string{"--help"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin"},
		User:       "0",
		Created:    time.Unix(1700000000, 0).UTC(),
	}
}

func TestArchiveReadsBack(t *testing.T) {
	s := spec(t)
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := Write(out, img, s.Tags); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	for _, tag := range s.Tags {
		ref, _ := name.NewTag(tag)
		got, err := tarball.ImageFromPath(out, &ref)
		if err != nil {
			t.Fatalf("%s not in the archive: %v", tag, err)
		}
		if d, _ := got.Digest(); d != want {
			t.Fatalf("%s: digest %s, built %s", tag, d, want)
		}
		cf, err := got.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != "amd64" || strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/tern-agent" ||
			strings.Join(cf.Config.Cmd, " ") != "--help" || cf.Config.User != "0" || len(cf.Config.Env) != 1 || !cf.Created.Time.Equal(s.Created) {
			t.Fatalf("config %+v", cf)
		}
		layers, _ := got.Layers()
		if len(layers) != 2 || len(cf.RootFS.DiffIDs) != 2 {
			t.Fatalf("%d layers, %d diff IDs, want 2", len(layers), len(cf.RootFS.DiffIDs))
		}
		files := layerEntries(t, layers[1])
		want := map[string]string{
			"usr/":                     "dir 755",
			"usr/local/":               "dir 755",
			"usr/local/bin/":           "dir 755",
			"usr/local/bin/tern-agent": "file 755 #!/bin/true\n",
			"usr/local/bin/agent-2":    "link tern-agent",
			"uploads/":                 "dir 755",
		}
		if len(files) != len(want) {
			t.Fatalf("files layer %v, want %v", files, want)
		}
		for k, v := range want {
			if files[k] != v {
				t.Fatalf("files layer %s: %q, want %q (all: %v)", k, files[k], v, files)
			}
		}
		if b := layerEntries(t, layers[0]); b["etc/os-release"] != "file 644 base\n" {
			t.Fatalf("base layer %v", b)
		}
	}
	// The manifest docker load and ctr import read names both tags.
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || len(m[0].RepoTags) != 2 {
		b, _ := json.Marshal(m)
		t.Fatalf("manifest.json %s", b)
	}
}

func layerEntries(t *testing.T, l v1.Layer) map[string]string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Fatalf("%s owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
		perm := fmt.Sprintf("%o", h.Mode&0o777)
		switch h.Typeflag {
		case tar.TypeDir:
			out[h.Name] = "dir " + perm
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			out[h.Name] = "file " + perm + " " + string(b)
		case tar.TypeSymlink:
			out[h.Name] = "link " + h.Linkname
		}
	}
}

func TestReproducible(t *testing.T) {
	s := spec(t)
	a, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of one spec: %s and %s", da, db)
	}
}

func TestBadInput(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"no tag", func(s *Spec) { s.Tags = nil }, "no tag"},
		{"bad tag", func(s *Spec) { s.Tags = []string{"Tern:UPPER:x"} }, `tag "Tern:UPPER:x"`},
		{"missing layer", func(s *Spec) { s.Layers = []string{"/nonexistent/rootfs.tar"} }, "/nonexistent/rootfs.tar"},
		{"relative destination", func(s *Spec) { s.Files[0].Dst = "usr/bin/x" }, "clean absolute path"},
		{"missing file", func(s *Spec) { s.Files[0].Src = "/nonexistent/agent" }, "/nonexistent/agent"},
		{"directory as file", func(s *Spec) { s.Files[0].Src = "/" }, "not a regular file"},
		{"no platform", func(s *Spec) { s.Platform = v1.Platform{} }, "platform"},
		{"empty", func(s *Spec) { s.Layers, s.Files, s.Symlinks, s.Dirs = nil, nil, nil, nil }, "no content"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := spec(t)
			c.edit(&s)
			_, err := Build(s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
		})
	}
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-tag", "localhost/b:c", "-dir", "/x"}, "-o"},
		{[]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/o.tar", "-file", "nohost"}, "HOST=IMAGE"},
		{[]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/o.tar", "-file", "/bin/sh=/bin/sh:9z"}, "octal"},
		{[]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/o.tar", "-entrypoint", "/bin/sh"}, "JSON array"},
		{[]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/o.tar", "-created", "yesterday"}, "-created"},
		{[]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/o.tar", "-env", "=x"}, "KEY=VALUE"},
	} {
		err := run(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one naming %q", c.args, err, c.want)
		}
	}
	if _, err := os.Stat(dir + "/o.tar"); !os.IsNotExist(err) {
		t.Fatalf("a refused build left an archive: %v", err)
	}
	if err := run([]string{"-tag", "localhost/b:c", "-dir", "/x", "-o", dir + "/ok.tar", "-entrypoint", `["/x"]`}); err != nil {
		t.Fatal(err)
	}
}

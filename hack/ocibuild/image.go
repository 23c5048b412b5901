package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is a host file copied into the image.
type File struct {
	Src  string // on the host
	Dst  string // absolute, in the image
	Mode fs.FileMode
}

// Symlink is a symbolic link in the image.
type Symlink struct {
	Name   string // absolute, in the image
	Target string
}

// Spec is everything an image is made of: base layers from tar files (a root
// file system from mmdebstrap, say), one more layer with single files, and
// the config a runtime reads.
type Spec struct {
	Tags       []string
	Platform   v1.Platform
	Layers     []string // tar files, lowest first
	Files      []File
	Symlinks   []Symlink
	Dirs       []string
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	WorkingDir string
	Labels     map[string]string
	Created    time.Time // every timestamp in the image: fixed, so a rebuild is identical
}

// Validate says what is wrong with a spec before anything is read.
func (s *Spec) Validate() error {
	if len(s.Tags) == 0 {
		return fmt.Errorf("no tag: an image archive without a name cannot be loaded by name")
	}
	for _, t := range s.Tags {
		if _, err := name.NewTag(t, name.StrictValidation); err != nil {
			return fmt.Errorf("tag %q: %w (want registry/repository:tag)", t, err)
		}
	}
	if len(s.Layers) == 0 && len(s.Files) == 0 && len(s.Symlinks) == 0 && len(s.Dirs) == 0 {
		return fmt.Errorf("no content: give a layer or a file")
	}
	for _, l := range s.Layers {
		st, err := os.Stat(l)
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("layer %s: not a regular file", l)
		}
	}
	for _, f := range s.Files {
		if !path.IsAbs(f.Dst) || path.Clean(f.Dst) != f.Dst {
			return fmt.Errorf("file %s: destination %q must be a clean absolute path", f.Src, f.Dst)
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return fmt.Errorf("file: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("file %s: not a regular file", f.Src)
		}
	}
	for _, l := range s.Symlinks {
		if !path.IsAbs(l.Name) || path.Clean(l.Name) != l.Name || l.Target == "" {
			return fmt.Errorf("symlink %q -> %q: want a clean absolute name and a target", l.Name, l.Target)
		}
	}
	for _, d := range s.Dirs {
		if !path.IsAbs(d) || path.Clean(d) != d {
			return fmt.Errorf("directory %q must be a clean absolute path", d)
		}
	}
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		return fmt.Errorf("platform %q: want os/arch", s.Platform.String())
	}
	return nil
}

// Build assembles the image.
func Build(s Spec) (v1.Image, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var layers []v1.Layer
	for _, p := range s.Layers {
		l, err := tarball.LayerFromFile(p, tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", p, err)
		}
		layers = append(layers, l)
	}
	if len(s.Files)+len(s.Symlinks)+len(s.Dirs) > 0 {
		b, err := filesLayer(s)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}, tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return nil, fmt.Errorf("files layer: %w", err)
		}
		layers = append(layers, l)
	}
	img := empty.Image
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   l,
			History: v1.History{Created: v1.Time{Time: s.Created}, CreatedBy: "ocibuild"},
		})
		if err != nil {
			return nil, fmt.Errorf("append layer: %w", err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = s.Platform.OS
	cf.Architecture = s.Platform.Architecture
	cf.Variant = s.Platform.Variant
	cf.Created = v1.Time{Time: s.Created}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Cmd
	cf.Config.Env = s.Env
	cf.Config.User = s.User
	cf.Config.WorkingDir = s.WorkingDir
	cf.Config.Labels = s.Labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// filesLayer is a tar of the spec's files, symlinks and directories, owned
// by root, with every parent directory, in a fixed order.
func filesLayer(s Spec) ([]byte, error) {
	type entry struct {
		hdr *tar.Header
		src string
	}
	entries := map[string]entry{}
	var addDir func(string, fs.FileMode)
	addDir = func(d string, mode fs.FileMode) {
		if d == "/" || d == "." {
			return
		}
		addDir(path.Dir(d), 0o755)
		name := strings.TrimPrefix(d, "/") + "/"
		if _, ok := entries[name]; !ok {
			entries[name] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: int64(mode)}}
		}
	}
	for _, d := range s.Dirs {
		addDir(d, 0o755)
	}
	for _, f := range s.Files {
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file: %w", err)
		}
		mode := f.Mode
		if mode == 0 {
			mode = st.Mode().Perm()
		}
		addDir(path.Dir(f.Dst), 0o755)
		name := strings.TrimPrefix(f.Dst, "/")
		entries[name] = entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode), Size: st.Size()}, src: f.Src}
	}
	for _, l := range s.Symlinks {
		addDir(path.Dir(l.Name), 0o755)
		name := strings.TrimPrefix(l.Name, "/")
		entries[name] = entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: l.Target, Mode: 0o777}}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime = s.Created
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", n, err)
		}
		if e.src == "" {
			continue
		}
		f, err := os.Open(e.src)
		if err != nil {
			return nil, err
		}
		n, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("tar %s: %w", e.src, err)
		}
		if n != e.hdr.Size {
			return nil, fmt.Errorf("tar %s: changed while read (%d of %d bytes)", e.src, n, e.hdr.Size)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes img under every tag as one archive in the format of `docker
// save`, which `docker load`, `ctr images import` and `kind load
// image-archive` read. It writes a temporary file and renames it, so a
// failed build never leaves a truncated archive under the final name.
func Write(out string, img v1.Image, tags []string) error {
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		tag, err := name.NewTag(t, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("tag %q: %w", t, err)
		}
		refs[tag] = img
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

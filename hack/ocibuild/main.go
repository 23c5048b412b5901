// Command ocibuild assembles a container image without a container engine or
// a registry: base layers from tar files (a Debian root file system made by
// mmdebstrap), one more layer of single files, and the image config; it
// writes an archive in the format of `docker save`.
//
//	ocibuild -tag ghcr.io/tern-net/tern:dev -layer rootfs.tar \
//	  -file bin/tern-agent=/usr/local/bin/tern-agent:0755 \
//	  -entrypoint '["/usr/local/bin/tern-agent"]' -o tern.tar
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ocibuild:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fl := flag.NewFlagSet("ocibuild", flag.ContinueOnError)
	var tags, layers, files, links, dirs, env, labels list
	fl.Var(&tags, "tag", "image name, registry/repository:tag (repeatable)")
	fl.Var(&layers, "layer", "a tar file, a layer of the image, lowest first (repeatable)")
	fl.Var(&files, "file", "HOST=IMAGE[:MODE]: a host file at an absolute path in the image, octal mode (repeatable)")
	fl.Var(&links, "symlink", "NAME=TARGET: a symbolic link in the image (repeatable)")
	fl.Var(&dirs, "dir", "an empty directory in the image (repeatable)")
	fl.Var(&env, "env", "KEY=VALUE in the image's environment (repeatable)")
	fl.Var(&labels, "label", "KEY=VALUE image label (repeatable)")
	entrypoint := fl.String("entrypoint", "", `entrypoint as a JSON array, ["/bin/x", "arg"]`)
	cmd := fl.String("cmd", "", "command as a JSON array")
	user := fl.String("user", "", "user the container runs as")
	workdir := fl.String("workdir", "", "working directory")
	platform := fl.String("platform", "linux/"+runtime.GOARCH, "os/arch[/variant]")
	created := fl.String("created", "", "creation time of every entry, RFC 3339 (default: $SOURCE_DATE_EPOCH, else the Unix epoch)")
	out := fl.String("o", "", "the archive to write")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if *out == "" {
		return fmt.Errorf("-o: no archive named")
	}
	s := Spec{Tags: tags, Layers: layers, Dirs: dirs, Env: env, User: *user, WorkingDir: *workdir}
	p, err := v1.ParsePlatform(*platform)
	if err != nil {
		return fmt.Errorf("-platform %q: %w", *platform, err)
	}
	s.Platform = *p
	for _, f := range files {
		host, dst, ok := strings.Cut(f, "=")
		if !ok || host == "" || dst == "" {
			return fmt.Errorf("-file %q: want HOST=IMAGE[:MODE]", f)
		}
		file := File{Src: host, Dst: dst}
		if d, m, ok := strings.Cut(dst, ":"); ok {
			mode, err := strconv.ParseUint(m, 8, 32)
			if err != nil || mode > 0o7777 {
				return fmt.Errorf("-file %q: mode %q is not an octal file mode", f, m)
			}
			file.Dst, file.Mode = d, fs.FileMode(mode)
		}
		s.Files = append(s.Files, file)
	}
	for _, l := range links {
		n, t, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("-symlink %q: want NAME=TARGET", l)
		}
		s.Symlinks = append(s.Symlinks, Symlink{Name: n, Target: t})
	}
	if len(labels) > 0 {
		s.Labels = map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return fmt.Errorf("-label %q: want KEY=VALUE", l)
			}
			s.Labels[k] = v
		}
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("-env %q: want KEY=VALUE", e)
		}
	}
	if s.Entrypoint, err = jsonArgs("entrypoint", *entrypoint); err != nil {
		return err
	}
	if s.Cmd, err = jsonArgs("cmd", *cmd); err != nil {
		return err
	}
	if s.Created, err = createdAt(*created, os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		return err
	}
	img, err := Build(s)
	if err != nil {
		return err
	}
	if err := Write(*out, img, s.Tags); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", *out, strings.Join(s.Tags, ","), d)
	return nil
}

func jsonArgs(flagName, v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var a []string
	if err := json.Unmarshal([]byte(v), &a); err != nil {
		return nil, fmt.Errorf("-%s %q: want a JSON array of strings: %w", flagName, v, err)
	}
	return a, nil
}

func createdAt(flagValue, epoch string) (time.Time, error) {
	if flagValue != "" {
		t, err := time.Parse(time.RFC3339, flagValue)
		if err != nil {
			return time.Time{}, fmt.Errorf("-created %q: %w", flagValue, err)
		}
		return t.UTC(), nil
	}
	if epoch != "" {
		s, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", epoch)
		}
		return time.Unix(s, 0).UTC(), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

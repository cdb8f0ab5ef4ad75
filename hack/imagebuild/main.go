// Command imagebuild writes a container image as a docker-archive tarball without Docker or a
// registry: one layer of the given files (plus, with -base, the /etc/passwd, /etc/group, /tmp
// and /home/nonroot of a distroless image) and the runtime configuration. Every timestamp is
// the epoch and entries are sorted, so the same inputs always give the same digest.
// hack/cluster.sh builds the chargesim, pause, CoreDNS and FerretDB images with it and imports
// them with `ctr -n k8s.io images import`.
//
//	go run ./hack/imagebuild -o chargesim.tar -tag chargesim.local/chargesim:dev -base \
//	  -user 65532:65532 -add bin/chargesim=/chargesim:0755 \
//	  -add /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt:0644 \
//	  -entrypoint '["/chargesim"]' -cmd '["--help"]' -label org.opencontainers.image.title=chargesim
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	var (
		out        = fs.String("o", "", "output tarball (docker-archive)")
		spec       Spec
		adds       list
		labels     list
		entrypoint = fs.String("entrypoint", "", `JSON array, e.g. '["/chargesim"]'`)
		cmd        = fs.String("cmd", "", `JSON array, e.g. '["--help"]'`)
	)
	fs.StringVar(&spec.Tag, "tag", "", "image name:tag")
	fs.BoolVar(&spec.Base, "base", false, "add /etc/passwd, /etc/group (root, nonroot 65532), /tmp and /home/nonroot")
	fs.StringVar(&spec.User, "user", "", "uid:gid the container runs as")
	fs.StringVar(&spec.WorkingDir, "workdir", "", "working directory")
	fs.Var(&adds, "add", "src=dst[:mode[:uid:gid]] (repeatable; mode octal, default 0644)")
	fs.Var(&labels, "label", "key=value (repeatable)")
	fs.Var((*list)(&spec.Env), "env", "KEY=value (repeatable)")
	fs.Var((*list)(&spec.Exposed), "expose", "port/proto (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || spec.Tag == "" {
		return fmt.Errorf("-o and -tag are required")
	}
	for _, a := range adds {
		f, err := parseAdd(a)
		if err != nil {
			return err
		}
		spec.Files = append(spec.Files, f)
	}
	if len(labels) > 0 {
		spec.Labels = map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return fmt.Errorf("-label %q: want key=value", l)
			}
			spec.Labels[k] = v
		}
	}
	for _, j := range []struct {
		flag string
		src  string
		dst  *[]string
	}{{"entrypoint", *entrypoint, &spec.Entrypoint}, {"cmd", *cmd, &spec.Cmd}} {
		if j.src == "" {
			continue
		}
		if err := json.Unmarshal([]byte(j.src), j.dst); err != nil {
			return fmt.Errorf("-%s %q: want a JSON array of strings: %w", j.flag, j.src, err)
		}
	}

	// Written next to the output and renamed: an interrupted build never looks finished.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".imagebuild-*")
	if err != nil {
		return fmt.Errorf("creating output: %w", err)
	}
	defer os.Remove(tmp.Name())
	res, err := spec.Write(tmp)
	if err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	fmt.Printf("%s id=%s archive=%s size=%d %s\n", spec.Tag, res.ID, res.Archive, res.Size, *out)
	return nil
}

// parseAdd parses src=dst[:mode[:uid:gid]].
func parseAdd(a string) (File, error) {
	src, rest, ok := strings.Cut(a, "=")
	if !ok || src == "" || rest == "" {
		return File{}, fmt.Errorf("-add %q: want src=dst[:mode[:uid:gid]]", a)
	}
	parts := strings.Split(rest, ":")
	f := File{Src: src, Dst: parts[0], Mode: 0o644}
	if !strings.HasPrefix(f.Dst, "/") {
		return File{}, fmt.Errorf("-add %q: destination must be absolute", a)
	}
	if len(parts) > 1 {
		m, err := strconv.ParseInt(parts[1], 8, 32)
		if err != nil {
			return File{}, fmt.Errorf("-add %q: mode: %w", a, err)
		}
		f.Mode = m
	}
	if len(parts) == 4 {
		uid, err1 := strconv.Atoi(parts[2])
		gid, err2 := strconv.Atoi(parts[3])
		if err1 != nil || err2 != nil {
			return File{}, fmt.Errorf("-add %q: uid:gid must be numbers", a)
		}
		f.UID, f.GID = uid, gid
	} else if len(parts) != 1 && len(parts) != 2 {
		return File{}, fmt.Errorf("-add %q: want src=dst[:mode[:uid:gid]]", a)
	}
	return f, nil
}

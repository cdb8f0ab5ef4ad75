package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// epoch is every timestamp in the image: the same inputs give the same bytes, so the same digest.
var epoch = time.Unix(0, 0).UTC()

// File is one regular file of the image's single layer.
type File struct {
	Src  string // path on this machine
	Dst  string // absolute path in the image
	Mode int64  // permission bits
	UID  int
	GID  int
}

// Spec describes an image: one layer holding Files (plus their parent directories and, with
// Base, the files every distroless-like image has) and the runtime configuration.
type Spec struct {
	Tag        string // name:tag as stored by the runtime (RepoTags)
	Files      []File
	Base       bool // /etc/passwd and /etc/group with root and nonroot (65532), /tmp, /home/nonroot
	User       string
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
	Exposed    []string // "8080/tcp"
	WorkingDir string
}

// Result is what Write produced.
type Result struct {
	ID      string // sha256:<hex> of the config: the image ID the runtime reports
	DiffID  string // sha256:<hex> of the uncompressed layer
	Archive string // sha256:<hex> of the whole docker-archive tarball
	Size    int64  // bytes of the tarball
}

const (
	nonrootUID = 65532
	passwd     = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" //nolint:gosec // /etc/passwd without passwords
	group      = "root:x:0:\nnonroot:x:65532:\n"
)

type entry struct {
	hdr  tar.Header
	body []byte // regular files only
}

// layer returns the layer tarball: entries sorted by path, parent directories made explicit,
// fixed owners and timestamps.
func (s *Spec) layer() ([]byte, error) {
	entries := map[string]*entry{}
	addDir := func(name string, mode int64, uid int) {
		entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid}}
	}
	addFile := func(name string, body []byte, mode int64, uid, gid int) {
		entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(body))}, body: body}
	}
	if s.Base {
		addFile("etc/passwd", []byte(passwd), 0o644, 0, 0)
		addFile("etc/group", []byte(group), 0o644, 0, 0)
		addDir("tmp", 0o1777, 0)
		addDir("home/nonroot", 0o700, nonrootUID)
	}
	for _, f := range s.Files {
		name := strings.TrimPrefix(path.Clean("/"+f.Dst), "/")
		if name == "" {
			return nil, fmt.Errorf("file %s: destination %q is the root", f.Src, f.Dst)
		}
		body, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f.Src, err)
		}
		addFile(name, body, f.Mode, f.UID, f.GID)
	}
	// Parent directories that are not entries yet: root-owned, 0755.
	for name := range entries {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				addDir(d, 0o755, 0)
			}
		}
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
		e.hdr.ModTime = epoch
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", n, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing layer: %w", err)
	}
	return buf.Bytes(), nil
}

// The subset of the OCI/Docker image configuration we write; field order is fixed by the
// struct, maps are sorted by encoding/json.
type imageConfig struct {
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Created      string       `json:"created"`
	Config       runtimeConf  `json:"config"`
	RootFS       rootFS       `json:"rootfs"`
	History      []historyRow `json:"history"`
}

type runtimeConf struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyRow struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

type manifestRow struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Write writes s as a docker-archive tarball (what `docker save` writes and
// `ctr images import` / `kind load image-archive` read) to w.
func (s *Spec) Write(w io.Writer) (Result, error) {
	if s.Tag == "" {
		return Result{}, fmt.Errorf("image: no tag")
	}
	layer, err := s.layer()
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Tag, err)
	}
	layerHex := digest(layer)
	rc := runtimeConf{User: s.User, Env: s.Env, Entrypoint: s.Entrypoint, Cmd: s.Cmd, WorkingDir: s.WorkingDir, Labels: s.Labels}
	if len(s.Exposed) > 0 {
		rc.ExposedPorts = map[string]struct{}{}
		for _, p := range s.Exposed {
			rc.ExposedPorts[p] = struct{}{}
		}
	}
	cfg, err := json.Marshal(imageConfig{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      epoch.Format(time.RFC3339),
		Config:       rc,
		RootFS:       rootFS{Type: "layers", DiffIDs: []string{"sha256:" + layerHex}},
		History:      []historyRow{{Created: epoch.Format(time.RFC3339), CreatedBy: "chargesim hack/imagebuild"}},
	})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: config: %w", s.Tag, err)
	}
	cfgHex := digest(cfg)
	manifest, err := json.Marshal([]manifestRow{{Config: cfgHex + ".json", RepoTags: []string{s.Tag}, Layers: []string{layerHex + "/layer.tar"}}})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: manifest: %w", s.Tag, err)
	}

	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	tw := tar.NewWriter(cw)
	for _, f := range []struct {
		name string
		body []byte
	}{
		{layerHex + "/", nil},
		{layerHex + "/layer.tar", layer},
		{cfgHex + ".json", cfg},
		{"manifest.json", manifest},
	} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: epoch, Format: tar.FormatPAX}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return Result{}, fmt.Errorf("image %s: archive: %w", s.Tag, err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return Result{}, fmt.Errorf("image %s: archive: %w", s.Tag, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Result{}, fmt.Errorf("image %s: archive: %w", s.Tag, err)
	}
	return Result{
		ID:      "sha256:" + cfgHex,
		DiffID:  "sha256:" + layerHex,
		Archive: "sha256:" + hex.EncodeToString(h.Sum(nil)),
		Size:    cw.n,
	}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

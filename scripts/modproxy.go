//go:build ignore

// modproxy writes a file-system Go module proxy (the GOPROXY protocol's
// layout: <module>/@v/list, <version>.info, .mod and .zip) holding the
// modules in the given directories, at one version, from the working tree:
// what the module proxy would serve once the release tags are pushed. Used
// with GOPROXY=file://<out> by .ci/check-release and .ci/check-user-build.
//
//	go run scripts/modproxy.go -out DIR -version v0.1.0 . pgx sqlite otel
//
// A module's zip holds, under the prefix module@version/, the files git
// would commit (tracked, or untracked and not ignored; without git, every
// file), less nested modules' directories (any with a go.mod of its own),
// vendor directories, VCS folders, symlinks and other non-regular files, as
// the go command's own zips leave them out. The go command checks the rest of
// the module zip rules (file names, sizes) when it extracts the zip.
package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode"
)

func main() {
	out := flag.String("out", "", "the proxy's directory (created)")
	version := flag.String("version", "", "the version to serve every module at, e.g. v0.1.0")
	flag.Parse()
	if *out == "" || !strings.HasPrefix(*version, "v") || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: go run scripts/modproxy.go -out DIR -version vX.Y.Z MODULE_DIR...")
		os.Exit(2)
	}
	for _, dir := range flag.Args() {
		mod, err := write(*out, *version, dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "modproxy: %s: %v\n", dir, err)
			os.Exit(1)
		}
		fmt.Printf("modproxy: %s@%s from %s\n", mod, *version, dir)
	}
}

// write adds the module in dir to the proxy at out, returning its path.
func write(out, version, dir string) (string, error) {
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", err
	}
	mod := modulePath(gomod)
	if mod == "" {
		return "", errors.New("go.mod has no module line")
	}
	files, err := moduleFiles(dir)
	if err != nil {
		return "", err
	}
	at := filepath.Join(out, filepath.FromSlash(escape(mod)), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		return "", err
	}
	if err := writeZip(filepath.Join(at, version+".zip"), mod+"@"+version+"/", dir, files); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(at, version+".mod"), gomod, 0o644); err != nil {
		return "", err
	}
	info, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, commitTime(dir)})
	if err := os.WriteFile(filepath.Join(at, version+".info"), append(info, '\n'), 0o644); err != nil {
		return "", err
	}
	return mod, addToList(filepath.Join(at, "list"), version)
}

// modulePath reads the module line of a go.mod.
func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "//")
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], "\"`")
		}
	}
	return ""
}

// moduleFiles lists, slash-separated and relative to dir, the files of the
// module in dir.
func moduleFiles(dir string) ([]string, error) {
	var candidates []string
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = dir
	if b, err := cmd.Output(); err == nil {
		for _, f := range strings.Split(string(b), "\x00") {
			if f != "" {
				candidates = append(candidates, f)
			}
		}
	} else {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, err := filepath.Rel(dir, p)
			candidates = append(candidates, filepath.ToSlash(rel))
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	// The directories of nested modules: every one with a go.mod but dir.
	var nested []string
	for _, f := range candidates {
		if path.Base(f) == "go.mod" && f != "go.mod" {
			nested = append(nested, path.Dir(f)+"/")
		}
	}
	var files []string
	for _, f := range candidates {
		if excluded(f, nested) {
			continue
		}
		// git lists tracked files deleted in the work tree; and only
		// regular files go into a module zip.
		if fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f))); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, f)
	}
	sort.Strings(files)
	return files, nil
}

// excluded reports a file the go command leaves out of a module zip.
func excluded(f string, nested []string) bool {
	for _, n := range nested {
		if strings.HasPrefix(f, n) {
			return true
		}
	}
	for _, elem := range strings.Split(path.Dir(f), "/") {
		switch elem {
		case "vendor", ".git", ".hg", ".svn", ".bzr":
			return true
		}
	}
	return false
}

func writeZip(name, prefix, dir string, files []string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(f)
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			f.Close()
			return err
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: prefix + rel, Method: zip.Deflate})
		if err != nil {
			f.Close()
			return err
		}
		if _, err := w.Write(b); err != nil {
			f.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// commitTime is HEAD's commit time, for the .info file; now without git.
func commitTime(dir string) time.Time {
	cmd := exec.Command("git", "log", "-1", "--format=%cI")
	cmd.Dir = dir
	if b, err := cmd.Output(); err == nil {
		if t, err := time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err == nil {
			return t.UTC()
		}
	}
	return time.Now().UTC().Truncate(time.Second)
}

// addToList adds version to the proxy's list file of a module.
func addToList(list, version string) error {
	b, err := os.ReadFile(list)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, v := range strings.Fields(string(b)) {
		if v == version {
			return nil
		}
	}
	return os.WriteFile(list, append(b, version+"\n"...), 0o644)
}

// escape is the module path as the proxy's directories spell it: each
// upper-case letter as '!' and its lower case.
func escape(mod string) string {
	var b strings.Builder
	for _, r := range mod {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

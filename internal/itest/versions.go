package itest

import (
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// LinkedVersion returns the major and minor version of module as linked
// into the running binary, read from the source path of fn, a function of
// that module (module@vX.Y.Z/... in the module cache). The tests run at both
// ends of the versions the root's go.mod allows of lib/pq and
// go-sql-driver/mysql (.ci/check-versions), and where the two behave
// differently a test checks the behaviour of the version linked. The source
// path, because a test binary's build information lists no dependencies.
// It fails t where the path names no version (a replace to a directory,
// vendoring).
func LinkedVersion(t testing.TB, module string, fn any) (major, minor int) {
	t.Helper()
	f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer())
	if f == nil {
		t.Fatalf("LinkedVersion(%s): no function", module)
	}
	file, _ := f.FileLine(f.Entry())
	_, version, ok := strings.Cut(file, module+"@")
	if ok {
		_, err := fmt.Sscanf(version, "v%d.%d.", &major, &minor)
		ok = err == nil
	}
	if !ok {
		t.Fatalf("cannot tell %s's version from its source path %q", module, file)
	}
	return major, minor
}

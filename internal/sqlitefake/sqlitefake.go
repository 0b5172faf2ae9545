// Package sqlitefake stands in for a SQLite driver in tests of the core
// package, which must not import one: its import path contains "sqlite", as
// the paths of the real drivers do, which is what sqlconflict recognises them
// by.
package sqlitefake

import (
	"database/sql/driver"
	"errors"
)

// Error is shaped like modernc.org/sqlite's *sqlite.Error: Code returns the
// extended result code.
type Error struct {
	Msg          string
	ExtendedCode int
}

func (e *Error) Error() string { return e.Msg }

// Code returns the extended result code, as modernc.org/sqlite's does.
func (e *Error) Code() int { return e.ExtendedCode }

// Driver is a driver.Driver whose package path says SQLite. It opens nothing.
type Driver struct{}

// Open fails: the type exists only to be recognised.
func (Driver) Open(string) (driver.Conn, error) { return nil, errors.New("sqlitefake: no connections") }

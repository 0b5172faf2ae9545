package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// report is everything a run of the command found; -json prints it as is.
type report struct {
	Database  string           `json:"database"` // sqlite, postgres or mysql
	DSN       string           `json:"dsn"`      // password hidden
	Workers   int              `json:"workers"`
	Ops       int              `json:"ops_per_worker"`
	Keys      int              `json:"keys"`
	Seed      uint64           `json:"seed"`
	Scenarios []scenarioResult `json:"scenarios"`
	// OK: every sqlconflict run finished every operation and left the
	// right final state.
	OK bool `json:"ok"`
}

type scenarioResult struct {
	Name  string    `json:"name"`
	About string    `json:"about"`
	Fix   string    `json:"sqlconflict_fix"`
	Raw   runResult `json:"raw"`
	// Unchanged is the application's code as it was, its own
	// transactions, through sqlconflict at its defaults (conflict_replay=on).
	Unchanged runResult `json:"dsn_only"`
	Wrapped   runResult `json:"sqlconflict"`
	Note      string    `json:"note"`
}

// runResult is one run of a scenario.
type runResult struct {
	Run    string `json:"run"` // "raw", "DSN only" or "sqlconflict"
	Ops    int    `json:"ops"`
	Failed int    `json:"failed"` // operations that returned an error
	// Retries = TxRetries + StmtRetries + Replays.
	Retries            int64          `json:"retries"`
	Replays            int64          `json:"replays"`      // transactions replayed and verified (conflict_replay)
	TxRetries          int64          `json:"tx_retries"`   // reruns of a whole transaction by RunTx
	StmtRetries        int64          `json:"stmt_retries"` // statements the driver ran again
	SavepointRollbacks int64          `json:"savepoint_rollbacks"`
	DoomedTx           int64          `json:"doomed_transactions"`
	Warnings           int64          `json:"warnings"`
	FirstWarning       string         `json:"first_warning,omitempty"`
	BlindRereads       int            `json:"blind_rereads"` // re-reads after a duplicate key that found nothing, or (sqlconflict) failed with ErrBlindReread
	Wrong              int            `json:"wrong"`         // lost updates, missing or extra rows, wrong values
	WrongDetail        string         `json:"wrong_detail,omitempty"`
	Seconds            float64        `json:"seconds"`
	OpsPerSec          float64        `json:"ops_per_sec"`        // successful operations per second
	Failures           map[string]int `json:"failures,omitempty"` // failed operations by error kind
	FirstError         string         `json:"first_error,omitempty"`
}

// ok reports whether the sqlconflict runs were all clean.
func (r *report) ok() bool {
	for _, s := range r.Scenarios {
		if s.Wrapped.Failed > 0 || s.Wrapped.Wrong > 0 {
			return false
		}
	}
	return true
}

func writeJSON(w io.Writer, r *report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// The table, printed a scenario at a time as they finish.
const rowFormat = "%-19s %-12s %6s %7s %8s %6s %8s  %s\n"

func writeHeader(w io.Writer, r *report) {
	fmt.Fprintf(w, "sqlconflict-race: %s, %s\n", r.Database, r.DSN)
	fmt.Fprintf(w, "%d workers x %d operations, %d hot keys, seed %d\n\n", r.Workers, r.Ops, r.Keys, r.Seed)
	fmt.Fprintf(w, rowFormat, "SCENARIO", "DRIVER", "OPS", "FAILED", "RETRIES", "WRONG", "OPS/S", "FAILURES")
}

func writeScenario(w io.Writer, s scenarioResult) {
	for i, r := range []runResult{s.Raw, s.Unchanged, s.Wrapped} {
		name := s.Name
		if i > 0 {
			name = ""
		}
		fmt.Fprintf(w, rowFormat, name, r.Run, fmt.Sprint(r.Ops), fmt.Sprint(r.Failed), fmt.Sprint(r.Retries),
			fmt.Sprint(r.Wrong), fmt.Sprintf("%.0f", r.OpsPerSec), failureSummary(r))
	}
}

// failureSummary lists the failures by kind, most frequent first.
func failureSummary(r runResult) string {
	var parts []string
	for _, l := range sortedLabels(r.Failures) {
		parts = append(parts, fmt.Sprintf("%d %s", r.Failures[l], l))
	}
	if r.WrongDetail != "" {
		parts = append(parts, "WRONG: "+r.WrongDetail)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func writeFooter(w io.Writer, r *report) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "DSN only: the application's own transactions, unchanged, through sqlconflict at its defaults (conflict_replay=on);")
	fmt.Fprintln(w, "sqlconflict: the same code through sqlconflict.RunTx.")
	fmt.Fprintln(w, "RETRIES counts reruns of a transaction by sqlconflict.RunTx, statements the driver ran again and verified replays.")
	fmt.Fprintln(w, "WRONG counts lost updates, missing or extra rows, and wrong values in the final state.")
	for _, s := range r.Scenarios {
		fmt.Fprintln(w)
		writeWrapped(w, "", "  ", s.Name+": "+s.About+".", 100)
		writeWrapped(w, "  ", "    ", "sqlconflict: "+s.Fix+".", 100)
		writeWrapped(w, "  ", "  ", s.Note, 100)
	}
	fmt.Fprintln(w)
	if r.OK {
		fmt.Fprintln(w, "sqlconflict: no failed operation and no wrong final value in any scenario.")
		return
	}
	for _, s := range r.Scenarios {
		if s.Wrapped.Failed > 0 || s.Wrapped.Wrong > 0 {
			fmt.Fprintf(w, "sqlconflict FAILED in %s: %d failed operations (%s), %d wrong values\n",
				s.Name, s.Wrapped.Failed, failureSummary(s.Wrapped), s.Wrapped.Wrong)
			if s.Wrapped.FirstError != "" {
				fmt.Fprintf(w, "  first error: %s\n", s.Wrapped.FirstError)
			}
		}
	}
}

// writeWrapped prints text in lines of at most width: the first after
// first, the others after indent.
func writeWrapped(w io.Writer, first, indent, text string, width int) {
	line, empty := first, true
	for _, word := range strings.Fields(text) {
		if !empty && len(line)+1+len(word) > width {
			fmt.Fprintln(w, line)
			line, empty = indent, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	if !empty {
		fmt.Fprintln(w, line)
	}
}

package clienttest

// The packages the docs' Go blocks use that no test here imports otherwise:
// TestDocsGoBlocksCompile type-checks the blocks against them, which needs
// them in this module's requirements.
import (
	_ "github.com/sqlconflict/sqlconflict/otel"
)

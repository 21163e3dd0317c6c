//go:build tools

// Package tools pins the promtool binary built by hack/build-promtool.sh so that
// `go mod tidy` keeps it. See README.md.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

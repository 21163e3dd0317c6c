//go:build tools

// Package tools pins the helm binary built by e2e/scripts/build-controlplane.sh
// so that `go mod tidy` keeps it.
package tools

import _ "helm.sh/helm/v3/cmd/helm"

//go:build tools

// Package tools pins krew, which the e2e tests use to install the plugin from its release
// archive through the krew manifest, as a user would.
package tools

import _ "sigs.k8s.io/krew/cmd/krew"

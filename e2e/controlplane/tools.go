//go:build tools

// Package tools pins the control-plane binaries built by
// e2e/scripts/build-controlplane.sh so that `go mod tidy` keeps them.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

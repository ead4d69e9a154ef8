//go:build tools

// Package tools pins the Kubernetes control-plane commands; the build script builds them by
// package path. k8s.io/kubernetes replaces its staging modules with local directories in its own
// go.mod, so go.mod here maps each k8s.io/* staging module to its published v0.33.x release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)

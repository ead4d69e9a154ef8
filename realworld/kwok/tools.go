//go:build tools

// Package tools pins sigs.k8s.io/kwok's command; the build script builds it by package path.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"

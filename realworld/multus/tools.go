//go:build tools

// Package tools pins Multus's thin plugin (cmd/multus); the build script builds it by package path.
package tools

import _ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus"

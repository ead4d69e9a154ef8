//go:build tools

// Package tools pins the Whereabouts IPAM plugin (./cmd); the build script builds it by package path.
package tools

import _ "github.com/k8snetworkplumbingwg/whereabouts/cmd"

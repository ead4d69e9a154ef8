//go:build tools

// Package tools pins the Google provider's command (its module root is package main); the build
// script builds it by package path. The provider's v5/v6 release tags are not valid versions of
// the module path github.com/hashicorp/terraform-provider-google (no /v5 suffix), so the module
// proxy serves a release only as the pseudo-version of the commit its tag points at: go.mod pins
// v1.20.1-0.20241111170140-c875b30c3ae6, the commit of tag v5.45.0 ("Release 5.45.0 changelogs").
package tools

import _ "github.com/hashicorp/terraform-provider-google"

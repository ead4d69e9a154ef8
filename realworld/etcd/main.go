// Command etcd is etcd's own server, built from go.etcd.io/etcd/server/v3 at the version pinned in
// go.mod. The module replaces its sibling modules with local paths, so `go install` of its main
// package refuses it; this wrapper requires it as a library and calls its entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

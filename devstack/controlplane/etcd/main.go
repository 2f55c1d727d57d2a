// Command etcd is etcd's own server entry point, built as a dependency because
// the etcd server module cannot be installed directly from the module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

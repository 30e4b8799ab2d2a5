// Command etcd is the storage behind the local API server. Built here because
// distribution packages are too old for the API server's streaming lists.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

// Command kstatus prints how kstatus (sigs.k8s.io/cli-utils), the library Flux uses to
// gate on a resource, reads each Kubernetes object given as JSON on stdin (one object,
// or a List): one line per object, "<name> <status> <message>".
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// The scheme's decoder keeps integers as int64, as kstatus expects.
	decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
	if err != nil {
		fail(err)
	}
	var items []unstructured.Unstructured
	switch obj := decoded.(type) {
	case *unstructured.UnstructuredList:
		items = obj.Items
	case *unstructured.Unstructured:
		items = []unstructured.Unstructured{*obj}
	}
	for i := range items {
		result, err := status.Compute(&items[i])
		if err != nil {
			fail(err)
		}
		fmt.Printf("%s %s %s\n", items[i].GetName(), result.Status, result.Message)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}

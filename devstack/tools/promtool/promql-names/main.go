// Command promql-names reads a JSON array of PromQL expressions on stdin and prints, as
// a JSON array in the same order, the sorted metric names each expression selects.
// An expression that does not parse fails the command, naming it.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/prometheus/prometheus/promql/parser"
)

// The expressions come from the repository's own files; this bounds a mistake.
const maxInput = 4 << 20

func names(expr string) ([]string, error) {
	tree, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	parser.Inspect(tree, func(node parser.Node, _ []parser.Node) error {
		if selector, ok := node.(*parser.VectorSelector); ok {
			seen[selector.Name] = true
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func main() {
	raw, err := io.ReadAll(io.LimitReader(os.Stdin, maxInput))
	if err != nil {
		fmt.Fprintln(os.Stderr, "promql-names:", err)
		os.Exit(2)
	}
	var exprs []string
	if err := json.Unmarshal(raw, &exprs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names: stdin is not a JSON array of strings:", err)
		os.Exit(2)
	}
	result := make([][]string, len(exprs))
	for i, expr := range exprs {
		if result[i], err = names(expr); err != nil {
			fmt.Fprintf(os.Stderr, "promql-names: %q: %v\n", expr, err)
			os.Exit(1)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names:", err)
		os.Exit(2)
	}
}

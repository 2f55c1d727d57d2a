//go:build tools

// Package tools pins the promtool CLI this module builds (see build.sh).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)

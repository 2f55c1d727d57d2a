//go:build tools

// Package tools pins the helm CLI this module builds (see build.sh).
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)

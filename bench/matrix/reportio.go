package main

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// What the cells' reports share: writing them, and picking and comparing
// their runs (every cell's run is a pipeRun, possibly with more figures).

// writeReport writes rep's raw results as JSON to jsonPath and the
// markdown that markdown makes (given the JSON file's name) to mdPath.
func writeReport(mdPath, jsonPath string, rep any, markdown func(jsonName string) string) error {
	j, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(j, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(mdPath, []byte(markdown(filepath.Base(jsonPath))), 0o644)
}

// cellRun is a run of any cell.
type cellRun interface{ base() pipeRun }

func (r pipeRun) base() pipeRun { return r }

// pickRuns returns the runs of server in cell c.
func pickRuns[R cellRun](rs []R, server string, c cell) []R {
	var out []R
	for _, x := range rs {
		if b := x.base(); b.Server == server && b.Cell == c {
			out = append(out, x)
		}
	}
	return out
}

// ratioRuns is the median over rounds of f(a)/f(b) in the same round.
func ratioRuns[R cellRun](rs []R, a, b string, c cell, f func(R) float64) (float64, bool) {
	byRep := map[int]float64{}
	for _, x := range pickRuns(rs, b, c) {
		byRep[x.base().Rep] = f(x)
	}
	var xs []float64
	for _, x := range pickRuns(rs, a, c) {
		if den, ok := byRep[x.base().Rep]; ok && den > 0 {
			xs = append(xs, f(x)/den)
		}
	}
	return median(xs), len(xs) > 0
}

// Go workload of the unwinder tests: main → goOuter → goMid → goLeaf, with
// goMid calling goLeaf through a helper the compiler inlines. Runs for
// os.Args[1] seconds.
package main

import (
	"os"
	"strconv"
	"time"
)

var sink int

//go:noinline
func goLeaf(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i
	}
	return s
}

// Small enough that the compiler inlines it into goMid.
func inlinedHelper(n int) int { return goLeaf(n^(n>>3)) * 3 }

//go:noinline
func goMid(n int) int { return inlinedHelper(n) }

//go:noinline
func goOuter(n int) int { return goMid(n) }

// Inlined into main, with time.Time.Before inlined into it: two levels.
func running(end time.Time) bool { return time.Now().Before(end) }

func main() {
	seconds, err := strconv.ParseFloat(os.Args[1], 64)
	if err != nil {
		panic(err)
	}
	end := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for running(end) {
		sink += goOuter(100000)
	}
}

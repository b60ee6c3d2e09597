// Go workload of the unwinder tests: main → goOuter → goMid → goLeaf, with
// goMid calling goLeaf through a helper the compiler inlines, under the
// goroutine labels handler=checkout (pprof.Do); beside it a goroutine
// without labels spins in otherLeaf. Runs for os.Args[1] seconds, after
// os.Args[2] seconds (default 0) of sleep: the agent learns where a new
// binary keeps its labels when it first reads the process.
package main

import (
	"context"
	"os"
	"runtime/pprof"
	"strconv"
	"time"
)

var sink, otherSink int

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

//go:noinline
func otherLeaf(n int) int {
	s := 1
	for i := 1; i < n; i++ {
		s ^= s*31 + i
	}
	return s
}

// Inlined into its callers, with time.Time.Before inlined into it: two levels.
func running(end time.Time) bool { return time.Now().Before(end) }

//go:noinline
func unlabelled(end time.Time, done chan<- struct{}) {
	for running(end) {
		otherSink += otherLeaf(100000)
	}
	close(done)
}

func main() {
	seconds, err := strconv.ParseFloat(os.Args[1], 64)
	if err != nil {
		panic(err)
	}
	if len(os.Args) > 2 {
		pause, err := strconv.ParseFloat(os.Args[2], 64)
		if err != nil {
			panic(err)
		}
		time.Sleep(time.Duration(pause * float64(time.Second)))
	}
	end := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	done := make(chan struct{})
	go unlabelled(end, done)
	pprof.Do(context.Background(), pprof.Labels("handler", "checkout"), func(context.Context) {
		for running(end) {
			sink += goOuter(100000)
		}
	})
	<-done
}

package loadgen

import (
	"math/bits"
	"time"
)

// Histogram counts latencies in microseconds in log-linear buckets: exact below 32 µs, then 32
// buckets per power of two (at most about 3% wide), up to about 70 minutes. Recording is a
// few instructions and allocates nothing. The zero value is empty and ready; it is not safe
// for concurrent use (each client keeps its own, merged at the end of a window).
type Histogram struct {
	counts [histBuckets]int64
	n      int64
	max    uint64
}

const (
	subBits     = 5
	subBuckets  = 1 << subBits
	histBuckets = (32 - subBits + 1) * subBuckets
)

// bucketOf returns the bucket of us microseconds.
func bucketOf(us uint64) int {
	if us < subBuckets {
		return int(us)
	}
	exp := bits.Len64(us) - subBits - 1
	i := (exp+1)<<subBits + int((us>>exp)&(subBuckets-1))
	return min(i, histBuckets-1)
}

// bucketBounds returns the smallest value of bucket i and the first value past it.
func bucketBounds(i int) (lo, hi uint64) {
	if i < subBuckets {
		return uint64(i), uint64(i) + 1
	}
	exp := i>>subBits - 1
	lo = uint64(subBuckets+i&(subBuckets-1)) << exp
	return lo, lo + 1<<exp
}

// Record counts one latency.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	h.counts[bucketOf(us)]++
	h.n++
	h.max = max(h.max, us)
}

// Count returns the number of latencies recorded.
func (h *Histogram) Count() int64 { return h.n }

// Max returns the largest latency recorded, in microseconds.
func (h *Histogram) Max() float64 { return float64(h.max) }

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Quantile returns the q-quantile (0 < q ≤ 1) in microseconds: the middle of the bucket that
// holds it, never above the largest latency recorded; 0 when h is empty.
func (h *Histogram) Quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketBounds(i)
			return min(float64(lo+hi-1)/2, float64(h.max))
		}
	}
	return float64(h.max)
}

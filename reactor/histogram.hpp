// Histogram: a log-linear histogram of non-negative integer values (latencies in nanoseconds),
// in the manner of HdrHistogram. The loop's timer delays (EventLoop::timer_delay()) and
// reactor-load's latencies are recorded in one.
//
// Values below 2^kSubBucketBits are counted exactly. Above, each power-of-two range
// [2^e, 2^(e+1)) is split into 2^kSubBucketBits equal sub-buckets, so a value is known to within
// 1/2^kSubBucketBits of itself (0.8 %) over the whole uint64 range, in a fixed ~58 KiB table:
// recording is O(1) and never allocates, percentiles are one walk over the table, and two
// histograms merge by adding counts (one per thread, merged at the end).
//
// value_at_percentile() reports the highest value equivalent to the bucket holding the rank
// (as HdrHistogram does), capped at the largest value recorded; max() and min() are exact.
// Not thread-safe: one thread records at a time. The table is allocated by the constructor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace reactor {

class Histogram {
 public:
  static constexpr int kSubBucketBits = 7;
  static constexpr std::uint64_t kSubBuckets = std::uint64_t{1} << kSubBucketBits;

  Histogram();

  void record(std::uint64_t value) noexcept { record(value, 1); }
  void record(std::uint64_t value, std::uint64_t count) noexcept;
  void merge(const Histogram& other) noexcept;
  void reset() noexcept;

  std::uint64_t count() const noexcept { return total_; }
  std::uint64_t min() const noexcept { return total_ ? min_ : 0; }  // 0 when empty
  std::uint64_t max() const noexcept { return max_; }               // 0 when empty
  double mean() const noexcept;
  // The value below or at which `percentile` (0-100) percent of the values lie; 0 when empty.
  std::uint64_t value_at_percentile(double percentile) const noexcept;

  // The bucket layout, exposed for tests.
  static std::size_t bucket_index(std::uint64_t value) noexcept;
  static std::uint64_t bucket_lowest(std::size_t index) noexcept;
  static std::uint64_t bucket_highest(std::size_t index) noexcept;
  static std::size_t bucket_count() noexcept;

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t total_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
};

}  // namespace reactor

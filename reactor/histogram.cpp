#include "reactor/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace reactor {

// Layout: index v for v < kSubBuckets (exact). For larger v with top bit e (e >= kSubBucketBits),
// the kSubBucketBits bits below the top one pick the sub-bucket:
//   index = (e - kSubBucketBits + 1) * kSubBuckets + (v >> (e - kSubBucketBits)) - kSubBuckets
// which continues the exact range without a gap (2^kSubBucketBits maps to kSubBuckets).

std::size_t Histogram::bucket_index(std::uint64_t value) noexcept {
  if (value < kSubBuckets) return static_cast<std::size_t>(value);
  const int e = std::bit_width(value) - 1;
  const int shift = e - kSubBucketBits;
  return static_cast<std::size_t>(static_cast<std::uint64_t>(shift + 1) * kSubBuckets +
                                  (value >> shift) - kSubBuckets);
}

std::uint64_t Histogram::bucket_lowest(std::size_t index) noexcept {
  if (index < kSubBuckets) return index;
  const std::uint64_t block = index / kSubBuckets;  // >= 1
  const std::uint64_t sub = index % kSubBuckets;
  return (kSubBuckets + sub) << (block - 1);
}

std::uint64_t Histogram::bucket_highest(std::size_t index) noexcept {
  if (index < kSubBuckets) return index;
  const std::uint64_t block = index / kSubBuckets;
  return bucket_lowest(index) + ((std::uint64_t{1} << (block - 1)) - 1);
}

std::size_t Histogram::bucket_count() noexcept {
  return bucket_index(UINT64_MAX) + 1;
}

Histogram::Histogram() : counts_(bucket_count(), 0) {}

void Histogram::record(std::uint64_t value, std::uint64_t count) noexcept {
  if (count == 0) return;
  counts_[bucket_index(value)] += count;
  total_ += count;
  min_ = std::min(min_, value);
  max_ = std::max(max_, value);
}

void Histogram::merge(const Histogram& other) noexcept {
  for (std::size_t i = 0; i < counts_.size(); ++i)
    counts_[i] += other.counts_[i];
  total_ += other.total_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
}

void Histogram::reset() noexcept {
  std::fill(counts_.begin(), counts_.end(), 0);
  total_ = 0;
  min_ = UINT64_MAX;
  max_ = 0;
}

double Histogram::mean() const noexcept {
  if (total_ == 0) return 0;
  double sum = 0;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] == 0) continue;
    // The middle of the bucket: exact for the exact range, within half a bucket above it.
    const double mid =
        (static_cast<double>(bucket_lowest(i)) + static_cast<double>(bucket_highest(i))) / 2;
    sum += mid * static_cast<double>(counts_[i]);
  }
  return sum / static_cast<double>(total_);
}

std::uint64_t Histogram::value_at_percentile(double percentile) const noexcept {
  if (total_ == 0) return 0;
  percentile = std::clamp(percentile, 0.0, 100.0);
  // The rank of the value asked for, 1-based: at least the first value, at most the last.
  auto rank =
      static_cast<std::uint64_t>(std::ceil(percentile / 100.0 * static_cast<double>(total_)));
  rank = std::clamp<std::uint64_t>(rank, 1, total_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(bucket_highest(i), min_, max_);
  }
  return max_;
}

}  // namespace reactor

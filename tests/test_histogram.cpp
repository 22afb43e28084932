// reactor::Histogram, the log-linear latency histogram of the loop's timer delay and reactor-load.
#include <cstdint>

#include <gtest/gtest.h>

#include "reactor/histogram.hpp"

namespace {

using reactor::Histogram;

TEST(Histogram, EmptyReportsZeroEverywhere) {
  Histogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.min(), 0u);
  EXPECT_EQ(h.max(), 0u);
  EXPECT_EQ(h.value_at_percentile(50), 0u);
  EXPECT_EQ(h.mean(), 0.0);
}

TEST(Histogram, SmallValuesAreCountedExactly) {
  Histogram h;
  for (std::uint64_t v = 0; v < Histogram::kSubBuckets; ++v)
    h.record(v);
  EXPECT_EQ(h.count(), Histogram::kSubBuckets);
  EXPECT_EQ(h.value_at_percentile(50), 63u);  // the 64th of 0..127
  EXPECT_EQ(h.value_at_percentile(100), 127u);
  EXPECT_EQ(h.value_at_percentile(0), 0u);
}

TEST(Histogram, BucketsTileTheWholeRangeWithoutGaps) {
  const std::size_t n = Histogram::bucket_count();
  EXPECT_EQ(Histogram::bucket_lowest(0), 0u);
  for (std::size_t i = 0; i + 1 < n; ++i) {
    ASSERT_EQ(Histogram::bucket_lowest(i + 1), Histogram::bucket_highest(i) + 1) << i;
    ASSERT_EQ(Histogram::bucket_index(Histogram::bucket_lowest(i)), i);
    ASSERT_EQ(Histogram::bucket_index(Histogram::bucket_highest(i)), i);
  }
  EXPECT_EQ(Histogram::bucket_highest(n - 1), UINT64_MAX);
}

TEST(Histogram, BucketWidthIsWithinOnePartInSubBucketsOfTheValue) {
  for (std::uint64_t v = 1; v < (std::uint64_t{1} << 62); v = v * 3 + 7) {
    const std::size_t i = Histogram::bucket_index(v);
    const std::uint64_t width = Histogram::bucket_highest(i) - Histogram::bucket_lowest(i) + 1;
    ASSERT_LE(width, v / Histogram::kSubBuckets + 1) << v;
  }
}

TEST(Histogram, PercentilesOfAUniformRunAreWithinOnePercent) {
  Histogram h;
  for (std::uint64_t v = 1; v <= 100000; ++v)
    h.record(v);
  EXPECT_EQ(h.min(), 1u);
  EXPECT_EQ(h.max(), 100000u);
  EXPECT_NEAR(static_cast<double>(h.value_at_percentile(50)), 50000, 500);
  EXPECT_NEAR(static_cast<double>(h.value_at_percentile(90)), 90000, 900);
  EXPECT_NEAR(static_cast<double>(h.value_at_percentile(99)), 99000, 990);
  EXPECT_NEAR(static_cast<double>(h.value_at_percentile(99.9)), 99900, 999);
  EXPECT_EQ(h.value_at_percentile(100), 100000u);
  EXPECT_NEAR(h.mean(), 50000.5, 500);
}

// reactor-load rate reports p99.99: in 10,000 values it is the 9,999th, not the largest.
TEST(Histogram, P9999IsTheRankBelowTheLastOfTenThousand) {
  Histogram h;
  h.record(1, 9999);
  h.record(100);
  EXPECT_EQ(h.value_at_percentile(99.99), 1u);
  EXPECT_EQ(h.value_at_percentile(100), 100u);
  h.reset();
  h.record(1, 9998);
  h.record(100, 2);
  EXPECT_EQ(h.value_at_percentile(99.99), 100u);
  EXPECT_EQ(h.value_at_percentile(99.9), 1u);
}

TEST(Histogram, PercentileNeverReportsMoreThanTheMaximum) {
  Histogram h;
  h.record(1'000'003);
  for (double p : {0.0, 50.0, 99.9, 100.0})
    EXPECT_EQ(h.value_at_percentile(p), 1'000'003u) << p;
}

TEST(Histogram, RecordsTheLargestValue) {
  Histogram h;
  h.record(UINT64_MAX);
  h.record(1);
  EXPECT_EQ(h.max(), UINT64_MAX);
  EXPECT_EQ(h.value_at_percentile(100), UINT64_MAX);
  EXPECT_EQ(h.value_at_percentile(50), 1u);
}

TEST(Histogram, MergeEqualsRecordingEverythingInOne) {
  Histogram a, b, all;
  for (std::uint64_t v = 0; v < 5000; ++v) {
    (v % 3 == 0 ? a : b).record(v * 17);
    all.record(v * 17);
  }
  a.merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  for (double p : {1.0, 50.0, 90.0, 99.0, 99.9}) {
    EXPECT_EQ(a.value_at_percentile(p), all.value_at_percentile(p)) << p;
  }
}

TEST(Histogram, RecordWithCountWeighsTheValue) {
  Histogram h;
  h.record(10, 99);
  h.record(1000, 1);
  EXPECT_EQ(h.count(), 100u);
  EXPECT_EQ(h.value_at_percentile(99), 10u);
  EXPECT_EQ(h.value_at_percentile(99.5), 1000u);
}

TEST(Histogram, ResetForgetsEverything) {
  Histogram h;
  h.record(42);
  h.reset();
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.max(), 0u);
  EXPECT_EQ(h.value_at_percentile(50), 0u);
}

}  // namespace

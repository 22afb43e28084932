// Cross-thread use of the loop: post() and stop() from other threads, LoopThread. Suite
// 'threads', which CI also runs under ThreadSanitizer.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <thread>
#include <vector>

#include "loopback.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/loop_thread.hpp"

namespace reactor {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr std::uint32_t kTasksPerThread = 10'000;
#else
constexpr std::uint32_t kTasksPerThread = 100'000;
#endif

// Generous bounds for conditions a correct loop meets in milliseconds, sanitizers included.
constexpr auto kDeadline = 60s;

using test::run_until;

// Spins (yielding) until `flag` is set or the deadline passes; returns the flag.
bool wait_for_flag(const std::atomic<bool>& flag) {
  const auto give_up = std::chrono::steady_clock::now() + kDeadline;
  while (!flag.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  return flag.load(std::memory_order_acquire);
}

TEST(EventLoopThreads, PostsFromFourThreadsRunExactlyOnceInPerThreadOrder) {
  constexpr int kThreads = 4;
  EventLoop loop;
  // Touched only on the loop thread, by the tasks.
  struct Seen {
    std::vector<std::uint32_t> sequence[kThreads];
    std::uint64_t total = 0;
  } seen;
  for (auto& s : seen.sequence)
    s.reserve(kTasksPerThread);

  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&loop, &seen, t] {
      for (std::uint32_t i = 0; i < kTasksPerThread; ++i) {
        loop.post([&seen, t, i] {
          seen.sequence[t].push_back(i);
          ++seen.total;
        });
      }
    });
  }
  const std::uint64_t expected = std::uint64_t{kThreads} * kTasksPerThread;
  const bool all_ran = run_until(
      loop, [&] { return seen.total >= expected; }, kDeadline);
  for (auto& p : posters)
    p.join();
  ASSERT_TRUE(all_ran) << seen.total << " of " << expected << " tasks ran";
  // Posts that raced with the last iteration would show up now, as duplicates.
  loop.run_once(0ns);
  EXPECT_EQ(seen.total, expected);
  for (int t = 0; t < kThreads; ++t) {
    const auto& s = seen.sequence[t];
    ASSERT_EQ(s.size(), kTasksPerThread) << "thread " << t;
    bool in_order = true;
    for (std::uint32_t i = 0; i < kTasksPerThread; ++i)
      in_order = in_order && s[i] == i;
    EXPECT_TRUE(in_order) << "thread " << t << ": tasks ran out of order, lost or twice";
  }
}

TEST(EventLoopThreads, StopFromAnotherThreadEndsRun) {
  EventLoop loop;
  std::atomic<bool> running{false};
  bool timed_out = false;
  // A broken stop() fails the test at this timer instead of hanging it.
  loop.after(kDeadline, [&] {
    timed_out = true;
    loop.stop();
  });
  loop.post([&] { running.store(true, std::memory_order_release); });
  std::thread stopper([&] {
    if (wait_for_flag(running)) loop.stop();
  });
  loop.run();
  stopper.join();
  EXPECT_TRUE(running.load());
  EXPECT_FALSE(timed_out);
}

TEST(EventLoopThreads, LoopThreadRunsPostedTasksOnItsOwnThread) {
  LoopThread worker;
  std::promise<std::thread::id> ran_on;
  auto future = ran_on.get_future();
  worker.loop().post([&] { ran_on.set_value(std::this_thread::get_id()); });
  ASSERT_EQ(future.wait_for(kDeadline), std::future_status::ready);
  const std::thread::id loop_thread = future.get();
  EXPECT_NE(loop_thread, std::this_thread::get_id());
  worker.join();
  worker.join();  // idempotent
}

TEST(EventLoopThreads, JoiningALoopThreadWhileItIsBusyIsSafe) {
  // join()'s stop() races with the loop ending run() and destroying itself; ThreadSanitizer
  // and ASan see it if the loop can die while stop() still uses it.
  std::atomic<int> ran{0};
  for (int round = 0; round < 50; ++round) {
    LoopThread worker;
    for (int i = 0; i < 100; ++i)
      worker.loop().post([&ran] { ran.fetch_add(1); });
    worker.join();
  }
  EXPECT_LE(ran.load(), 50 * 100);
}

TEST(EventLoopThreads, PostsWhileTheLoopIsBusyShareOneWakeup) {
  // The first task holds the loop busy until all the others are posted: they then cost one
  // eventfd write and read in all, however many they are.
  constexpr std::uint64_t kPosts = 10'000;
  LoopThread worker;
  EventLoop& loop = worker.loop();
  std::atomic<bool> all_posted{false};
  std::atomic<bool> blocker_timed_out{false};
  std::promise<std::uint64_t> wakeups;
  auto future = wakeups.get_future();
  std::uint64_t ran = 0;  // loop thread only

  loop.post([&] {
    if (!wait_for_flag(all_posted)) blocker_timed_out.store(true);
  });
  for (std::uint64_t i = 1; i < kPosts; ++i)
    loop.post([&ran] { ++ran; });
  loop.post([&] { wakeups.set_value(loop.stats().wakeups); });
  all_posted.store(true, std::memory_order_release);

  ASSERT_EQ(future.wait_for(kDeadline), std::future_status::ready);
  const std::uint64_t count = future.get();
  worker.join();
  EXPECT_FALSE(blocker_timed_out.load());
  EXPECT_EQ(ran, kPosts - 1);
  // One for the blocker, one for everything posted while it ran (far fewer than kPosts).
  EXPECT_LE(count, 2u);
}

TEST(EventLoopThreads, BurstOfPostsBeforeTheLoopRunsCostsOneWakeup) {
  EventLoop loop;
  constexpr int kPosts = 1000;
  int ran = 0;
  std::thread poster([&] {
    for (int i = 0; i < kPosts; ++i)
      loop.post([&ran] { ++ran; });
  });
  poster.join();
  ASSERT_TRUE(run_until(
      loop, [&] { return ran == kPosts; }, kDeadline));
  EXPECT_EQ(loop.stats().wakeups, 1u);
}

TEST(EventLoopThreads, PostFromATaskOnAnotherLoopThreadRoundTrips) {
  LoopThread a;
  LoopThread b;
  std::promise<int> done;
  auto future = done.get_future();
  a.loop().post([&] {
    const int from_a = 1;
    b.loop().post([&, from_a] { a.loop().post([&, from_a] { done.set_value(from_a + 1); }); });
  });
  ASSERT_EQ(future.wait_for(kDeadline), std::future_status::ready);
  EXPECT_EQ(future.get(), 2);
}

}  // namespace
}  // namespace reactor

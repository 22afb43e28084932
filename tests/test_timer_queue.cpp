#include "reactor/timer_queue.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "counting_new.hpp"

namespace reactor {
namespace {

using std::chrono::nanoseconds;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::size_t kMany = 100'000;
#else
constexpr std::size_t kMany = 1'000'000;
#endif

const TimePoint kStart = TimePoint{} + std::chrono::hours(1);

TimePoint at(std::int64_t ns) {
  return kStart + nanoseconds(ns);
}

constexpr Duration kOnce = Duration::zero();

// A callback that appends `label` to `log`.
TimerQueue::Callback record(std::vector<int>& log, int label) {
  return [&log, label] { log.push_back(label); };
}

TEST(TimerQueue, EmptyQueue) {
  TimerQueue q;
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.next_deadline(), std::nullopt);
  EXPECT_EQ(q.run_due(at(1'000'000)), 0u);
  EXPECT_FALSE(q.cancel(TimerId{}));
  EXPECT_FALSE(q.cancel(TimerId{5, 1}));
}

TEST(TimerQueue, IdsAreNeverGenerationZero) {
  TimerQueue q;
  std::vector<int> log;
  const TimerId id = q.add(at(0), kOnce, record(log, 0));
  EXPECT_TRUE(id);
  EXPECT_NE(id.generation, 0u);
  EXPECT_FALSE(TimerId{});
}

TEST(TimerQueue, EqualDeadlinesFireInSchedulingOrder) {
  TimerQueue q;
  std::vector<int> log;
  for (int i = 0; i < 100; ++i)
    q.add(at(10), kOnce, record(log, i));
  EXPECT_EQ(q.run_due(at(10)), 100u);
  std::vector<int> expected(100);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(log, expected);
}

TEST(TimerQueue, FiresInDeadlineOrder) {
  TimerQueue q;
  std::vector<int> log;
  q.add(at(30), kOnce, record(log, 30));
  q.add(at(10), kOnce, record(log, 10));
  q.add(at(20), kOnce, record(log, 20));
  q.add(at(5), kOnce, record(log, 5));
  EXPECT_EQ(q.next_deadline(), at(5));
  EXPECT_EQ(q.run_due(at(100)), 4u);
  EXPECT_EQ(log, (std::vector<int>{5, 10, 20, 30}));
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.next_deadline(), std::nullopt);
}

// Observer: "Told around each callback run_due() calls": the deadline before, then the return,
// in firing order, a repeating timer's grid deadline included.
TEST(TimerQueue, ObserverIsToldAroundEachCallbackWithItsDeadline) {
  struct Log final : TimerQueue::Observer {
    std::vector<std::string> events;
    void firing(TimePoint deadline) noexcept override {
      events.push_back("firing " + std::to_string((deadline - at(0)).count()));
    }
    void fired() noexcept override { events.push_back("fired"); }
  } observer;
  TimerQueue q;
  q.add(at(20), kOnce, [&] { observer.events.push_back("callback 20"); });
  q.add(at(10), nanoseconds(50), [&] { observer.events.push_back("callback 10"); });
  EXPECT_EQ(q.run_due(at(30), &observer), 2u);
  EXPECT_EQ(observer.events, (std::vector<std::string>{"firing 10", "callback 10", "fired",
                                                       "firing 20", "callback 20", "fired"}));
  observer.events.clear();
  EXPECT_EQ(q.run_due(at(60), &observer), 1u);  // the repeating one, on its grid: 10 + 50
  EXPECT_EQ(observer.events, (std::vector<std::string>{"firing 60", "callback 10", "fired"}));
}

TEST(TimerQueue, NeverEarly) {
  TimerQueue q;
  std::vector<int> log;
  q.add(at(50), kOnce, record(log, 1));
  EXPECT_EQ(q.run_due(at(50) - nanoseconds(1)), 0u);
  EXPECT_TRUE(log.empty());
  EXPECT_EQ(q.run_due(at(50)), 1u);
  EXPECT_EQ(log, std::vector<int>{1});
}

TEST(TimerQueue, OnlyDueTimersFire) {
  TimerQueue q;
  std::vector<int> log;
  q.add(at(10), kOnce, record(log, 10));
  q.add(at(20), kOnce, record(log, 20));
  q.add(at(30), kOnce, record(log, 30));
  EXPECT_EQ(q.run_due(at(20)), 2u);
  EXPECT_EQ(log, (std::vector<int>{10, 20}));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.next_deadline(), at(30));
}

TEST(TimerQueue, CancelBeforeFiring) {
  TimerQueue q;
  std::vector<int> log;
  const TimerId a = q.add(at(10), kOnce, record(log, 1));
  q.add(at(20), kOnce, record(log, 2));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_TRUE(q.cancel(a));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.next_deadline(), at(20));
  EXPECT_FALSE(q.cancel(a));  // twice is a no-op
  EXPECT_EQ(q.run_due(at(100)), 1u);
  EXPECT_EQ(log, std::vector<int>{2});
}

TEST(TimerQueue, CancelDestroysCallbackAtOnce) {
  TimerQueue q;
  auto token = std::make_shared<int>(0);
  const TimerId id = q.add(at(10), kOnce, [token] {});
  EXPECT_EQ(token.use_count(), 2);
  EXPECT_TRUE(q.cancel(id));
  EXPECT_EQ(token.use_count(), 1);
}

TEST(TimerQueue, CancelAtFiringFromAnotherCallbackInSameRun) {
  TimerQueue q;
  std::vector<int> log;
  TimerId victim;
  bool cancelled = false;
  q.add(at(10), kOnce, [&] {
    log.push_back(1);
    cancelled = q.cancel(victim);
  });
  victim = q.add(at(10), kOnce, record(log, 2));  // due in the same run_due call
  q.add(at(10), kOnce, record(log, 3));
  EXPECT_EQ(q.run_due(at(10)), 2u);
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(log, (std::vector<int>{1, 3}));
  EXPECT_EQ(q.size(), 0u);
}

TEST(TimerQueue, CancelAfterFiringReturnsFalse) {
  TimerQueue q;
  std::vector<int> log;
  const TimerId id = q.add(at(10), kOnce, record(log, 1));
  EXPECT_EQ(q.run_due(at(10)), 1u);
  EXPECT_FALSE(q.cancel(id));
  EXPECT_EQ(q.size(), 0u);
}

TEST(TimerQueue, OneShotCancellingItselfWhileRunningReturnsFalse) {
  TimerQueue q;
  TimerId self;
  std::optional<bool> result;
  self = q.add(at(10), kOnce, [&] { result = q.cancel(self); });
  EXPECT_EQ(q.run_due(at(10)), 1u);
  EXPECT_EQ(result, false);  // it has fired: its id is already stale
}

TEST(TimerQueue, StaleIdAfterSlotReuseDoesNotCancelNewTimer) {
  TimerQueue q;
  std::vector<int> log;
  const TimerId old_id = q.add(at(10), kOnce, record(log, 1));
  EXPECT_TRUE(q.cancel(old_id));
  const TimerId new_id = q.add(at(20), kOnce, record(log, 2));
  ASSERT_EQ(new_id.slot, old_id.slot);  // the slot is recycled...
  EXPECT_NE(new_id, old_id);            // ...under a new generation
  EXPECT_FALSE(q.cancel(old_id));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.run_due(at(20)), 1u);
  EXPECT_EQ(log, std::vector<int>{2});

  // The same after firing rather than cancelling.
  const TimerId third = q.add(at(30), kOnce, record(log, 3));
  EXPECT_EQ(third.slot, new_id.slot);
  EXPECT_FALSE(q.cancel(new_id));
  EXPECT_FALSE(q.cancel(old_id));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_TRUE(q.cancel(third));
}

TEST(TimerQueue, RepeatingTimerCancelsItselfFromItsCallback) {
  TimerQueue q;
  TimerId self;
  int calls = 0;
  std::optional<bool> result;
  self = q.add(at(10), nanoseconds(10), [&] {
    if (++calls == 3) result = q.cancel(self);
  });
  q.run_due(at(10));
  q.run_due(at(20));
  EXPECT_EQ(q.size(), 1u);
  q.run_due(at(30));
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(result, true);
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.next_deadline(), std::nullopt);
  EXPECT_FALSE(q.cancel(self));  // stale now
  EXPECT_EQ(q.run_due(at(1000)), 0u);
  EXPECT_EQ(calls, 3);
}

// size(): "Live timers: pending ones, and a repeating one whose callback is running"; empty():
// "Nothing pending", which a timer added by a callback (staged until run_due() returns) is not.
TEST(TimerQueue, SizeAndEmptyFromInsideCallbacks) {
  TimerQueue q;
  std::optional<std::size_t> size_in_repeating;
  std::optional<std::size_t> size_in_one_shot;
  std::optional<bool> empty_after_adding;
  q.add(at(10), nanoseconds(10), [&] { size_in_repeating = q.size(); });
  q.run_due(at(10));
  EXPECT_EQ(size_in_repeating, 1u) << "the running repeating timer is live";
  TimerQueue r;
  r.add(at(10), kOnce, [&] {
    size_in_one_shot = r.size();
    r.add(at(20), kOnce, [] {});
    empty_after_adding = r.empty();
  });
  r.run_due(at(10));
  EXPECT_EQ(size_in_one_shot, 0u) << "a one-shot timer has fired once its callback runs";
  EXPECT_EQ(empty_after_adding, false) << "the timer added by the callback is pending";
  EXPECT_EQ(r.size(), 1u);
  EXPECT_FALSE(r.empty());
}

// next_deadline(): "The earliest pending deadline", asked from a callback too, when the earliest
// is a timer that callback added (held apart until run_due() returns).
TEST(TimerQueue, NextDeadlineFromACallbackIncludesTimersItAdded) {
  TimerQueue q;
  std::vector<std::optional<TimePoint>> seen;
  q.add(at(100), kOnce, [] {});
  q.add(at(10), kOnce, [&] {
    seen.push_back(q.next_deadline());
    q.add(at(50), kOnce, [] {});
    seen.push_back(q.next_deadline());
    q.add(at(200), kOnce, [] {});
    q.add(at(40), kOnce, [] {});
    seen.push_back(q.next_deadline());
  });
  q.run_due(at(10));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], at(100));
  EXPECT_EQ(seen[1], at(50));
  EXPECT_EQ(seen[2], at(40));
  EXPECT_EQ(q.next_deadline(), at(40));
  // Only the heap's timers pending, the staged ones moved in: next_deadline() is the heap's.
  TimerQueue only_staged;
  std::optional<TimePoint> first;
  only_staged.add(at(10), kOnce, [&] {
    only_staged.add(at(30), kOnce, [] {});
    first = only_staged.next_deadline();
  });
  only_staged.run_due(at(10));
  EXPECT_EQ(first, at(30));
}

TEST(TimerQueue, RepeatingTimerCallbackDestroyedWhenItCancelsItself) {
  TimerQueue q;
  auto token = std::make_shared<int>(0);
  TimerId self;
  self = q.add(at(10), nanoseconds(10), [&q, &self, token] { q.cancel(self); });
  EXPECT_EQ(token.use_count(), 2);
  q.run_due(at(10));
  EXPECT_EQ(token.use_count(), 1);
}

TEST(TimerQueue, RepeatingTimerCancelledByAnotherCallbackInSameRunStops) {
  TimerQueue q;
  int calls = 0;
  const TimerId repeating = q.add(at(10), nanoseconds(10), [&] { ++calls; });
  q.add(at(25), kOnce, [&] { EXPECT_TRUE(q.cancel(repeating)); });
  // A stall: the repeating timer fires once (re-armed at 50), then the canceller at 25 runs.
  EXPECT_EQ(q.run_due(at(40)), 2u);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.run_due(at(1000)), 0u);
}

TEST(TimerQueue, RescheduleInsideCallbackFiresOnNextRunNotThisOne) {
  TimerQueue q;
  int calls = 0;
  // Re-arms itself with zero delay: must not loop forever inside one run_due call.
  struct Rearm {
    TimerQueue* q;
    int* calls;
    TimePoint when;
    void operator()() const {
      ++*calls;
      q->add(when, kOnce, Rearm{q, calls, when});
    }
  };
  q.add(at(10), kOnce, Rearm{&q, &calls, at(10)});
  EXPECT_EQ(q.run_due(at(10)), 1u);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.next_deadline(), at(10));
  EXPECT_EQ(q.run_due(at(10)), 1u);
  EXPECT_EQ(calls, 2);
}

TEST(TimerQueue, TimerAddedDuringRunDoesNotHideOlderDueTimers) {
  TimerQueue q;
  std::vector<int> log;
  // The first callback adds a timer due before the second old one; the old one still fires in
  // this call and the new one waits for the next.
  q.add(at(10), kOnce, [&] {
    log.push_back(1);
    q.add(at(5), kOnce, record(log, 99));
  });
  q.add(at(20), kOnce, record(log, 2));
  EXPECT_EQ(q.run_due(at(20)), 2u);
  EXPECT_EQ(log, (std::vector<int>{1, 2}));
  EXPECT_EQ(q.next_deadline(), at(5));
  EXPECT_EQ(q.run_due(at(20)), 1u);
  EXPECT_EQ(log, (std::vector<int>{1, 2, 99}));
}

TEST(TimerQueue, TimerAddedDuringRunCanBeCancelledInSameRun) {
  TimerQueue q;
  std::vector<int> log;
  TimerId added;
  q.add(at(10), kOnce, [&] { added = q.add(at(10), kOnce, record(log, 99)); });
  q.add(at(10), kOnce, [&] {
    EXPECT_EQ(q.size(), 1u);  // both old ones have fired; the added one is pending
    EXPECT_EQ(q.next_deadline(), at(10));
    EXPECT_TRUE(q.cancel(added));
  });
  EXPECT_EQ(q.run_due(at(10)), 2u);
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.run_due(at(10)), 0u);
  EXPECT_TRUE(log.empty());
}

// "a callback may ... cancel ... any other timer, add timers": of three timers added during one
// run, cancelling the first (not the last added) leaves the other two pending, each still
// cancellable by its own id, and they fire on the next run.
TEST(TimerQueue, CancellingOneOfSeveralTimersAddedDuringARunKeepsTheOthers) {
  TimerQueue q;
  std::vector<int> log;
  TimerId ids[3];
  q.add(at(10), kOnce, [&] {
    for (int i = 0; i < 3; ++i)
      ids[i] = q.add(at(20 + i), kOnce, record(log, i));
    EXPECT_TRUE(q.cancel(ids[0]));
    EXPECT_EQ(q.size(), 2u);
    EXPECT_EQ(q.next_deadline(), at(21));
  });
  q.run_due(at(10));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_FALSE(q.cancel(ids[0]));
  EXPECT_EQ(q.run_due(at(100)), 2u);
  EXPECT_EQ(log, (std::vector<int>{1, 2}));
  // Cancelling the first moves the last into its place: that one must still be found by its
  // id, and cancelling it must not take the middle one with it.
  TimerQueue r;
  std::vector<int> fired;
  TimerId staged[3];
  r.add(at(10), kOnce, [&] {
    for (int i = 0; i < 3; ++i)
      staged[i] = r.add(at(30 + i), kOnce, record(fired, i));
    EXPECT_TRUE(r.cancel(staged[0]));
    EXPECT_TRUE(r.cancel(staged[2]));
  });
  r.run_due(at(10));
  EXPECT_EQ(r.size(), 1u);
  EXPECT_EQ(r.run_due(at(100)), 1u);
  EXPECT_EQ(fired, std::vector<int>{1});
  EXPECT_TRUE(r.empty());
}

TEST(TimerQueue, RepeatingTimerStaysOnItsGrid) {
  TimerQueue q;
  std::vector<TimePoint> fired_at;
  TimePoint now;
  q.add(at(10), nanoseconds(10), [&] { fired_at.push_back(now); });
  now = at(10);
  EXPECT_EQ(q.run_due(now), 1u);
  EXPECT_EQ(q.next_deadline(), at(20));
  now = at(25);  // late: the next deadline stays on the grid, not 25 + 10
  EXPECT_EQ(q.run_due(now), 1u);
  EXPECT_EQ(fired_at, (std::vector<TimePoint>{at(10), at(25)}));
  EXPECT_EQ(q.next_deadline(), at(30));
  EXPECT_EQ(q.size(), 1u);
}

TEST(TimerQueue, RepeatingTimerSkipsPeriodsMissedInAStall) {
  TimerQueue q;
  int calls = 0;
  q.add(at(10), nanoseconds(10), [&] { ++calls; });
  EXPECT_EQ(q.run_due(at(10)), 1u);
  EXPECT_EQ(q.run_due(at(1000)), 1u);  // once, not a burst of 99
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(q.next_deadline(), at(1010));
  EXPECT_EQ(q.run_due(at(1009)), 0u);
  EXPECT_EQ(q.run_due(at(1010)), 1u);
  EXPECT_EQ(q.next_deadline(), at(1020));
}

TEST(TimerQueue, RepeatingTimerWithoutARepresentableNextDeadlineStops) {
  TimerQueue q;
  int calls = 0;
  const TimerId id = q.add(TimePoint::max() - nanoseconds(5), nanoseconds(10), [&] { ++calls; });
  EXPECT_EQ(q.run_due(TimePoint::max()), 1u);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(q.size(), 0u);
  EXPECT_FALSE(q.cancel(id));
}

TEST(TimerQueue, DeadlineAtTimePointMaxNeverFires) {
  TimerQueue q;
  int calls = 0;
  const TimerId never = q.add(TimePoint::max(), kOnce, [&] { calls += 100; });
  q.add(TimePoint::max() - nanoseconds(1), kOnce, [&] { ++calls; });
  EXPECT_EQ(q.run_due(TimePoint::max()), 1u);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(q.next_deadline(), TimePoint::max());
  EXPECT_TRUE(q.cancel(never)) << "still pending";
}

TEST(TimerQueue, DestructorDestroysPendingCallbacksWithoutCalling) {
  auto token = std::make_shared<int>(0);
  bool called = false;
  {
    TimerQueue q;
    q.add(at(10), kOnce, [token, &called] { called = true; });
    q.add(at(10), nanoseconds(5), [token, &called] { called = true; });
    EXPECT_EQ(token.use_count(), 3);
  }
  EXPECT_FALSE(called);
  EXPECT_EQ(token.use_count(), 1);
}

// Counts live instances, to see which callbacks were destroyed.
struct Live {
  explicit Live(int* n) : n_(n) { ++*n_; }
  Live(Live&& other) noexcept : n_(other.n_) { ++*n_; }
  Live(const Live&) = delete;
  Live& operator=(const Live&) = delete;
  Live& operator=(Live&&) = delete;
  ~Live() { --*n_; }
  int* n_;
};

// A callback whose destructor uses the queue: cancels `victim` and adds a timer.
struct TouchesTheQueueWhenDestroyed {
  TouchesTheQueueWhenDestroyed(TimerQueue& q, TimerId* victim, int* live)
      : q_(&q), victim_(victim), live_(live) {}
  TouchesTheQueueWhenDestroyed(TouchesTheQueueWhenDestroyed&& other) noexcept
      : q_(std::exchange(other.q_, nullptr)), victim_(other.victim_), live_(other.live_) {}
  TouchesTheQueueWhenDestroyed& operator=(TouchesTheQueueWhenDestroyed&&) = delete;
  ~TouchesTheQueueWhenDestroyed() {
    if (!q_) return;  // moved from
    q_->cancel(*victim_);
    q_->add(at(5), kOnce, [l = Live(live_)] {});
  }
  void operator()() {}
  TimerQueue* q_;
  TimerId* victim_;
  int* live_;
};

TEST(TimerQueue, DestroyedCallbacksMayCancelAndAddTimers) {
  int live = 0;
  {
    TimerQueue q;
    TimerId victim;
    q.add(at(10), kOnce, TouchesTheQueueWhenDestroyed(q, &victim, &live));
    victim = q.add(at(20), kOnce, [l = Live(&live)] {});
    q.add(at(30), nanoseconds(5), TouchesTheQueueWhenDestroyed(q, &victim, &live));
    EXPECT_EQ(live, 1);
  }
  EXPECT_EQ(live, 0) << "a timer added by a destructor was not destroyed";
}

TEST(TimerQueue, ClearCancelsEveryPendingTimer) {
  TimerQueue q;
  auto token = std::make_shared<int>(0);
  bool called = false;
  const TimerId a = q.add(at(10), kOnce, [token, &called] { called = true; });
  q.add(at(20), nanoseconds(5), [token, &called] { called = true; });
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(token.use_count(), 1);
  EXPECT_FALSE(q.cancel(a));
  EXPECT_EQ(q.run_due(at(100)), 0u);
  EXPECT_FALSE(called);
}

TEST(TimerQueue, OneShotCallbackDestroyedAfterFiring) {
  TimerQueue q;
  auto token = std::make_shared<int>(0);
  q.add(at(10), kOnce, [token] {});
  q.run_due(at(10));
  EXPECT_EQ(token.use_count(), 1);
}

TEST(TimerQueue, ThrowingCallbackLeavesQueueConsistent) {
  TimerQueue q;
  std::vector<int> log;
  q.add(at(10), nanoseconds(10), [&] {
    log.push_back(1);
    q.add(at(10), kOnce, record(log, 3));  // staged when the throw happens
    throw 42;
  });
  q.add(at(10), kOnce, record(log, 2));
  EXPECT_THROW(q.run_due(at(10)), int);
  EXPECT_EQ(q.size(), 3u);  // the repeating timer keeps its place and its callback
  EXPECT_EQ(q.next_deadline(), at(10));
  EXPECT_EQ(q.run_due(at(10)), 2u);  // the one the throw skipped, then the one added
  EXPECT_EQ(log, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(q.next_deadline(), at(20));
}

// ---- reschedule ----

// reschedule(): "Moves a pending timer to `deadline` (TimePoint::max(): never)". One table, one
// timer per row, moved before any run: earlier, later, to the same deadline, into the past (due
// at the next run_due) and to never; each fires at the first run at or after its new deadline.
TEST(TimerQueue, RescheduleMovesAPendingTimerToItsNewDeadline) {
  struct Row {
    const char* name;
    std::int64_t first, moved_to;
  };
  const Row rows[] = {
      {"earlier", 50, 20},
      {"later", 20, 50},
      {"same", 30, 30},
      {"into the past", 30, -10},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    TimerQueue q;
    std::vector<int> log;
    const TimerId id = q.add(at(row.first), kOnce, record(log, 1));
    ASSERT_TRUE(q.reschedule(id, at(row.moved_to)));
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.next_deadline(), at(row.moved_to));
    EXPECT_EQ(q.run_due(at(row.moved_to - 1)), 0u);
    EXPECT_EQ(q.run_due(at(row.moved_to)), 1u);
    EXPECT_EQ(log, std::vector<int>{1});
    EXPECT_TRUE(q.empty());
  }
  // To never: pending for ever, until cancelled.
  TimerQueue q;
  int calls = 0;
  const TimerId id = q.add(at(5), kOnce, [&] { ++calls; });
  ASSERT_TRUE(q.reschedule(id, TimePoint::max()));
  EXPECT_EQ(q.run_due(TimePoint::max()), 0u);
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(q.cancel(id)) << "still pending";
}

// "The timer then orders after every timer scheduled before this call at the same deadline."
// And the heap keeps its order around entries re-sifted in place, up and down: 100 timers, each
// moved to a scrambled deadline, then two older ones to a deadline they share with one of those.
TEST(TimerQueue, RescheduledTimersFireInNewDeadlineThenRescheduleOrder) {
  TimerQueue q;
  std::vector<int> log;
  const TimerId a = q.add(at(1500), kOnce, record(log, 100));
  const TimerId b = q.add(at(1500), kOnce, record(log, 101));
  std::vector<TimerId> ids;
  for (int i = 0; i < 100; ++i)
    ids.push_back(q.add(at(1000 + i), kOnce, record(log, i)));
  auto scrambled = [](int i) { return 37 * i % 100; };
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(q.reschedule(ids[static_cast<std::size_t>(i)], at(10 * scrambled(i))));
  // Scheduled before every other timer, moved after them: b then a, after timer 50 (there
  // already: scrambled(50) == 50).
  ASSERT_TRUE(q.reschedule(b, at(500)));
  ASSERT_TRUE(q.reschedule(a, at(500)));
  EXPECT_EQ(q.run_due(at(2000)), 102u);
  std::vector<int> expected(100);
  std::iota(expected.begin(), expected.end(), 0);
  std::sort(expected.begin(), expected.end(),
            [&](int x, int y) { return scrambled(x) < scrambled(y); });
  expected.insert(std::find(expected.begin(), expected.end(), 50) + 1, {101, 100});
  EXPECT_EQ(log, expected);
}

// "false, changing nothing, for fired, cancelled or unknown ids (generation-checked like
// cancel())". A table of ids that name no pending timer; a timer that is pending, possibly in
// the same slot, is left exactly where it was.
TEST(TimerQueue, RescheduleOfAFiredCancelledOrUnknownIdReturnsFalseAndChangesNothing) {
  struct Row {
    const char* name;
    TimerId (*make)(TimerQueue&);  // returns the dead id; leaves one timer pending at 40
  };
  const Row rows[] = {
      {"fired",
       [](TimerQueue& q) {
         const TimerId id = q.add(at(1), kOnce, [] {});
         q.run_due(at(1));
         q.add(at(40), kOnce, [] {});
         return id;
       }},
      {"cancelled",
       [](TimerQueue& q) {
         const TimerId id = q.add(at(1), kOnce, [] {});
         q.cancel(id);
         q.add(at(40), kOnce, [] {});
         return id;
       }},
      {"stale, its slot reused",
       [](TimerQueue& q) {
         const TimerId id = q.add(at(1), kOnce, [] {});
         q.cancel(id);
         EXPECT_EQ(q.add(at(40), kOnce, [] {}).slot, id.slot);
         return id;
       }},
      {"default",
       [](TimerQueue& q) {
         q.add(at(40), kOnce, [] {});
         return TimerId{};
       }},
      {"unknown slot",
       [](TimerQueue& q) {
         q.add(at(40), kOnce, [] {});
         return TimerId{1000, 1};
       }},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    TimerQueue q;
    const TimerId dead = row.make(q);
    EXPECT_FALSE(q.reschedule(dead, at(2)));
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.next_deadline(), at(40));
    EXPECT_EQ(q.run_due(at(39)), 0u);
    EXPECT_EQ(q.run_due(at(40)), 1u);
  }
}

// A one-shot timer has fired once its callback runs: rescheduling itself returns false (as
// cancel() does), and it does not fire again.
TEST(TimerQueue, OneShotReschedulingItselfWhileRunningReturnsFalse) {
  TimerQueue q;
  int calls = 0;
  bool moved = true;
  TimerId id;
  id = q.add(at(10), kOnce, [&] {
    ++calls;
    moved = q.reschedule(id, at(20));
  });
  q.run_due(at(10));
  EXPECT_FALSE(moved);
  EXPECT_TRUE(q.empty());
  q.run_due(at(100));
  EXPECT_EQ(calls, 1);
}

// "A repeating timer keeps its period, and its grid restarts from the new deadline"; from its
// own callback: "True if ... the repeating timer whose callback is running now (its next firing
// moves)", and "A timer added or rescheduled during run_due() never fires in that same call":
// moved to "now" from its callback, it fires on the next run, not in a loop.
TEST(TimerQueue, RepeatingTimerRescheduledKeepsItsPeriodOnANewGrid) {
  struct Row {
    const char* name;
    bool from_own_callback;
    std::int64_t moved_to;
    std::vector<std::int64_t> fires;  // at which of the runs at 0, 1, 2, ... 60 it fires
  };
  const Row rows[] = {
      // every 10 from 10; moved at time 10 (before or inside the firing at 10)
      {"later, from outside", false, 25, {10, 25, 35, 45, 55}},
      {"earlier, from outside", false, 13, {10, 13, 23, 33, 43, 53}},
      {"later, from its callback", true, 25, {10, 25, 35, 45, 55}},
      {"to now, from its callback", true, 10, {10, 11, 20, 30, 40, 50, 60}},  // late once
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    TimerQueue q;
    std::vector<std::int64_t> fires;
    std::int64_t now = 0;
    TimerId id;
    bool moved = false;
    id = q.add(at(10), nanoseconds(10), [&] {
      fires.push_back(now);
      // Once: were it not staged, a move to "now" would fire again in this run (fired == 2).
      if (row.from_own_callback && now == 10 && !moved) moved = q.reschedule(id, at(row.moved_to));
    });
    for (now = 0; now <= 60; ++now) {
      const std::size_t fired = q.run_due(at(now));
      EXPECT_LE(fired, 1u) << "at " << now;
      if (!row.from_own_callback && now == 10) moved = q.reschedule(id, at(row.moved_to));
    }
    EXPECT_TRUE(moved);
    EXPECT_EQ(fires, row.fires);
    EXPECT_EQ(q.size(), 1u);
  }
}

// "Safe from inside any timer callback": one timer's callback moves others, pending in the heap
// or added by that same callback (staged). None of them fires in that run, even when moved to a
// deadline already due ("never fires in that same call"), and an older due timer behind them
// still does.
TEST(TimerQueue, RescheduleFromAnotherTimersCallback) {
  TimerQueue q;
  std::vector<int> log;
  TimerId due_too, far, staged;
  q.add(at(10), kOnce, [&] {
    log.push_back(1);
    EXPECT_TRUE(q.reschedule(due_too, at(30)));  // due in this run: moved later
    EXPECT_TRUE(q.reschedule(far, at(0)));       // far: moved to already due
    staged = q.add(at(50), kOnce, record(log, 4));
    EXPECT_TRUE(q.reschedule(staged, at(5)));  // added by this callback, then moved
    EXPECT_EQ(q.next_deadline(), at(0));
  });
  due_too = q.add(at(10), kOnce, record(log, 2));
  far = q.add(at(1000), kOnce, record(log, 3));
  q.add(at(10), kOnce, record(log, 5));  // scheduled after them, due now: still fires
  EXPECT_EQ(q.run_due(at(10)), 2u);
  EXPECT_EQ(log, (std::vector<int>{1, 5}));
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.run_due(at(10)), 2u);
  EXPECT_EQ(log, (std::vector<int>{1, 5, 3, 4}));
  EXPECT_EQ(q.run_due(at(29)), 0u);
  EXPECT_EQ(q.run_due(at(30)), 1u);
  EXPECT_EQ(log, (std::vector<int>{1, 5, 3, 4, 2}));
  EXPECT_TRUE(q.empty());
}

// ---- allocation ----

// "Vectors only grow, so a queue in steady state does not allocate (Function keeps small
// callbacks inline)": add, fire, re-arm from a callback, cancel and a repeating timer, round
// after round, once warmed up, without a call to operator new (counted on this thread only).
TEST(TimerQueueAllocation, SteadyStateDoesNotAllocate) {
  TimerQueue q;
  struct State {
    TimerQueue* q;
    std::int64_t now = 0;
    std::uint64_t fired = 0, ticks = 0;
    TimerId doomed;
  } st{&q, 0, 0, 0, {}};
  q.add(at(1), nanoseconds(1), [s = &st] { ++s->ticks; });
  auto round = [&] {
    ++st.now;
    q.cancel(st.doomed);
    st.doomed = q.add(at(st.now + 1000), kOnce, [] {});
    q.add(at(st.now), kOnce, [s = &st] {
      ++s->fired;
      s->q->add(at(s->now + 1), kOnce, [s] { ++s->fired; });  // staged, fires next round
    });
    q.run_due(at(st.now));
  };
  for (int i = 0; i < 100; ++i)
    round();
  std::size_t allocations = 0;
  {
    test::Counting counting;
    for (int i = 0; i < 1000; ++i)
      round();
    allocations = counting.calls();
  }
  EXPECT_EQ(st.ticks, 1100u);
  EXPECT_EQ(st.fired, 2 * 1100u - 1);
  EXPECT_EQ(allocations, 0u);
}

// reserve(n): "Pre-sizes for n live timers, so add() does not allocate until there are more."
TEST(TimerQueueAllocation, ReserveMakesAddsUpToThatManyAllocationFree) {
  constexpr std::size_t kReserved = 1000;
  TimerQueue q;
  q.reserve(kReserved);
  std::size_t allocations = 0;
  {
    test::Counting counting;
    for (std::size_t i = 0; i < kReserved; ++i)
      q.add(at(static_cast<std::int64_t>(i % 7)), kOnce, [] {});
    allocations = counting.calls();
  }
  EXPECT_EQ(allocations, 0u);
  EXPECT_EQ(q.size(), kReserved);
  {
    test::Counting counting;
    q.add(at(0), kOnce, [] {});
    allocations = counting.calls();
  }
  EXPECT_GT(allocations, 0u) << "one more than reserved grows the vectors";
}

// reschedule(): "keeping its callback where it is: nothing is destroyed, moved or allocated" and
// "reschedule() never allocates", also from a callback, where it stages the timer. The callback
// is too large to be stored inline, so it lives in one heap block: it reports its own address
// each call, which stays the same, and no instance is made or destroyed.
TEST(TimerQueueAllocation, RescheduleNeitherAllocatesNorMovesTheCallback) {
  TimerQueue q;
  int live = 0;
  std::vector<const void*> seen;
  struct Big {
    Live live;
    std::vector<const void*>* seen;
    std::array<void*, 8> padding{};
    void operator()() { seen->push_back(this); }
  };
  const TimerId id = q.add(at(1'000'000), kOnce, Big{Live(&live), &seen});
  const TimerId tick = q.add(at(0), nanoseconds(1), [] {});
  TimerId other;
  const TimerId mover = q.add(at(0), nanoseconds(1), [&] { q.reschedule(other, at(2000)); });
  other = q.add(at(7), kOnce, [] {});
  ASSERT_EQ(live, 1);
  std::size_t allocations = 0;
  {
    test::Counting counting;
    for (std::int64_t i = 0; i < 1000; ++i) {
      EXPECT_TRUE(q.reschedule(id, at(i + 1)));
      EXPECT_TRUE(q.reschedule(tick, at(i)));
      q.run_due(at(i));  // the mover stages `other` each time
    }
    allocations = counting.calls();
  }
  EXPECT_EQ(allocations, 0u);
  EXPECT_EQ(live, 1) << "no copy made, none destroyed";
  q.cancel(mover);
  EXPECT_EQ(q.run_due(at(2000)), 3u);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(live, 0);
}

// add(): "Throws std::bad_alloc when the vectors must grow and cannot ...; the queue is unchanged
// then." Each of add()'s allocations is failed in turn (outside and inside run_due(), where the
// staging area grows too); after each failure the queue holds what it held, and works.
TEST(TimerQueueAllocation, AddThatCannotAllocateThrowsAndLeavesTheQueueUnchanged) {
  for (bool from_callback : {false, true}) {
    for (int fail_at = 0;; ++fail_at) {
      SCOPED_TRACE(std::string(from_callback ? "inside" : "outside") + " run_due, allocation " +
                   std::to_string(fail_at));
      TimerQueue q;
      std::vector<int> log;
      q.add(at(5), kOnce, record(log, 1));
      bool threw = false;
      bool added = false;
      auto try_add = [&] {
        test::Counting counting;
        counting.fail_after(fail_at);
        try {
          // A callback too large for Function's inline storage: its heap block can fail too.
          std::array<void*, 8> big{};
          q.add(at(20), kOnce, [&log, big] { log.push_back(big[0] ? 0 : 2); });
          added = true;
        } catch (const std::bad_alloc&) {
          threw = true;
        }
      };
      if (from_callback) {
        q.add(at(10), kOnce, [&] { try_add(); });
        q.run_due(at(10));
      } else {
        try_add();
      }
      EXPECT_NE(threw, added);
      const std::size_t base = from_callback ? 0u : 1u;  // the at(5) timer, unless it fired
      EXPECT_EQ(q.size(), base + (added ? 1u : 0u));
      q.run_due(at(100));
      const std::vector<int> expected = added ? std::vector<int>{1, 2} : std::vector<int>{1};
      EXPECT_EQ(log, expected);
      EXPECT_TRUE(q.empty());
      if (!threw) break;  // every allocation add() makes has been failed once
    }
  }
}

TEST(TimerQueue, ManyTimersScheduledThenAllCancelledInRandomOrder) {
  TimerQueue q;
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<std::int64_t> deadline(0, 1'000'000'000);
  std::vector<TimerId> ids;
  ids.reserve(kMany);
  int calls = 0;
  for (std::size_t i = 0; i < kMany; ++i) {
    ids.push_back(q.add(at(deadline(rng)), kOnce, [&calls] { ++calls; }));
  }
  EXPECT_EQ(q.size(), kMany);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(q.cancel(ids[i])) << i;
  }
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.next_deadline(), std::nullopt);
  EXPECT_EQ(q.run_due(TimePoint::max()), 0u);
  EXPECT_EQ(calls, 0);
  for (const TimerId id : ids)
    EXPECT_FALSE(q.cancel(id));
}

TEST(TimerQueue, ManyRandomTimersFireInDeadlineThenSchedulingOrder) {
  TimerQueue q;
  q.reserve(kMany);
  std::mt19937_64 rng(2);
  // A narrow range, so many deadlines tie and the sequence number decides.
  std::uniform_int_distribution<std::int64_t> deadline(0, static_cast<std::int64_t>(kMany / 8));
  std::vector<std::int64_t> deadlines(kMany);
  std::vector<std::uint32_t> fired;
  fired.reserve(kMany);
  for (std::size_t i = 0; i < kMany; ++i) {
    deadlines[i] = deadline(rng);
    q.add(at(deadlines[i]), kOnce, [&fired, i] { fired.push_back(static_cast<std::uint32_t>(i)); });
  }
  std::vector<std::uint32_t> expected(kMany);
  std::iota(expected.begin(), expected.end(), 0u);
  std::stable_sort(expected.begin(), expected.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return deadlines[a] < deadlines[b]; });

  // Half in steps, the rest at once, so both partial and full runs are exercised.
  const std::int64_t half = static_cast<std::int64_t>(kMany / 16);
  for (std::int64_t t = 0; t < half; t += 97)
    q.run_due(at(t));
  q.run_due(TimePoint::max());
  EXPECT_EQ(q.size(), 0u);
  ASSERT_EQ(fired.size(), expected.size());
  EXPECT_TRUE(fired == expected);
}

// ---- Random schedule / cancel / reschedule / run against a model -------------------------------

// The model states the contract in the most literal way: a std::map keyed by (deadline,
// scheduling sequence), with run_due firing only entries whose sequence predates the call.
class Model {
 public:
  using Key = std::pair<TimePoint, std::uint64_t>;

  void add(int label, TimePoint deadline, Duration period) {
    if (static_cast<std::size_t>(label) >= where_.size()) {
      where_.resize(static_cast<std::size_t>(label) + 1);
      period_.resize(where_.size());
    }
    const Key key{deadline, seq_++};
    timers_.emplace(key, label);
    where_[static_cast<std::size_t>(label)] = key;
    period_[static_cast<std::size_t>(label)] = period;
  }

  bool cancel(int label) {
    auto& where = where_[static_cast<std::size_t>(label)];
    if (!where) return false;
    timers_.erase(*where);
    where.reset();
    return true;
  }

  bool reschedule(int label, TimePoint deadline) {
    auto& where = where_[static_cast<std::size_t>(label)];
    if (!where) return false;
    timers_.erase(*where);
    where = Key{deadline, seq_++};
    timers_.emplace(*where, label);
    return true;
  }

  // Calls on_fire(label) for each timer that fires.
  template <class OnFire>
  std::size_t run_due(TimePoint now, OnFire on_fire) {
    const std::uint64_t snapshot = seq_;
    std::size_t fired = 0;
    for (;;) {
      auto it = timers_.begin();
      while (it != timers_.end() && it->first.first <= now && it->first.second >= snapshot)
        ++it;
      if (it == timers_.end() || it->first.first > now) break;
      const auto [key, label] = *it;
      timers_.erase(it);
      auto& where = where_[static_cast<std::size_t>(label)];
      const Duration period = period_[static_cast<std::size_t>(label)];
      if (period > Duration::zero()) {
        const auto steps = (now - key.first) / period + 1;
        where = Key{key.first + steps * period, seq_++};
        timers_.emplace(*where, label);
      } else {
        where.reset();
      }
      ++fired;
      on_fire(label);
    }
    return fired;
  }

  std::size_t size() const { return timers_.size(); }
  std::optional<TimePoint> next_deadline() const {
    if (timers_.empty()) return std::nullopt;
    return timers_.begin()->first.first;
  }

 private:
  std::map<Key, int> timers_;
  std::vector<std::optional<Key>> where_;  // by label
  std::vector<Duration> period_;           // by label
  std::uint64_t seq_ = 0;
};

std::uint64_t mix(std::uint64_t x) {  // splitmix64: a label's fixed pseudo-random traits
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// What a timer's callback does besides logging, the same for the real queue and the model.
struct Script {
  enum Kind { kNothing, kCancel, kAdd, kReschedule } kind = kNothing;
  int target = 0;          // kCancel, kReschedule: any label created so far, itself included
  std::int64_t delay = 0;  // kAdd: a one-shot at now + delay (0: already due); kReschedule: to
                           // now + delay
};

Script script_for(int label) {
  const std::uint64_t h = mix(static_cast<std::uint64_t>(label));
  Script s;
  switch (h % 8) {
    case 0:
    case 1:
      s.kind = Script::kCancel;
      s.target = static_cast<int>((h >> 8) % static_cast<std::uint64_t>(label + 1));
      break;
    case 2:
      s.kind = Script::kAdd;
      s.delay = static_cast<std::int64_t>((h >> 8) % 40);
      break;
    case 3:
      s.kind = Script::kReschedule;
      s.target = static_cast<int>((h >> 8) % static_cast<std::uint64_t>(label + 1));
      s.delay = static_cast<std::int64_t>((h >> 40) % 40);
      break;
    default:
      break;
  }
  return s;
}

// The real queue and the model, driven by the same operations; timers are named by labels,
// created in the same order on both sides.
struct Harness {
  TimerQueue q;
  Model model;
  std::vector<TimerId> ids;  // by label
  int labels = 0;
  int model_labels = 0;
  TimePoint now = at(0);
  std::vector<int> real_log, model_log;
  // What cancels and reschedules inside callbacks returned.
  std::vector<bool> real_results, model_results;

  int add(TimePoint deadline, Duration period) {
    const int label = labels++;
    ids.push_back(q.add(deadline, period, [this, label] { real_fire(label); }));
    model.add(model_labels++, deadline, period);
    return label;
  }

  void real_fire(int label) {
    real_log.push_back(label);
    const Script s = script_for(label);
    if (s.kind == Script::kCancel) {
      real_results.push_back(q.cancel(ids[static_cast<std::size_t>(s.target)]));
    } else if (s.kind == Script::kAdd) {
      const int added = labels++;
      ids.push_back(q.add(now + nanoseconds(s.delay), kOnce, [this, added] { real_fire(added); }));
    } else if (s.kind == Script::kReschedule) {
      real_results.push_back(
          q.reschedule(ids[static_cast<std::size_t>(s.target)], now + nanoseconds(s.delay)));
    }
  }

  void model_fire(int label) {
    model_log.push_back(label);
    const Script s = script_for(label);
    if (s.kind == Script::kCancel) {
      model_results.push_back(model.cancel(s.target));
    } else if (s.kind == Script::kAdd) {
      model.add(model_labels++, now + nanoseconds(s.delay), kOnce);
    } else if (s.kind == Script::kReschedule) {
      model_results.push_back(model.reschedule(s.target, now + nanoseconds(s.delay)));
    }
  }
};

TEST(TimerQueue, RandomOperationsMatchModel) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  constexpr int kOps = 200'000;
#else
  constexpr int kOps = 1'000'000;
#endif
  Harness h;
  std::mt19937_64 rng(3);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  std::size_t total_fired = 0;
  std::size_t max_size = 0;
  std::size_t cancels_in_callbacks = 0;  // and reschedules
  std::size_t reschedules = 0;           // outside callbacks, of pending timers
  // Random cancels mostly hit stale labels; these keep the repeating population near 20.
  std::vector<int> repeating;
  for (int op = 0; op < kOps; ++op) {
    const std::int64_t dice = uniform(0, 99);
    if (uniform(0, 1999) < static_cast<std::int64_t>(repeating.size())) {
      const auto i = static_cast<std::size_t>(uniform(0, std::ssize(repeating) - 1));
      const int label = repeating[i];
      repeating[i] = repeating.back();
      repeating.pop_back();
      ASSERT_EQ(h.q.cancel(h.ids[static_cast<std::size_t>(label)]), h.model.cancel(label))
          << "op " << op;
    } else if (dice < 45 || h.labels == 0) {
      // Mostly near (some already due), a few far, so the heap gets a few levels deep.
      const std::int64_t horizon = uniform(0, 4) == 0 ? 50'000 : 300;
      const TimePoint deadline = h.now + nanoseconds(uniform(-20, horizon));
      if (uniform(0, 49) == 0) {
        repeating.push_back(h.add(deadline, nanoseconds(uniform(20, 400))));
      } else {
        h.add(deadline, kOnce);
      }
    } else if (dice < 62) {
      const int label = static_cast<int>(uniform(0, h.labels - 1));
      ASSERT_EQ(h.q.cancel(h.ids[static_cast<std::size_t>(label)]), h.model.cancel(label))
          << "op " << op;
    } else if (dice < 70) {
      // A recent label (old ones have mostly fired), moved anywhere from already due to far:
      // up and down the heap.
      const int label = static_cast<int>(uniform(std::max(0, h.labels - 50), h.labels - 1));
      const TimePoint deadline =
          h.now + nanoseconds(uniform(-20, uniform(0, 4) == 0 ? 50'000 : 300));
      const bool moved = h.q.reschedule(h.ids[static_cast<std::size_t>(label)], deadline);
      ASSERT_EQ(moved, h.model.reschedule(label, deadline)) << "op " << op;
      reschedules += moved ? 1 : 0;
    } else {
      h.now += nanoseconds(uniform(0, 60));
      h.real_log.clear();
      h.model_log.clear();
      const std::size_t real_fired = h.q.run_due(h.now);
      const std::size_t model_fired =
          h.model.run_due(h.now, [&h](int label) { h.model_fire(label); });
      ASSERT_EQ(real_fired, model_fired) << "op " << op;
      ASSERT_EQ(h.real_log, h.model_log) << "op " << op;
      total_fired += real_fired;
    }
    ASSERT_EQ(h.labels, h.model_labels);
    ASSERT_EQ(h.real_results, h.model_results) << "op " << op;
    cancels_in_callbacks += h.real_results.size();
    h.real_results.clear();
    h.model_results.clear();
    ASSERT_EQ(h.q.size(), h.model.size()) << "op " << op;
    ASSERT_EQ(h.q.next_deadline(), h.model.next_deadline()) << "op " << op;
    max_size = std::max(max_size, h.q.size());
  }
  RecordProperty("fired", static_cast<int>(total_fired));
  RecordProperty("max_size", static_cast<int>(max_size));
  RecordProperty("cancels_in_callbacks", static_cast<int>(cancels_in_callbacks));
  RecordProperty("reschedules", static_cast<int>(reschedules));
  // The run must have exercised something: many firings, cancels from callbacks, a real heap.
  EXPECT_GT(total_fired, static_cast<std::size_t>(kOps / 10));
  EXPECT_GT(cancels_in_callbacks, 100u);
  EXPECT_GT(max_size, 50u);
  EXPECT_GT(reschedules, 1000u);
}

// The programmer errors the header names, asserted in debug builds: a negative period, an empty
// callback, run_due() from a callback (not reentrant), clear() from inside run_due(), and a
// ManualClock moved backwards by advance().
TEST(TimerQueueDeathTest, ProgrammerErrorsAreAssertedInDebugBuilds) {
#ifdef NDEBUG
  GTEST_SKIP() << "the assertions are compiled out (NDEBUG)";
#else
  TimerQueue q;
  EXPECT_DEATH(q.add(at(1), nanoseconds(-1), [] {}), "negative period");
  EXPECT_DEATH(q.add(at(1), kOnce, TimerQueue::Callback()), "empty callback");
  EXPECT_DEATH(
      {
        q.add(at(1), kOnce, [&] { q.run_due(at(2)); });
        q.run_due(at(1));
      },
      "not reentrant");
  EXPECT_DEATH(
      {
        q.add(at(1), kOnce, [&] { q.clear(); });
        q.run_due(at(1));
      },
      "clear from inside run_due");
  ManualClock clock;
  EXPECT_DEATH(clock.advance(nanoseconds(-1)), "never goes back");
#endif
}

TEST(ManualClock, StartsWhereToldAndMovesOnlyWhenTold) {
  ManualClock clock;
  EXPECT_EQ(clock.now(), TimePoint{} + std::chrono::hours(1));
  EXPECT_EQ(clock.now(), clock.now());

  ManualClock other(at(5));
  EXPECT_EQ(other.now(), at(5));
  other.advance(nanoseconds(7));
  EXPECT_EQ(other.now(), at(12));
  other.advance(Duration::zero());
  EXPECT_EQ(other.now(), at(12));
  other.set(at(1000));
  EXPECT_EQ(other.now(), at(1000));
  other.set(at(3));  // set() may go back; advance() may not
  EXPECT_EQ(other.now(), at(3));

  const TimeSource& source = other;
  EXPECT_EQ(source.now(), at(3));
}

}  // namespace
}  // namespace reactor

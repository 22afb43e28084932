// TimerQueue: the loop's timers, ordered by deadline.
//
// Ownership. The queue owns each timer's callback from add() until the timer fires (one-shot),
// is cancelled, or the queue is destroyed; the destructor destroys pending callbacks without
// calling them. Callers hold only a TimerId, which is generation-checked: cancelling a timer
// that already fired or was cancelled is a harmless no-op, even after its slot was reused.
//
// Threads. Single-threaded: one EventLoop owns the queue and uses it from its own thread.
//
// Callbacks. run_due() calls each due timer's callback with the callback moved out of the
// queue, so a callback may do anything with the queue except call run_due() again: cancel
// itself or any other timer, add or reschedule timers. A timer added or rescheduled during
// run_due() never fires in that same call, even when already due, so a callback that re-arms
// itself with zero delay cannot loop forever.
//
// Destruction. clear() and the destructor destroy the pending callbacks one at a time, with the
// queue consistent around each: a callback's destructor may cancel timers and add new ones,
// which are destroyed in turn (one that adds a timer every time it is destroyed never lets the
// queue empty).
// If a callback throws, the exception leaves run_due(); the queue stays consistent (a repeating
// timer keeps its callback and stays scheduled).
//
// Never. A deadline of TimePoint::max() never fires (it is what a saturated "now + forever"
// gives): the timer stays pending, counted by size(), until cancelled or destroyed.
//
// Repeating timers stay on their period grid: the next deadline is the previous one plus the
// period, and after a stall they fire once and skip to the first grid point after `now`
// instead of firing a burst. One whose next grid point is not before TimePoint::max() stops.
//
// Allocation and cost. Storage is a 4-ary min-heap of {deadline, seq, slot} plus a vector of
// slots holding the callbacks, recycled through a free list. Vectors only grow, so a queue in
// steady state does not allocate (Function keeps small callbacks inline); reschedule() never
// allocates. add(), cancel() and reschedule() are O(log n); run_due() is O(log n) per timer
// fired; size() is O(1), next_deadline() too except from a callback (then linear in the timers
// added or rescheduled during that run_due()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "reactor/function.hpp"

namespace reactor {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = std::chrono::nanoseconds;

// The loop's time source, replaceable in tests so timer behaviour is deterministic.
class TimeSource {
 public:
  virtual ~TimeSource() = default;
  virtual TimePoint now() const noexcept = 0;
};

// A clock for tests: time moves only when told. Not thread-safe.
class ManualClock final : public TimeSource {
 public:
  explicit ManualClock(TimePoint start = TimePoint{} + std::chrono::hours(1)) noexcept;
  TimePoint now() const noexcept override;
  void advance(Duration d) noexcept;  // d >= 0: a steady clock never goes back
  void set(TimePoint t) noexcept;     // any point, backwards included (tests of odd clocks)

 private:
  TimePoint now_;
};

// Names one timer. Generation 0 is never handed out, so a default TimerId is "no timer".
struct TimerId {
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;
  explicit operator bool() const noexcept { return generation != 0; }
  friend bool operator==(TimerId, TimerId) = default;
};

class TimerQueue {
 public:
  using Callback = Function<void()>;

  TimerQueue() = default;
  ~TimerQueue() { clear(); }
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Schedules `fn` (non-empty) at `deadline`. period == 0: one-shot; period > 0: repeating on
  // the grid deadline + k * period. A negative period is a programmer error (asserted).
  // Throws std::bad_alloc when the vectors must grow and cannot, std::length_error beyond 2^31
  // timers; the queue is unchanged then.
  TimerId add(TimePoint deadline, Duration period, Callback fn);

  // Stops a timer. True if it was pending, or is the repeating timer whose callback is running
  // now (it will not fire again); false for fired, cancelled or unknown ids. Safe from inside
  // any timer callback, the timer's own included. The callback is destroyed before returning,
  // unless it is the one running, which is destroyed when it returns.
  bool cancel(TimerId id) noexcept;

  // Moves a pending timer to `deadline` (TimePoint::max(): never), keeping its callback where
  // it is: nothing is destroyed, moved or allocated, and the id stays valid. The timer then
  // orders after every timer scheduled before this call at the same deadline. A repeating timer
  // keeps its period, and its grid restarts from the new deadline (it fires there, then every
  // period after). True if the timer was pending, or is the repeating timer whose callback is
  // running now (its next firing moves); false, changing nothing, for fired, cancelled or
  // unknown ids (generation-checked like cancel()). Safe from inside any timer callback.
  bool reschedule(TimerId id, TimePoint deadline) noexcept;

  // The earliest pending deadline, nullopt when nothing is pending.
  std::optional<TimePoint> next_deadline() const noexcept;

  // Live timers: pending ones, and a repeating one whose callback is running.
  std::size_t size() const noexcept { return slots_.size() - free_slots_.size(); }
  // Nothing pending: inline, so a loop without timers pays one compare per iteration.
  bool empty() const noexcept { return heap_.empty() && staged_.empty(); }

  // Told around each callback run_due() calls (the loop's instruments: how late, how long).
  class Observer {
   public:
    virtual void firing(TimePoint deadline) noexcept = 0;  // the callback is about to run
    virtual void fired() noexcept = 0;                     // it returned
   protected:
    ~Observer() = default;
  };

  // Fires every timer whose deadline <= now, in deadline order, equal deadlines in the order
  // they were scheduled, telling `observer` (when given) around each. Returns how many
  // callbacks were called. Not reentrant.
  std::size_t run_due(TimePoint now, Observer* observer = nullptr);

  // Cancels every pending timer: their callbacks are destroyed without being called, those
  // added by the destructors too. Not from inside run_due().
  void clear() noexcept;

  // Pre-sizes for `n` live timers, so add() does not allocate until there are more.
  void reserve(std::size_t n);

 private:
  struct Entry {
    TimePoint deadline;
    std::uint64_t seq;  // scheduling order: breaks ties between equal deadlines
    std::uint32_t slot;
  };

  struct Slot {
    std::uint32_t where = kFree;  // heap index, kStaged | staged index, or kFree
    std::uint32_t generation = 1;
    Duration period{0};
    Callback fn;
  };

  static constexpr std::uint32_t kFree = 0xffffffffu;
  static constexpr std::uint32_t kStaged = 0x80000000u;
  static constexpr std::uint32_t kMaxTimers = kStaged - 1;

  static bool earlier(const Entry& a, const Entry& b) noexcept {
    return a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq);
  }

  void place(std::size_t i, const Entry& e) noexcept;
  void sift_up(std::size_t i, Entry e) noexcept;
  void sift_down(std::size_t i, Entry e) noexcept;
  void erase_from_heap(std::size_t i) noexcept;
  void erase_from_staged(std::size_t i) noexcept;
  void release(std::uint32_t slot) noexcept;
  void flush_staged() noexcept;

  std::vector<Entry> heap_;
  // Timers added or rescheduled during run_due(): kept out of the heap until it returns, so none
  // of them fires in the call that added it, and none of them hides an older due timer behind
  // it. Capacity >= slots_.size(), so reschedule() can stage any live timer without allocating.
  std::vector<Entry> staged_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_slots_;  // capacity >= slots_.size(): release never allocates
  std::uint64_t next_seq_ = 0;
  bool running_ = false;
};

}  // namespace reactor

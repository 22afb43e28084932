#include "reactor/timer_queue.hpp"

#include <algorithm>
#include <cassert>
#include <stdexcept>
#include <utility>

namespace reactor {

namespace {

constexpr TimePoint kNever = TimePoint::max();

// Geometric growth done up front, so the push that follows cannot throw and no state has to be
// rolled back; reserve(size + 1) alone would make growth quadratic.
template <class T>
void grow_for(std::vector<T>& v, std::size_t n) {
  if (v.capacity() < n) v.reserve(std::max({n, 2 * v.capacity(), std::size_t{16}}));
}

// The first point of the grid deadline + k * period strictly after `now`, or nullopt for a
// one-shot timer, or when that point is not before TimePoint::max() ("never").
std::optional<TimePoint> next_grid_point(TimePoint deadline, Duration period, TimePoint now) {
  if (period <= Duration::zero()) return std::nullopt;
  const auto steps = (now - deadline) / period + 1;
  if (steps > (kNever - Duration{1} - deadline) / period) return std::nullopt;
  return deadline + steps * period;
}

}  // namespace

ManualClock::ManualClock(TimePoint start) noexcept : now_(start) {}

TimePoint ManualClock::now() const noexcept {
  return now_;
}

void ManualClock::advance(Duration d) noexcept {
  assert(d >= Duration::zero() && "ManualClock::advance: a steady clock never goes back");
  now_ += d;
}

void ManualClock::set(TimePoint t) noexcept {
  now_ = t;
}

TimerId TimerQueue::add(TimePoint deadline, Duration period, Callback fn) {
  assert(period >= Duration::zero() && "TimerQueue::add: negative period");
  assert(fn && "TimerQueue::add: empty callback");
  if (size() >= kMaxTimers) throw std::length_error("reactor::TimerQueue: too many timers");

  // Every allocation happens before the queue changes, so a bad_alloc leaves it as it was.
  // flush_staged() must not allocate: heap_ has room for everything staged.
  grow_for(heap_, heap_.size() + staged_.size() + 1);
  std::uint32_t slot;
  if (free_slots_.empty()) {
    grow_for(free_slots_, slots_.size() + 1);
    grow_for(staged_, slots_.size() + 1);  // every live timer fits: see reschedule()
    slots_.emplace_back();
    slot = static_cast<std::uint32_t>(slots_.size() - 1);
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
  }

  Slot& s = slots_[slot];
  s.period = period;
  s.fn = std::move(fn);
  const Entry e{deadline, next_seq_++, slot};
  if (running_) {
    s.where = kStaged | static_cast<std::uint32_t>(staged_.size());
    staged_.push_back(e);
  } else {
    heap_.push_back(e);
    sift_up(heap_.size() - 1, e);
  }
  return TimerId{slot, s.generation};
}

bool TimerQueue::cancel(TimerId id) noexcept {
  if (id.generation == 0 || id.slot >= slots_.size()) return false;
  Slot& s = slots_[id.slot];
  if (s.generation != id.generation || s.where == kFree) return false;

  // Destroyed at return, once the queue is consistent again: its destructor may use the queue.
  Callback doomed = std::move(s.fn);
  if (s.where & kStaged) {
    erase_from_staged(s.where & ~kStaged);
  } else {
    erase_from_heap(s.where);
  }
  release(id.slot);
  return true;
}

bool TimerQueue::reschedule(TimerId id, TimePoint deadline) noexcept {
  if (id.generation == 0 || id.slot >= slots_.size()) return false;
  Slot& s = slots_[id.slot];
  if (s.generation != id.generation || s.where == kFree) return false;

  // A fresh sequence number: among equal deadlines, a rescheduled timer counts as scheduled now.
  const Entry e{deadline, next_seq_++, id.slot};
  if (s.where & kStaged) {
    staged_[s.where & ~kStaged] = e;
  } else if (running_) {
    // Staged like a timer added now, so it cannot fire again in this run_due() call (a
    // repeating timer rescheduling itself to "now" would otherwise loop). staged_ has room for
    // every live timer (add() sees to it) and heap_ keeps room for what flush_staged() returns.
    erase_from_heap(s.where);
    s.where = kStaged | static_cast<std::uint32_t>(staged_.size());
    staged_.push_back(e);
  } else {
    // Re-sifted in place: the entry moves up or down from where it is, nothing is popped.
    const std::size_t i = s.where;
    if (i > 0 && earlier(e, heap_[(i - 1) / 4])) {
      sift_up(i, e);
    } else {
      sift_down(i, e);
    }
  }
  return true;
}

std::optional<TimePoint> TimerQueue::next_deadline() const noexcept {
  std::optional<TimePoint> best;
  if (!heap_.empty()) best = heap_.front().deadline;
  // Non-empty only while run_due() runs, i.e. when a callback asks.
  for (const Entry& e : staged_) {
    if (!best || e.deadline < *best) best = e.deadline;
  }
  return best;
}

std::size_t TimerQueue::run_due(TimePoint now, Observer* observer) {
  assert(!running_ && "TimerQueue::run_due is not reentrant");
  running_ = true;
  // Also on unwinding: a throwing callback must not strand the timers added before it threw.
  struct Unstage {
    TimerQueue& q;
    ~Unstage() {
      q.flush_staged();
      q.running_ = false;
    }
  } unstage{*this};

  // Gives a repeating timer its callback back after the call, unless the call cancelled it.
  struct Restore {
    TimerQueue& q;
    TimerId id;
    Callback& fn;
    ~Restore() {
      Slot& s = q.slots_[id.slot];
      if (s.generation == id.generation && s.where != kFree) s.fn = std::move(fn);
    }
  };

  // A deadline of TimePoint::max() never comes, even to a clock that reads TimePoint::max().
  const TimePoint due_by = std::min(now, kNever - Duration{1});
  std::size_t fired = 0;
  // Only heap entries are candidates: everything added by the callbacks waits in staged_, and
  // a re-armed repeating timer's deadline is past `now`, so the loop ends.
  while (!heap_.empty() && heap_.front().deadline <= due_by) {
    const Entry top = heap_.front();
    Slot& s = slots_[top.slot];
    // Moved out so the callback may cancel its own timer, or add timers that grow slots_.
    Callback fn = std::move(s.fn);
    ++fired;
    if (observer) [[unlikely]]
      observer->firing(top.deadline);
    if (const auto next = next_grid_point(top.deadline, s.period, now)) {
      // Re-armed before the call, in place, so the callback sees itself pending and can cancel.
      sift_down(0, Entry{*next, next_seq_++, top.slot});
      const Restore restore{*this, TimerId{top.slot, s.generation}, fn};
      fn();
    } else {
      erase_from_heap(0);
      release(top.slot);
      fn();
    }
    if (observer) [[unlikely]]
      observer->fired();
  }
  return fired;
}

void TimerQueue::clear() noexcept {
  assert(!running_ && "TimerQueue::clear from inside run_due");
  // From the back, where erasing moves nothing; cancel() destroys each callback once the queue
  // is consistent again, so its destructor may use the queue.
  while (!heap_.empty()) {
    const std::uint32_t slot = heap_.back().slot;
    cancel(TimerId{slot, slots_[slot].generation});
  }
}

void TimerQueue::reserve(std::size_t n) {
  heap_.reserve(n);
  staged_.reserve(n);
  slots_.reserve(n);
  free_slots_.reserve(n);
}

void TimerQueue::place(std::size_t i, const Entry& e) noexcept {
  heap_[i] = e;
  slots_[e.slot].where = static_cast<std::uint32_t>(i);
}

// 4-ary: half the depth of a binary heap, and the four children share a cache line or two, so
// a sift touches fewer lines for the same number of comparisons.
void TimerQueue::sift_up(std::size_t i, Entry e) noexcept {
  while (i > 0) {
    const std::size_t parent = (i - 1) / 4;
    if (!earlier(e, heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, e);
}

void TimerQueue::sift_down(std::size_t i, Entry e) noexcept {
  const std::size_t n = heap_.size();
  for (;;) {
    const std::size_t first = 4 * i + 1;
    if (first >= n) break;
    const std::size_t last = std::min(first + 4, n);
    std::size_t best = first;
    for (std::size_t c = first + 1; c < last; ++c) {
      if (earlier(heap_[c], heap_[best])) best = c;
    }
    if (!earlier(heap_[best], e)) break;
    place(i, heap_[best]);
    i = best;
  }
  place(i, e);
}

// Removes at once rather than marking: a cancelled timer costs no memory and no later pop.
void TimerQueue::erase_from_heap(std::size_t i) noexcept {
  const Entry last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;
  if (i > 0 && earlier(last, heap_[(i - 1) / 4])) {
    sift_up(i, last);
  } else {
    sift_down(i, last);
  }
}

void TimerQueue::erase_from_staged(std::size_t i) noexcept {
  const Entry last = staged_.back();
  staged_.pop_back();
  if (i == staged_.size()) return;
  staged_[i] = last;
  slots_[last.slot].where = kStaged | static_cast<std::uint32_t>(i);
}

// The new generation makes every id of the old timer stale, so it can never cancel the next
// timer to use this slot. Generation 0 means "no timer" and is skipped on wrap.
void TimerQueue::release(std::uint32_t slot) noexcept {
  Slot& s = slots_[slot];
  s.where = kFree;
  if (++s.generation == 0) s.generation = 1;
  free_slots_.push_back(slot);  // capacity reserved in add()
}

void TimerQueue::flush_staged() noexcept {
  for (const Entry& e : staged_) {
    heap_.push_back(e);  // capacity reserved in add()
    sift_up(heap_.size() - 1, e);
  }
  staged_.clear();
}

}  // namespace reactor

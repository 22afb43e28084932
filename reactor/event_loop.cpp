#include "reactor/event_loop.hpp"

#include "reactor/connection.hpp"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>

namespace reactor {

namespace {

std::uint64_t token_of(IoId id) noexcept {
  return (std::uint64_t{id.generation} << 32) | id.slot;
}

// now + delay, saturated: a deadline past what TimePoint can hold is TimePoint::max(), "never".
TimePoint deadline_after(TimePoint now, Duration delay) noexcept {
  if (delay <= Duration::zero()) return now;
  if (now >= TimePoint{} && delay > TimePoint::max() - now) return TimePoint::max();
  return now + delay;
}

// deadline - now, saturated: zero once due, Duration::max() when too far to represent (only
// possible with a clock before its epoch: a test clock).
Duration time_until(TimePoint deadline, TimePoint now) noexcept {
  if (deadline <= now) return Duration::zero();
  const Duration since_epoch = now.time_since_epoch();
  if (since_epoch < Duration::zero() && deadline.time_since_epoch() > Duration::max() + since_epoch)
    return Duration::max();
  return deadline - now;
}

// A failed wait: EINTR (a signal handled with sigaction) is an empty iteration. Anything else
// (EBADF, EFAULT, EINVAL: the epoll fd was closed under the loop, or memory is corrupt) would
// fail again at once on every iteration: stop the process with the cause, rather than spin.
[[gnu::cold]] int wait_failed(const char* call) noexcept {
  const int err = errno;
  if (err == EINTR) return 0;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* name = ::strerrorname_np(err);
#else
  const char* name = nullptr;
#endif
  std::fprintf(stderr,
               "reactor::EventLoop: %s failed: %s (errno %d: %s); the loop cannot wait for "
               "events, aborting\n",
               call, name ? name : "unknown errno", err, std::strerror(err));
  std::abort();
}

// Rounds up, so a timer is never woken for before its deadline.
int to_epoll_ms(Duration d) noexcept {
  if (d <= Duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
  return ms > 0x7fffffff ? 0x7fffffff : static_cast<int>(ms);
}

}  // namespace

EventLoop::EventLoop() : EventLoop(Options{}) {}

EventLoop::EventLoop(const Options& options)
    : options_(options), owner_(std::this_thread::get_id()) {
  // Failing to create the loop's own fds is a set-up error the caller cannot route anywhere
  // else: a constructor has no error_code to return.
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) throw std::system_error(errno_code(), "epoll_create1");
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    auto ec = errno_code();
    ::close(epoll_fd_);
    throw std::system_error(ec, "eventfd");
  }
  options_.max_events = std::max(1, options_.max_events);
  assert(options_.stall_threshold >= Duration::zero() && options_.timer_slack >= Duration::zero());
  if (options_.timer_slack > Duration::zero()) {
    // Cannot fail for a positive value; it applies to this thread, the loop's.
    ::prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(options_.timer_slack.count()));
  }
  measuring_ = options_.measure_time || options_.stall_threshold > Duration::zero();
  after_wait_work_ = measuring_;
  if (options_.measure_time) {
    timer_delay_ = std::make_unique<Histogram>();
    measured_until_ = clock_now();
  }
  stats_.epoll_pwait2 = options_.use_epoll_pwait2;
  events_.resize(static_cast<std::size_t>(options_.max_events));
  // Room for a whole 64 KiB read: connections then read with a plain recv (Buffer::read_from).
  read_buffer_.reserve(Buffer::kOverflowSize);
  auto id = add(wake_fd_, io::readable, [this](std::uint32_t) { on_wakeup(); });
  if (!id) {
    ::close(wake_fd_);
    ::close(epoll_fd_);
    throw std::system_error(id.error(), "epoll_ctl(eventfd)");
  }
  wake_id_ = *id;
  // The first epoll_pwait2 is made here, so whether this loop may use it is settled before it
  // runs: ENOSYS (a kernel before 5.11, valgrind) or EPERM (a seccomp profile that does not
  // know the call) mean epoll_wait from now on. It reports nothing: nothing is readable yet.
  if (stats_.epoll_pwait2) {
    const timespec zero{};
    if (epoll_pwait2(epoll_fd_, events_.data(), 1, &zero, nullptr) < 0 &&
        (errno == ENOSYS || errno == EPERM)) {
      stats_.epoll_pwait2 = false;
    }
  }
}

EventLoop::~EventLoop() {
  // What is queued may own objects whose destructors use this loop (a ConnectionHandle cancels
  // its connection's timers, removes its registration and defers its destruction), so it is
  // destroyed while every member is whole, and what those destructors queue in turn with it.
  // Each queue is swapped out before its tasks are destroyed: a destructor may push to it.
  std::vector<Task> doomed;
  for (;;) {
    for (auto* hooks : {&before_wait_, &after_wait_}) {
      for (auto& hook : *hooks)
        doomed.push_back(std::move(hook.fn));
      hooks->clear();
    }
    doomed.clear();
    timers_.clear();
    doomed.swap(deferred_);
    if (doomed.empty()) doomed.swap(posted_run_);
    if (doomed.empty()) {
      std::lock_guard lock(posted_mutex_);
      doomed.swap(posted_);
    }
    // A destructor above may have added a hook: go round again for it.
    if (doomed.empty() && before_wait_.empty() && after_wait_.empty()) break;
    doomed.clear();
  }
  if (signal_fd_ >= 0) ::close(signal_fd_);
  ::close(wake_fd_);
  ::close(epoll_fd_);
}

TimePoint EventLoop::clock_now() const noexcept {
  if (options_.clock) return options_.clock->now();
  // What steady_clock::now() does, without its extra call layer: this runs every iteration.
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return TimePoint(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

void EventLoop::run() {
  assert_in_loop();
  // do-while: a stop() that came before run() still lets one iteration happen.
  do {
    iterate(kNoTimeout);
  } while (!stop_requested_.load(std::memory_order_acquire));
  stop_requested_.store(false, std::memory_order_relaxed);
}

std::size_t EventLoop::run_once(std::optional<Duration> timeout) {
  assert_in_loop();
  return iterate(timeout.value_or(kNoTimeout));  // Duration::max() is as long as nullopt
}

void EventLoop::stop() noexcept {
  stop_requested_.store(true, std::memory_order_release);
  if (!in_loop_thread()) wake();
}

void EventLoop::wake() noexcept {
  std::uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the loop will wake anyway.
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

// One iteration, in the order the header lists. Inlined: run() loops over it without a call per
// iteration and keeps the loop's state in registers across iterations (bench/cost.sh: 324 -> 294
// instructions per message at 1 connection, against a run() that called run_once()).
// always_inline because at -O2 (Meson's default buildtype, and most distributions') GCC keeps
// it out of line: 260 -> 236 per message there; at -O3 it inlines it anyway (238 -> 241).
[[gnu::always_inline]] inline std::size_t EventLoop::iterate(Duration timeout) {
#ifndef NDEBUG
  // A nested wait would overwrite events_ while the outer dispatch walks it, and the task and
  // timer rounds are not re-entrant either.
  assert(!in_iteration_ && "EventLoop::run()/run_once() called from a callback: not re-entrant");
  in_iteration_ = true;
  struct Leave {
    bool& flag;
    ~Leave() { flag = false; }
  } leave{in_iteration_};
#endif
  ++stats_.iterations;
  if (before_wait_hooks_) [[unlikely]]
    run_before_wait_hooks();

  if (!deferred_.empty() || stop_requested_.load(std::memory_order_relaxed)) {
    timeout = Duration::zero();
  } else if (!timers_.empty() && !options_.clock) {
    timeout = std::min(timeout, until_next_timer());
  }

  const int n = wait(timeout);
  now_valid_ = false;
  if (after_wait_work_) [[unlikely]] {
    if (measuring_) {  // runs the after-wait hooks itself, measured
      dispatch_measured(n);
      return static_cast<std::size_t>(n);
    }
    run_hooks(after_wait_, nullptr);
  }
  const epoll_event* events = events_.data();
  for (int i = 0; i < n; ++i) {
    const std::uint64_t token = events[i].data.u64;
    Slot& s = slot(static_cast<std::uint32_t>(token));
    if (s.token != token) [[unlikely]] {
      // Removed (and maybe reused) earlier in this batch.
      ++stats_.stale_events;
      --stats_.events;
      continue;
    }
    dispatch(s, events[i].events);
  }
  stats_.events += static_cast<std::uint64_t>(n);

  // The common iteration has no timer, task or removal: one compare each, no calls.
  if (!timers_.empty()) timers_.run_due(now());
  if (!deferred_.empty() || !posted_run_.empty()) run_tasks(nullptr);
  if (!removed_slots_.empty()) recycle_removed_slots();
  return static_cast<std::size_t>(n);
}

// A ready registration's handler: a connection's directly, any other through its IoHandler.
inline void EventLoop::dispatch(Slot& s, std::uint32_t events) {
  if (s.connection) {
    s.connection->on_events(events);
  } else {
    s.handler(events);
  }
}

// How long until the next timer can fire; kNoTimeout when none can (TimePoint::max() is
// "never", a saturated deadline: it does not bound the wait).
Duration EventLoop::until_next_timer() const noexcept {
  const TimePoint next = *timers_.next_deadline();
  return next == TimePoint::max() ? kNoTimeout : time_until(next, clock_now());
}

// The instruments' clock for one iteration: how long each callback ran (stall_threshold) and
// how late each timer started (measure_time). With stall detection on, one read follows each
// callback and doubles as the start of the next; otherwise only timers read the clock.
class EventLoop::Meter final : public TimerQueue::Observer {
 public:
  Meter(EventLoop& loop, TimePoint woke) noexcept
      : loop_(loop), per_callback_(loop.options_.stall_threshold > Duration::zero()), mark_(woke) {}

  // A callback of kind `work` (`fd`: an I/O handler's) just returned.
  void ran(Work work, int fd) noexcept {
    if (!per_callback_) return;
    const TimePoint t = loop_.clock_now();
    const Duration took = t - mark_;
    mark_ = t;
    if (took > loop_.options_.stall_threshold) [[unlikely]] {
      ++loop_.stats_.stalls;
      if (loop_.options_.on_stall) {
        loop_.options_.on_stall(Stall{work, fd, took});
        mark_ = loop_.clock_now();  // the report's own time is nobody's stall
      }
    }
  }
  void firing(TimePoint deadline) noexcept override {
    if (!per_callback_) mark_ = loop_.clock_now();
    if (loop_.timer_delay_) {
      loop_.timer_delay_->record(
          mark_ > deadline ? static_cast<std::uint64_t>((mark_ - deadline).count()) : 0);
    }
  }
  void fired() noexcept override { ran(Work::timer, -1); }

 private:
  EventLoop& loop_;
  const bool per_callback_;
  TimePoint mark_;  // per_callback_: when the running callback started
};

// iterate()'s dispatch with an instrument on: the same order, with the clock read around it.
void EventLoop::dispatch_measured(int n) {
  const TimePoint woke = clock_now();
  // The iteration's first clock read after the wait: what now() returns until the next wait.
  now_ = woke;
  now_valid_ = true;
  if (options_.measure_time) stats_.idle_time += woke - measured_until_;
  Meter meter(*this, woke);
  if (!after_wait_.empty()) run_hooks(after_wait_, &meter);
  const epoll_event* events = events_.data();
  for (int i = 0; i < n; ++i) {
    const std::uint64_t token = events[i].data.u64;
    Slot& s = slot(static_cast<std::uint32_t>(token));
    if (s.token != token) {
      ++stats_.stale_events;
      --stats_.events;
      continue;
    }
    const int fd = s.fd;  // the handler may remove itself
    dispatch(s, events[i].events);
    meter.ran(Work::io, fd);
  }
  stats_.events += static_cast<std::uint64_t>(n);

  if (!timers_.empty()) timers_.run_due(now(), &meter);
  if (!deferred_.empty() || !posted_run_.empty()) run_tasks(&meter);
  if (!removed_slots_.empty()) recycle_removed_slots();
  if (options_.measure_time) {
    const TimePoint end = clock_now();
    stats_.busy_time += end - woke;
    measured_until_ = end;
  }
}

const Histogram& EventLoop::timer_delay() const noexcept {
  static const Histogram empty;
  return timer_delay_ ? *timer_delay_ : empty;
}

void EventLoop::recycle_removed_slots() noexcept {
  // By index: a handler's destructor may remove more registrations.
  for (std::size_t i = 0; i < removed_slots_.size(); ++i) {
    Slot& s = slot(removed_slots_[i]);
    s.connection = nullptr;
    s.handler = nullptr;
    free_slots_.push_back(removed_slots_[i]);
  }
  removed_slots_.clear();
}

// The common wait, kept short: no busy-poll, no timeout.
inline int EventLoop::wait(Duration timeout) {
  if (timeout == kNoTimeout && options_.busy_poll.count() == 0) [[likely]] {
    const int n =
        stats_.epoll_pwait2
            ? epoll_pwait2(epoll_fd_, events_.data(), options_.max_events, nullptr, nullptr)
            : epoll_wait(epoll_fd_, events_.data(), options_.max_events, -1);
    if (n >= 0) [[likely]]
      return n;
    return wait_failed(stats_.epoll_pwait2 ? "epoll_pwait2" : "epoll_wait");
  }
  return wait_slow(timeout);
}

int EventLoop::wait_slow(Duration timeout) {
  epoll_event* events = events_.data();
  const int max = options_.max_events;

  if (options_.busy_poll.count() > 0 && timeout > Duration::zero()) {
    const TimePoint spin_until = Clock::now() + std::min<Duration>(options_.busy_poll, timeout);
    // Posts made while this is set skip the eventfd: the spin looks at has_posted_ itself.
    spinning_.store(true);
    int n = 0;
    do {
      if (has_posted_.load(std::memory_order_relaxed)) break;
      n = epoll_wait(epoll_fd_, events, max, 0);
      if (n != 0) break;
    } while (Clock::now() < spin_until);
    spinning_.store(false);
    // After clearing spinning_: a post that saw it set is seen here, one that did not wrote the
    // eventfd. Either way nothing waits for a wake-up that will not come.
    const bool posted = has_posted_.load();
    if (posted) take_posted();
    if (n > 0) return n;
    if (n < 0) return wait_failed("epoll_wait");
    if (posted) return 0;  // iterate() runs the tasks taken
    if (timeout != kNoTimeout) timeout = std::max(Duration::zero(), timeout - options_.busy_poll);
  }

  if (stats_.epoll_pwait2) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout != kNoTimeout) {
      auto ns = std::max<std::int64_t>(0, timeout.count());
      ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      tsp = &ts;
    }
    const int n = epoll_pwait2(epoll_fd_, events, max, tsp, nullptr);
    return n >= 0 ? n : wait_failed("epoll_pwait2");
  }
  const int n =
      epoll_wait(epoll_fd_, events, max, timeout != kNoTimeout ? to_epoll_ms(timeout) : -1);
  return n >= 0 ? n : wait_failed("epoll_wait");
}

void EventLoop::run_tasks(Meter* meter) {
  // Deferred first: they finish the work of this dispatch round (closing, destroying). What
  // they defer in turn runs next iteration, which then does not block.
  if (!deferred_.empty()) {
    running_.swap(deferred_);
    for (auto& task : running_) {
      task();
      if (meter) meter->ran(Work::deferred, -1);
    }
    running_.clear();
  }
  if (!posted_run_.empty()) {
    for (auto& task : posted_run_) {
      task();
      if (meter) meter->ran(Work::posted, -1);
    }
    posted_run_.clear();
  }
}

void EventLoop::on_wakeup() {
  std::uint64_t count;
  [[maybe_unused]] auto n = ::read(wake_fd_, &count, sizeof count);
  ++stats_.wakeups;
  take_posted();
}

void EventLoop::take_posted() {
  std::lock_guard lock(posted_mutex_);
  // posted_run_ is drained at the end of every iteration, so it is empty here, unless a spin
  // took posts and then found the eventfd readable too (a write from before it spun): then the
  // new ones go after those, in order.
  if (posted_run_.empty()) [[likely]] {
    posted_run_.swap(posted_);
  } else {
    for (auto& task : posted_)
      posted_run_.push_back(std::move(task));
    posted_.clear();
  }
  wake_pending_ = false;
  has_posted_.store(false, std::memory_order_relaxed);
}

Result<IoId> EventLoop::add(int fd, std::uint32_t interest, IoHandler handler) {
  return add_slot(fd, interest, std::move(handler), nullptr);
}

Result<IoId> EventLoop::add_connection(int fd, std::uint32_t interest, Connection& connection) {
  return add_slot(fd, interest, nullptr, &connection);
}

Result<IoId> EventLoop::add_slot(int fd, std::uint32_t interest, IoHandler handler,
                                 Connection* connection) {
  assert_in_loop();
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    if (slot_count_ % kSlotChunk == 0) slot_chunks_.push_back(std::make_unique<Slot[]>(kSlotChunk));
    index = slot_count_++;
  }
  Slot& s = slot(index);
  IoId id{index, s.generation};
  epoll_event ev{};
  ev.events = interest;
  ev.data.u64 = token_of(id);
  ++stats_.epoll_ctl_calls;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
    auto ec = errno_code();
    free_slots_.push_back(index);
    return ec;
  }
  s.token = ev.data.u64;
  s.fd = fd;
  s.interest = interest;
  s.connection = connection;
  s.handler = std::move(handler);
  ++live_registrations_;
  return id;
}

EventLoop::Slot* EventLoop::live_slot(IoId id) const noexcept {
  if (id.slot >= slot_count_) return nullptr;
  Slot& s = slot(id.slot);
  return s.token == token_of(id) && id.generation != 0 ? &s : nullptr;
}

std::error_code EventLoop::modify(IoId id, std::uint32_t interest) {
  assert_in_loop();
  Slot* found = live_slot(id);
  if (!found) return std::make_error_code(std::errc::bad_file_descriptor);
  Slot& s = *found;
  if (s.interest == interest) return {};
  epoll_event ev{};
  ev.events = interest;
  ev.data.u64 = s.token;
  ++stats_.epoll_ctl_calls;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, s.fd, &ev) < 0) return errno_code();
  s.interest = interest;
  return {};
}

void EventLoop::remove(IoId id) noexcept {
  assert_in_loop();
  Slot* found = live_slot(id);
  if (!found) return;
  Slot& s = *found;
  ++stats_.epoll_ctl_calls;
  // Fails only if the fd was closed already (the kernel dropped it); either way it is gone.
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, s.fd, nullptr);
  s.token = 0;
  s.fd = -1;
  s.interest = 0;
  // A new generation makes events still in this batch for the old one stale; 0 stays invalid.
  if (++s.generation == 0) s.generation = 1;
  // The handler may be the one running now: neither move it (that destroys its captures) nor
  // let add() reuse the slot until the iteration ends.
  removed_slots_.push_back(id.slot);
  --live_registrations_;
}

std::uint32_t EventLoop::interest(IoId id) const noexcept {
  const Slot* s = live_slot(id);
  return s ? s->interest : 0;
}

TimerId EventLoop::after(Duration delay, Function<void()> fn) {
  assert_in_loop();
  return timers_.add(deadline_after(clock_now(), delay), Duration::zero(), std::move(fn));
}

TimerId EventLoop::every(Duration period, Function<void()> fn) {
  assert_in_loop();
  assert(period > Duration::zero() && "every() needs a positive period");
  period = std::max(period, Duration{1});
  return timers_.add(deadline_after(clock_now(), period), period, std::move(fn));
}

bool EventLoop::cancel(TimerId id) noexcept {
  assert_in_loop();
  return timers_.cancel(id);
}

TimerId EventLoop::at(TimePoint deadline, Function<void()> fn) {
  assert_in_loop();
  return timers_.add(deadline, Duration::zero(), std::move(fn));
}

bool EventLoop::reschedule(TimerId id, Duration delay) noexcept {
  assert_in_loop();
  return timers_.reschedule(id, deadline_after(clock_now(), delay));
}

void EventLoop::defer(Task fn) {
  assert_in_loop();
  deferred_.push_back(std::move(fn));
}

HookId EventLoop::on_before_wait(Task fn) {
  return add_hook(before_wait_, std::move(fn));
}

HookId EventLoop::on_after_wait(Task fn) {
  return add_hook(after_wait_, std::move(fn));
}

HookId EventLoop::add_hook(std::deque<Hook>& hooks, Task fn) {
  assert_in_loop();
  hooks.push_back({++last_hook_id_, std::move(fn)});
  hooks_changed();
  return HookId{last_hook_id_};
}

bool EventLoop::remove_hook(HookId id) noexcept {
  assert_in_loop();
  if (!id) return false;
  for (auto* hooks : {&before_wait_, &after_wait_}) {
    for (auto it = hooks->begin(); it != hooks->end(); ++it) {
      if (it->id != id.value) continue;
      if (hooks == hooks_running_) {
        it->id = 0;  // it may be the running one: run_hooks() erases it when done
        hooks_removed_ = true;
        return true;
      }
      // Erased before it is destroyed: its destructor may add or remove hooks.
      Task doomed = std::move(it->fn);
      hooks->erase(it);
      hooks_changed();
      return true;
    }
  }
  return false;
}

// Before-wait hooks are work like any callback: with the instruments on, their time is busy
// time (not the wait's idle time) and each is stall-checked.
void EventLoop::run_before_wait_hooks() {
  if (!measuring_) [[likely]] {
    run_hooks(before_wait_, nullptr);
    return;
  }
  const TimePoint start = clock_now();
  if (options_.measure_time) stats_.idle_time += start - measured_until_;
  Meter meter(*this, start);
  run_hooks(before_wait_, &meter);
  if (options_.measure_time) {
    const TimePoint end = clock_now();
    stats_.busy_time += end - start;
    measured_until_ = end;
  }
}

void EventLoop::run_hooks(std::deque<Hook>& hooks, Meter* meter) {
  hooks_running_ = &hooks;
  // By index, up to the count at the start: hooks added now first run next iteration.
  const std::size_t count = hooks.size();
  for (std::size_t i = 0; i < count; ++i) {
    if (hooks[i].id == 0) continue;
    hooks[i].fn();
    if (meter) meter->ran(Work::hook, -1);
  }
  hooks_running_ = nullptr;
  if (!hooks_removed_) [[likely]]
    return;
  hooks_removed_ = false;
  // Erased first, destroyed after: a destructor may add or remove hooks.
  std::vector<Task> doomed;
  for (auto it = hooks.begin(); it != hooks.end();) {
    if (it->id == 0) {
      doomed.push_back(std::move(it->fn));
      it = hooks.erase(it);
    } else {
      ++it;
    }
  }
  hooks_changed();
}

void EventLoop::hooks_changed() noexcept {
  before_wait_hooks_ = !before_wait_.empty();
  after_wait_work_ = measuring_ || !after_wait_.empty();
}

void EventLoop::post(Task fn) {
  bool need_wake;
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(fn));
    need_wake = !wake_pending_;
    wake_pending_ = true;
    if (options_.busy_poll.count() > 0) has_posted_.store(true);
  }
  // A spinning loop sees has_posted_ (see spinning_): no syscall on either side.
  if (need_wake && !(options_.busy_poll.count() > 0 && spinning_.load())) wake();
}

namespace {

// The error on_signal() returns when a thread does not block the signal: its value is the
// thread's id; it compares equal to std::errc::invalid_argument.
class SignalMaskCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "reactor.signal_mask"; }
  std::string message(int tid) const override {
    std::string text = "thread " + std::to_string(tid);
    // Its name, if the thread still runs: the one a debugger or `ps -L` shows.
    if (std::FILE* f =
            std::fopen(("/proc/self/task/" + std::to_string(tid) + "/comm").c_str(), "re")) {
      char comm[64] = {};
      if (std::fgets(comm, sizeof comm, f)) {
        comm[std::strcspn(comm, "\n")] = '\0';
        text += std::string(" (") + comm + ")";
      }
      std::fclose(f);
    }
    return text + " does not block the signal (block it before starting threads)";
  }
  std::error_condition default_error_condition(int) const noexcept override {
    return std::errc::invalid_argument;
  }
};

// The id of a thread of this process that does not block `signo` (1..64), or 0 when all block
// it. Every thread's mask is in /proc/self/task/*/status (SigBlk, hex, bit signo - 1); where
// /proc cannot be read, the calling thread's mask alone decides.
pid_t thread_not_blocking(int signo) {
  DIR* tasks = ::opendir("/proc/self/task");
  if (!tasks) {
    sigset_t blocked;
    pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
    return sigismember(&blocked, signo) == 1 ? 0 : ::gettid();
  }
  pid_t found = 0;
  while (const dirent* task = ::readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    const std::string path = std::string("/proc/self/task/") + task->d_name + "/status";
    std::FILE* status = std::fopen(path.c_str(), "re");
    if (!status) continue;  // the thread ended meanwhile
    char line[512];
    while (std::fgets(line, sizeof line, status)) {
      if (std::strncmp(line, "SigBlk:", 7) != 0) continue;
      const unsigned long long mask = std::strtoull(line + 7, nullptr, 16);
      if (((mask >> (signo - 1)) & 1) == 0) found = static_cast<pid_t>(std::atoi(task->d_name));
      break;
    }
    std::fclose(status);
    if (found) break;
  }
  ::closedir(tasks);
  return found;
}

}  // namespace

const std::error_category& signal_mask_category() noexcept {
  static const SignalMaskCategory category;
  return category;
}

std::error_code EventLoop::on_signal(int signo, SignalHandler handler) {
  assert_in_loop();
  if (signo < 1 || signo > 64) return std::make_error_code(std::errc::invalid_argument);
  if (const pid_t tid = thread_not_blocking(signo)) return {tid, signal_mask_category()};
  for (auto& [s, h] : signal_handlers_) {
    if (s == signo) return std::make_error_code(std::errc::file_exists);
  }
  sigset_t mask;
  sigemptyset(&mask);
  for (auto& entry : signal_handlers_)
    sigaddset(&mask, entry.first);
  sigaddset(&mask, signo);
  int fd = signalfd(signal_fd_, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return errno_code();
  if (signal_fd_ < 0) {
    auto id = add(fd, io::readable, [this](std::uint32_t) { on_signalfd(); });
    if (!id) {
      ::close(fd);
      return id.error();
    }
    signal_fd_ = fd;
    signal_id_ = *id;
  }
  signal_handlers_.emplace_back(signo, std::move(handler));
  return {};
}

void EventLoop::on_signalfd() {
  signalfd_siginfo info;
  while (::read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
    // By index: a handler may add handlers for other signals.
    for (std::size_t i = 0; i < signal_handlers_.size(); ++i) {
      if (signal_handlers_[i].first == static_cast<int>(info.ssi_signo)) {
        signal_handlers_[i].second(signal_handlers_[i].first);
      }
    }
  }
}

std::error_code block_signals(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals)
    sigaddset(&set, s);
  if (int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr); rc != 0) {
    return {rc, std::system_category()};
  }
  return {};
}

}  // namespace reactor

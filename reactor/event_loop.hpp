// EventLoop: one epoll instance, the fds registered with it, its timers, and the tasks posted
// to it from other threads.
//
// Threads. A loop belongs to the thread that constructed it. run(), run_once() and every method
// not marked "any thread" must be called on that thread; debug builds assert it. post() and
// stop() may be called from any thread. To work on a loop from another thread, post() a task.
// The loop must outlive those calls: another thread may not post() or stop() while the loop is
// being destroyed (LoopThread keeps its loop alive until join() has stopped it).
//
// One iteration, in order:
//   0. before-wait hooks (on_before_wait), in registration order,
//   1. wait for I/O (epoll_pwait2, nanosecond timeout: until the next timer that can fire, or
//      not at all when deferred tasks are pending; epoll_wait, millisecond timeout rounded up,
//      where the constructor's first epoll_pwait2 failed with ENOSYS, an old kernel, or EPERM,
//      a seccomp profile that does not know the call),
//   2. after-wait hooks (on_after_wait), in registration order, then dispatch: each ready fd's
//      handler is called with its event mask,
//   3. timers whose deadline is <= now(), in deadline order (a delay too long for the clock,
//      Duration::max() say, saturates to "never"),
//   4. deferred tasks (defer()), then posted tasks (post()), in the order they were queued,
//   5. handlers of registrations removed during this iteration are destroyed.
// Queued I/O never holds back timers and tasks: each iteration dispatches one batch (at most
// max_events events), then runs what is due and queued, whatever I/O is still ready.
//
// Callbacks. A callback may do anything with the loop but run it: add or remove registrations
// (its own included), schedule or cancel timers, defer, post, stop. run() and run_once() are
// not re-entrant: calling them from a callback is a programmer error (asserted in debug
// builds). After remove(id) returns, the handler of `id` is never called again, even if the fd
// was already reported ready in the current batch, and even if the fd number is reused at
// once: events carry a generation-checked token, not the fd. The removed handler object itself
// lives until step 5, so a handler may remove itself and keep using its captures until it
// returns.
//
// Destruction. Timers and tasks still queued are destroyed without running, while the loop is
// still whole: their destructors may use it (a pending timer that owns a ConnectionHandle).
//
// Errors are returned as std::error_code. Callbacks must not throw. The constructor throws
// std::system_error only when the loop cannot get its own fds (epoll, eventfd): EMFILE at start-up.
// A wait that fails is an empty iteration when a signal interrupted it (EINTR, a handler
// installed with sigaction); any other error (EBADF: the loop's epoll fd was closed under it;
// EFAULT, EINVAL) would recur on every iteration, so the loop aborts the process (std::abort)
// after one line on stderr naming the call and the errno, instead of spinning.
//
// Instruments (Options; all off by default, and then the loop reads no clock for them):
// - measure_time: busy and idle time in stats() (busy: an iteration's time after its wait
//   returned; idle: all other time since construction, the wait and a busy-poll spin included),
//   and timer_delay(), a histogram of how late each timer's callback started after its deadline.
//   Costs two clock reads per iteration and one per timer fired.
// - stall_threshold: a callback (one I/O handler, timer, deferred or posted task, loop hook) that
// runs
//   longer is a stall, counted in stats().stalls and reported to on_stall right after it returns,
//   with its kind, the fd of an I/O handler, and its duration. Costs one clock read per callback.
// - timer_slack: the loop thread's timer slack (prctl PR_SET_TIMERSLACK), how much later than
//   asked the kernel may end a timed wait: 50 us for an ordinary thread, which a timer of a few
//   microseconds feels. Set once, by the constructor, on the constructing thread.
//
// Allocation. Handlers, timers and tasks are reactor::Function: a lambda capturing up to four
// pointers is stored inline. Registration slots (in fixed chunks), the timer heap and the task
// queues only grow, so a loop in steady state does not allocate. The read buffer the loop's
// connections share (Connection's, not part of this API) is 64 KiB, allocated once with the
// loop.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "reactor/buffer.hpp"
#include "reactor/function.hpp"
#include "reactor/histogram.hpp"
#include "reactor/result.hpp"
#include "reactor/timer_queue.hpp"
#include "reactor/traffic_counters.hpp"

namespace reactor {

// Interest and event bits, the epoll ones, named.
namespace io {
inline constexpr std::uint32_t readable = EPOLLIN;
inline constexpr std::uint32_t writable = EPOLLOUT;
inline constexpr std::uint32_t edge_triggered = EPOLLET;  // interest only
inline constexpr std::uint32_t exclusive =
    EPOLLEXCLUSIVE;  // interest only; add() only, never modify()
inline constexpr std::uint32_t peer_closed = EPOLLRDHUP;  // interest and event
inline constexpr std::uint32_t hangup = EPOLLHUP;         // event only, always reported
inline constexpr std::uint32_t error = EPOLLERR;          // event only, always reported
}  // namespace io

// Names one registration. Generation-checked: once removed, an IoId is stale forever.
struct IoId {
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;  // 0: never valid
  explicit operator bool() const noexcept { return generation != 0; }
  friend bool operator==(IoId, IoId) = default;
};

// Names one hook (on_before_wait, on_after_wait). Never reused: once removed, stale forever.
struct HookId {
  std::uint64_t value = 0;  // 0: never valid
  explicit operator bool() const noexcept { return value != 0; }
  friend bool operator==(HookId, HookId) = default;
};

class Connection;

class EventLoop {
 public:
  using IoHandler = Function<void(std::uint32_t events)>;
  using Task = Function<void()>;
  using SignalHandler = Function<void(int signo)>;

  // What a dispatch round ran.
  enum class Work : std::uint8_t { io, timer, deferred, posted, hook };
  // A callback that ran longer than Options::stall_threshold.
  struct Stall {
    Work work;
    int fd;  // the I/O handler's fd; -1 for other work
    Duration duration;
  };

  struct Options {
    int max_events = 256;  // epoll_wait batch size
    // Busy-poll: spin on a non-blocking epoll_wait for up to this long before sleeping. Trades a
    // core for wake-up latency; off (zero) by default. A post() to a spinning loop is picked up
    // by the spin itself, without an eventfd write and read.
    std::chrono::microseconds busy_poll{0};
    // Replaces the monotonic clock (tests). Under a replaced clock timers never shorten the
    // wait: time moves only when the test moves it, then run_once() fires what is due.
    const TimeSource* clock = nullptr;
    bool use_epoll_pwait2 = true;  // false: always epoll_wait (tests of the fallback path)
    // Instruments (see the top of this file); off by default.
    bool measure_time = false;    // busy and idle time in stats(), timer_delay()
    Duration stall_threshold{0};  // > 0: report callbacks that run longer
    // Called on the loop's thread right after a stalled callback returns; may do what any
    // callback may, must not throw. Empty: stalls are only counted.
    std::function<void(const Stall&)> on_stall;
    Duration timer_slack{0};  // > 0: the loop thread's timer slack; zero leaves it untouched
  };

  struct Stats {
    std::uint64_t iterations = 0;
    std::uint64_t events = 0;        // events dispatched to handlers
    std::uint64_t stale_events = 0;  // events dropped: their registration was removed
    std::uint64_t epoll_ctl_calls = 0;
    std::uint64_t wakeups = 0;  // eventfd reads (each covers any number of posts)
    bool epoll_pwait2 = true;   // false: epoll_wait is used (option, ENOSYS or EPERM)
    // Options::measure_time: the clock time since construction, split; busy + idle is exactly
    // the clock's advance from the constructor to the end of the last iteration.
    Duration busy_time{0};
    Duration idle_time{0};
    std::uint64_t stalls = 0;  // Options::stall_threshold: callbacks that ran longer
  };

  EventLoop();
  explicit EventLoop(const Options& options);
  // Pending timers, deferred and posted tasks are destroyed without running, first, while the
  // loop is whole: their destructors may use it (cancel, defer, post, after, remove), and what
  // they queue is destroyed in turn, until nothing is left (timers, then deferred, then posted
  // tasks, repeated). A ConnectionHandle held by a pending timer or task is therefore safe.
  // Registered fds are not closed: they belong to whoever registered them; their handlers (and
  // signal handlers) are destroyed after that, with the loop, and must not use it.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs iterations until stop(). A stop() that came before run() makes it return after one
  // iteration. Neither run() nor run_once() may be called from a callback (not re-entrant).
  void run();
  // One iteration; waits at most `timeout` for I/O (nullopt: until a timer is due or an event
  // arrives; zero: does not block). Returns the number of events epoll reported
  // (stale ones, dropped because their registration was removed, included): 0 after EINTR.
  // Aborts when the wait fails otherwise (see Errors above).
  std::size_t run_once(std::optional<Duration> timeout = std::nullopt);
  // Any thread, or a callback: run() returns at the end of the current iteration.
  void stop() noexcept;

  // Registers `fd` (not owned) with `interest` (io:: bits). Errors: those of epoll_ctl (EEXIST
  // if the fd is already registered here, EPERM for regular files, ...).
  Result<IoId> add(int fd, std::uint32_t interest, IoHandler handler);
  // Changes the interest set; calls epoll_ctl only when it differs from the current one.
  std::error_code modify(IoId id, std::uint32_t interest);
  // Deregisters (EPOLL_CTL_DEL; do it before closing the fd). Stale ids are ignored.
  void remove(IoId id) noexcept;
  // The current interest of a live registration (0 when stale).
  std::uint32_t interest(IoId id) const noexcept;

  // Timers: `fn` runs no earlier than (a fresh clock read at the call) + delay. every() stays on
  // its period grid and skips the periods it missed during a stall. Cancelling a fired or
  // cancelled timer is a harmless no-op (returns false). A delay or period that takes the
  // deadline past what the clock can represent (Duration::max(): "never") saturates: the timer
  // never fires and never shortens the wait, and stays pending until cancelled. every() needs a
  // positive period (asserted in debug builds: a zero period would fire on every iteration).
  TimerId after(Duration delay, Function<void()> fn);
  TimerId every(Duration period, Function<void()> fn);
  // A one-shot timer at an absolute `deadline` on the loop's clock: one already past fires on
  // the next timer step (the next run_once()); TimePoint::max() never fires, like a saturated
  // after().
  TimerId at(TimePoint deadline, Function<void()> fn);
  bool cancel(TimerId id) noexcept;
  // Moves a pending timer to (a fresh clock read) + delay, saturated like after(), without
  // destroying or reallocating its callable and keeping its id: the idle-timeout pattern
  // (push a deadline back on activity). A repeating timer keeps its period and restarts its
  // grid there: it fires at the new deadline, then every period after. From inside a timer
  // callback, the moved timer does not fire again in that same timer step. Generation-checked
  // like cancel(): false, changing nothing, for a fired, cancelled or unknown id (a one-shot
  // timer whose callback is running has fired). Never allocates.
  bool reschedule(TimerId id, Duration delay) noexcept;
  // The time of the current iteration: read from the clock at its first use after the wait,
  // then the same value until the next wait. Cheap; an iteration that does not ask (no timer
  // pending, no idle timeout) reads no clock at all.
  TimePoint now() const noexcept {
    if (!now_valid_) {
      now_ = clock_now();
      now_valid_ = true;
    }
    return now_;
  }
  // A fresh read of the loop's clock.
  TimePoint clock_now() const noexcept;

  // Runs `fn` after the current dispatch round, on this loop's thread, in the order deferred.
  void defer(Task fn);

  // Hooks, libev's prepare and check watchers: what a library sharing the loop (c-ares, a
  // database driver) needs to flush its work and recompute its timeouts, and what batching
  // needs ("send everything queued this round"). Before-wait hooks run at the start of every
  // iteration, before the wait's timeout is computed, so what they schedule (a timer, a
  // deferred task, a post) is honoured by that same wait; after-wait hooks run as soon as the
  // wait returns, before its events are dispatched. Each kind runs in registration order. A
  // hook added from inside a hook first runs in the next iteration; a hook removed from inside
  // a hook (itself included) is not called again, and is destroyed once its kind has run. A
  // hook may do what any callback may. With none registered an iteration pays one compare.
  HookId on_before_wait(Task fn);
  HookId on_after_wait(Task fn);
  // Unregisters and destroys (or, from inside a hook, marks for destruction) the hook. False,
  // changing nothing, for an id that was removed already or never handed out.
  bool remove_hook(HookId id) noexcept;
  // Any thread: runs `fn` on the loop's thread, exactly once, FIFO per posting thread. Posts
  // between two iterations cost one eventfd write and read in all. Tasks still queued when the
  // loop is destroyed are destroyed without running.
  void post(Task fn);

  // Handles `signo` on this loop through a signalfd. A signal reaches a signalfd only while
  // every thread blocks it: call block_signals() in main() before starting any thread (and
  // child processes must unblock what they need before exec). Returns EEXIST when `signo` is
  // already handled here, and EINVAL when a thread of the process does not block it (every
  // thread is checked, in /proc/self/task; without /proc, only the calling thread): that error
  // compares equal to std::errc::invalid_argument, is of signal_mask_category(), its value()
  // is the thread's id (gettid) and its message() names it ("thread 4242 (worker) does not
  // block the signal ..."). Reads /proc: call it at set-up, not per event.
  std::error_code on_signal(int signo, SignalHandler handler);

  bool in_loop_thread() const noexcept { return std::this_thread::get_id() == owner_; }
  const Stats& stats() const noexcept { return stats_; }
  // Options::measure_time: how late each timer's callback started, in nanoseconds after its
  // deadline (0 when on time). Empty when the option is off.
  const Histogram& timer_delay() const noexcept;
  std::size_t registrations() const noexcept { return live_registrations_; }

 private:
  friend class Connection;

  // Connection's internals (a friend): one input buffer shared by the loop's connections. A
  // connection with no unread input reads into it and keeps only what its on_data leaves
  // unconsumed, so an idle connection holds no input memory and reads land in bytes that stay warm
  // in cache. One reader at a time, without a hand-over: reads do not nest (run_once() is not
  // re-entrant, and no callback reads a connection on the spot). Empty between reads.
  Buffer& read_buffer() noexcept { return read_buffer_; }
  // After a read into it: empties it for the next.
  void clear_read_buffer() {
    read_buffer_.clear();
    // A callback that moved the bytes out took the block with them: get a new one.
    if (read_buffer_.capacity() < Buffer::kOverflowSize) [[unlikely]]
      read_buffer_.reserve(Buffer::kOverflowSize);
  }

  // Connection's internals: registers a connection's socket, whose events dispatch calls
  // Connection::on_events directly instead of through an IoHandler (see Slot::connection).
  Result<IoId> add_connection(int fd, std::uint32_t interest, Connection& connection);

  struct Slot {
    // What epoll carries for this registration (generation << 32 | slot) while it is live, 0
    // otherwise: dispatch checks liveness and generation with one compare.
    std::uint64_t token = 0;
    std::uint32_t generation = 1;
    std::uint32_t interest = 0;
    int fd = -1;
    // A connection's registration (add_connection): dispatch calls it directly, and `handler`
    // is empty. Every other registration has a handler and no connection. The one place the
    // loop calls up a layer (event_loop.cpp includes connection.hpp): on the busiest path there
    // is, it lets Connection::on_events be a two-compare jump to its read (bench/cost.sh: 294 /
    // 228 -> 278 / 212 instructions per message at 1 / 100 connections, with the plain shared
    // buffer below).
    Connection* connection = nullptr;
    IoHandler handler;
  };
  // Slots live in fixed chunks that never move: a handler running from a slot may add
  // registrations (growing the table) without moving itself, and finding a slot is two loads.
  static constexpr std::uint32_t kSlotChunk = 256;
  Slot& slot(std::uint32_t index) const noexcept {
    return slot_chunks_[index / kSlotChunk][index % kSlotChunk];
  }
  Slot* live_slot(IoId id) const noexcept;  // nullptr when `id` is stale
  Result<IoId> add_slot(int fd, std::uint32_t interest, IoHandler handler, Connection* connection);
  static void dispatch(Slot& s, std::uint32_t events);

  void assert_in_loop() const noexcept {
    assert(in_loop_thread() && "EventLoop method called from a thread that does not own the loop");
  }
  class Meter;
  struct Hook;
  // A wait without a timeout (the wait() and wait_slow() argument): until an event arrives.
  static constexpr Duration kNoTimeout = Duration::max();
  std::size_t iterate(Duration timeout);
  Duration until_next_timer() const noexcept;
  int wait(Duration timeout);
  int wait_slow(Duration timeout);
  void dispatch_measured(int n);
  void run_tasks(Meter* meter);
  void recycle_removed_slots() noexcept;
  HookId add_hook(std::deque<Hook>& hooks, Task fn);
  void run_hooks(std::deque<Hook>& hooks, Meter* meter);
  void run_before_wait_hooks();
  void hooks_changed() noexcept;
  void on_wakeup();
  void take_posted();
  void on_signalfd();
  void wake() noexcept;

  Options options_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  int signal_fd_ = -1;
  std::thread::id owner_;
  mutable TimePoint now_{};
  mutable bool now_valid_ = false;  // now_ was read after the last wait
  Stats stats_;
  bool measuring_ = false;  // an instrument is on: iterations take dispatch_measured()
  // measuring_ or an after-wait hook: the wait is followed by more than the plain dispatch.
  bool after_wait_work_ = false;
  TimePoint measured_until_{};  // measure_time: the end of the last iteration (or creation)
  std::unique_ptr<Histogram> timer_delay_;  // measure_time only
  std::atomic<bool> stop_requested_{false};
  // Set while an iteration runs, in debug builds only (the re-entrance assert); present in every
  // build so the class has one layout whatever NDEBUG the includer has.
  [[maybe_unused]] bool in_iteration_ = false;

  std::vector<epoll_event> events_;
  std::vector<std::unique_ptr<Slot[]>> slot_chunks_;
  std::uint32_t slot_count_ = 0;  // slots ever made
  std::vector<std::uint32_t> free_slots_;
  // Slots of registrations removed during this iteration: their handlers (one may be running)
  // are destroyed and the slots recycled at its end, never while a handler could still run.
  std::vector<std::uint32_t> removed_slots_;
  std::size_t live_registrations_ = 0;

  TimerQueue timers_;
  Buffer read_buffer_;
  // Connection's internals: what a connection made without TrafficCounters counts into.
  TrafficCounters uncounted_traffic_;

  std::vector<Task> deferred_;
  std::vector<Task> running_;

  std::mutex posted_mutex_;
  std::vector<Task> posted_;   // guarded by posted_mutex_
  bool wake_pending_ = false;  // guarded by posted_mutex_: an eventfd write is outstanding
  // Busy-poll only. A poster sets has_posted_, then skips the eventfd write if the loop is
  // spinning_; the loop clears spinning_, then checks has_posted_ before it sleeps. Both sides
  // store then load, sequentially consistent: one of them sees the other, no post is stranded.
  std::atomic<bool> spinning_{false};
  std::atomic<bool> has_posted_{false};
  std::vector<Task> posted_run_;  // loop thread only

  // Hooks. Deques: a hook added while its kind runs does not move the running one. A removed
  // hook's id is 0 until its kind has finished running (hooks_running_), then it is erased.
  struct Hook {
    std::uint64_t id;
    Task fn;
  };
  std::deque<Hook> before_wait_;
  std::deque<Hook> after_wait_;
  bool before_wait_hooks_ = false;  // !before_wait_.empty(): the one compare per iteration
  std::deque<Hook>* hooks_running_ = nullptr;
  bool hooks_removed_ = false;  // a hook of hooks_running_ was removed while it ran
  std::uint64_t last_hook_id_ = 0;

  std::deque<std::pair<int, SignalHandler>> signal_handlers_;  // deque: handlers may add handlers
  IoId wake_id_;
  IoId signal_id_;
};

// The category of on_signal()'s "a thread does not block this signal" error: value() is the
// thread's id, message() names the thread, and it compares equal to std::errc::invalid_argument.
const std::error_category& signal_mask_category() noexcept;

// Blocks `signals` in the calling thread (and the threads it starts later). Call it in main()
// before starting threads, for every signal a loop will handle with on_signal().
std::error_code block_signals(std::initializer_list<int> signals);

}  // namespace reactor

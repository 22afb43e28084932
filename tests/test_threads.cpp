// Cross-thread use of the loop: post() and stop() from other threads, LoopThread, and a
// TcpServer's stop() racing between its loops. Suite 'threads', which CI also runs under
// ThreadSanitizer.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "injected_fault.hpp"
#include "loopback.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/loop_thread.hpp"
#include "reactor/tcp_server.hpp"

// The loop's eventfd, failable on demand: a LoopThread whose loop cannot be built.
namespace {
reactor::test::InjectedFault eventfd_fault;
}  // namespace
REACTOR_INJECTABLE(eventfd_fault, eventfd, (unsigned int count, int flags), (count, flags))

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

using test::allowed_cpus;
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

// busy_poll: "A post() to a spinning loop is picked up by the spin itself, without an eventfd
// write and read". The hand-off between a poster that skips the eventfd and a loop that stops
// spinning to sleep must strand nothing: posts one at a time, at gaps that straddle the end of
// a short spin, each must run (a stranded one would wait forever: the loop has no timer).
TEST(EventLoopThreads, PostsToABusyPollingLoopAreNeverStranded) {
  EventLoop::Options options;
  options.busy_poll = std::chrono::microseconds(20);
  LoopThread worker(options);
  constexpr std::uint32_t kPosts = 5'000;
  std::atomic<std::uint32_t> ran{0};
  std::uint64_t seed = 88172645463325252ull;  // xorshift: gaps of 0-40 us, reproducible
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  for (std::uint32_t i = 0; i < kPosts; ++i) {
    worker.loop().post([&ran, i] { ran.store(i + 1, std::memory_order_release); });
    while (ran.load(std::memory_order_acquire) != i + 1) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "post " << i << " never ran: its wake-up was lost";
    }
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    const auto gap_end = std::chrono::steady_clock::now() + std::chrono::microseconds(seed % 40);
    while (std::chrono::steady_clock::now() < gap_end) {
    }
  }
  EXPECT_EQ(ran.load(), kPosts);
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

// A posted task's record: how often it ran and whether its callable was destroyed. Written on
// the loop thread, read after join().
struct TaskRecord {
  std::atomic<int> runs{0};
  std::atomic<int> destroyed{0};
};

// Marks its record destroyed when the last copy holding it dies (moved-from copies hold none).
struct MarksDestroyed {
  explicit MarksDestroyed(TaskRecord* r) : record(r) {}
  MarksDestroyed(MarksDestroyed&& other) noexcept : record(std::exchange(other.record, nullptr)) {}
  MarksDestroyed& operator=(MarksDestroyed&&) = delete;
  ~MarksDestroyed() {
    if (record) record->destroyed.fetch_add(1);
  }
  TaskRecord* record;
};

// LoopThread(options): the loop is built with them. Seen from a posted task: the epoll_wait
// fallback and the replaced clock (a ManualClock made before the thread started, read only by
// the loop).
TEST(EventLoopThreads, LoopThreadBuildsItsLoopWithTheGivenOptions) {
  ManualClock clock(TimePoint{} + 42h);
  EventLoop::Options options;
  options.use_epoll_pwait2 = false;
  options.clock = &clock;
  LoopThread worker(options);
  std::promise<std::pair<bool, TimePoint>> seen;
  auto future = seen.get_future();
  worker.loop().post([&] {
    EventLoop& loop = worker.loop();
    seen.set_value({loop.stats().epoll_pwait2, loop.now()});
  });
  ASSERT_EQ(future.wait_for(kDeadline), std::future_status::ready);
  const auto [uses_pwait2, now] = future.get();
  EXPECT_FALSE(uses_pwait2);
  EXPECT_EQ(now, TimePoint{} + 42h);
}

// EventLoop's constructor throws std::system_error when it cannot get its own fds (EMFILE at
// start-up); a LoopThread builds its loop on its own thread, so it hands that exception to the
// thread that constructed it, after its thread ended, instead of ending the process (an
// exception leaving a thread's function calls std::terminate).
TEST(EventLoopThreads, LoopThreadWhoseLoopCannotBeBuiltThrowsItsErrorToTheCreator) {
  struct Disarm {
    ~Disarm() { eventfd_fault.disarm(); }
  } disarm;
  eventfd_fault.arm(EMFILE);
  try {
    LoopThread worker;
    ADD_FAILURE() << "a LoopThread without a loop";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::too_many_files_open);
  }
  EXPECT_EQ(eventfd_fault.injected.load(), 1);
  eventfd_fault.disarm();
  LoopThread works;  // and the next one is fine
  std::promise<void> ran;
  works.loop().post([&] { ran.set_value(); });
  EXPECT_EQ(ran.get_future().wait_for(kDeadline), std::future_status::ready);
}

// "The constructor ... returns once the loop exists; loop() may then be used from any thread as
// the EventLoop contract allows (post(), stop()), and fully from tasks posted to it": a task
// adds a registration and a timer, whose callbacks then run on the loop's thread.
TEST(EventLoopThreads, LoopThreadLoopIsFullyUsableFromPostedTasks) {
  LoopThread worker;
  EXPECT_FALSE(worker.loop().in_loop_thread());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  std::promise<bool> io_seen;
  std::promise<bool> timer_seen;
  auto io_future = io_seen.get_future();
  auto timer_future = timer_seen.get_future();
  IoId id;  // loop thread only
  worker.loop().post([&] {
    EventLoop& loop = worker.loop();
    auto added = loop.add(fds[0], io::readable, [&](std::uint32_t) {
      loop.remove(id);
      io_seen.set_value(loop.in_loop_thread());
    });
    if (!added) return io_seen.set_value(false);
    id = *added;
    loop.after(1ms, [&] { timer_seen.set_value(loop.in_loop_thread()); });
  });
  const char c = 'x';
  ASSERT_EQ(::write(fds[1], &c, 1), 1);
  ASSERT_EQ(io_future.wait_for(kDeadline), std::future_status::ready);
  ASSERT_EQ(timer_future.wait_for(kDeadline), std::future_status::ready);
  EXPECT_TRUE(io_future.get());
  EXPECT_TRUE(timer_future.get());
  worker.join();
  ::close(fds[0]);
  ::close(fds[1]);
}

// Records the thread that destroys it (the last of its moved-to copies).
struct NotesItsDestruction {
  explicit NotesItsDestruction(std::thread::id* on) : destroyed_on(on) {}
  NotesItsDestruction(NotesItsDestruction&& other) noexcept
      : destroyed_on(std::exchange(other.destroyed_on, nullptr)) {}
  NotesItsDestruction& operator=(NotesItsDestruction&&) = delete;
  ~NotesItsDestruction() {
    if (destroyed_on) *destroyed_on = std::this_thread::get_id();
  }
  std::thread::id* destroyed_on;
};

// "The destructor stops the loop and joins the thread; the loop is destroyed on its own thread,
// and with it the timers and tasks still queued": once ~LoopThread returns, a pending timer's
// callable has been destroyed, without running, on the loop's thread.
TEST(EventLoopThreads, LoopThreadDestructorJoinsAndDestroysQueuedTimersOnTheLoopThread) {
  std::thread::id destroyed_on;
  std::thread::id loop_thread;
  bool fired = false;
  {
    LoopThread worker;
    std::promise<void> scheduled;
    worker.loop().post([&] {
      loop_thread = std::this_thread::get_id();
      worker.loop().after(1h, [&fired, n = NotesItsDestruction(&destroyed_on)] { fired = true; });
      scheduled.set_value();
    });
    ASSERT_EQ(scheduled.get_future().wait_for(kDeadline), std::future_status::ready);
  }
  EXPECT_FALSE(fired);
  EXPECT_NE(destroyed_on, std::thread::id()) << "the timer was not destroyed by ~LoopThread";
  EXPECT_EQ(destroyed_on, loop_thread);
  EXPECT_NE(loop_thread, std::this_thread::get_id());
}

// "Signals: threads inherit the creating thread's signal mask": test_main blocked SIGUSR1 before
// any thread, so a LoopThread's loop can handle it.
TEST(EventLoopThreads, LoopThreadInheritsTheCreatorsSignalMask) {
  LoopThread worker;
  std::promise<bool> blocked;
  auto future = blocked.get_future();
  worker.loop().post([&] {
    sigset_t mask;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    blocked.set_value(sigismember(&mask, SIGUSR1) == 1);
  });
  ASSERT_EQ(future.wait_for(kDeadline), std::future_status::ready);
  EXPECT_TRUE(future.get());
}

// What a task posted to the loop reads back about its own thread.
struct ThreadSeen {
  std::string name;
  std::vector<int> cpus;
};

ThreadSeen seen_from_a_task(LoopThread& worker) {
  std::promise<ThreadSeen> seen;
  auto future = seen.get_future();
  worker.loop().post([&] {
    ThreadSeen s;
    char name[16] = {};
    if (::pthread_getname_np(::pthread_self(), name, sizeof name) == 0) s.name = name;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::pthread_getaffinity_np(::pthread_self(), sizeof set, &set) == 0) {
      for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
        if (CPU_ISSET(cpu, &set)) s.cpus.push_back(cpu);
    }
    seen.set_value(std::move(s));
  });
  if (future.wait_for(kDeadline) != std::future_status::ready) return {"(no answer)", {}};
  return future.get();
}

// Header: "the new thread names itself (pthread_setname_np ...)": 15 characters, Linux's limit.
TEST(EventLoopThreads, LoopThreadNamesItsThread) {
  LoopThread::Options options;
  options.name = "loop-fifteen-ch";
  ASSERT_EQ(options.name.size(), 15u);
  LoopThread worker(options);
  EXPECT_EQ(seen_from_a_task(worker).name, "loop-fifteen-ch");
}

// Header: "... and pins itself (pthread_setaffinity_np) before it builds its loop ... every task
// runs where it is pinned": the last allowed CPU, so that CPU 0 by accident does not pass.
TEST(EventLoopThreads, LoopThreadPinsItsThreadToTheGivenCpus) {
  const std::vector<int> allowed = allowed_cpus();
  ASSERT_FALSE(allowed.empty());
  LoopThread::Options options;
  options.cpus = {allowed.back()};
  LoopThread worker(options);
  EXPECT_EQ(seen_from_a_task(worker).cpus, std::vector<int>{allowed.back()});
}

// Header: "empty: it keeps the affinity it inherited" (and the name): LoopThread(EventLoop::
// Options) names and pins nothing.
TEST(EventLoopThreads, LoopThreadWithoutNameOrCpusKeepsWhatItInherited) {
  char creator_name[16] = {};
  ASSERT_EQ(::pthread_getname_np(::pthread_self(), creator_name, sizeof creator_name), 0);
  LoopThread worker;
  const ThreadSeen seen = seen_from_a_task(worker);
  EXPECT_EQ(seen.name, creator_name);
  EXPECT_EQ(seen.cpus, allowed_cpus());
}

// Header: "A name longer than 15 characters (Linux's limit) is not truncated: it throws with
// ERANGE", once the thread has ended; the next LoopThread is fine.
TEST(EventLoopThreads, LoopThreadNameLongerThanFifteenCharactersThrowsErange) {
  LoopThread::Options options;
  options.name = "loop-sixteen-chr";
  ASSERT_EQ(options.name.size(), 16u);
  try {
    LoopThread worker(options);
    ADD_FAILURE() << "a LoopThread with a 16-character name";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::result_out_of_range) << e.what();
    EXPECT_NE(std::string(e.what()).find("loop-sixteen-chr"), std::string::npos) << e.what();
  }
  options.name.pop_back();
  LoopThread works(options);
  EXPECT_EQ(seen_from_a_task(works).name, "loop-sixteen-ch");
}

// Header: "A CPU set the thread cannot run on exactly (a CPU out of [0, CPU_SETSIZE), or one
// outside the process's allowed set, even beside allowed ones) throws with EINVAL"; issue 15:
// "an error is reported, not ignored".
TEST(EventLoopThreads, LoopThreadPinnedToACpuItCannotUseThrowsEinval) {
  const std::vector<int> allowed = allowed_cpus();
  ASSERT_FALSE(allowed.empty());
  int outside = CPU_SETSIZE - 1;  // 1023: not a CPU of any machine this runs on, normally
  while (outside >= 0 && std::find(allowed.begin(), allowed.end(), outside) != allowed.end())
    --outside;
  ASSERT_GE(outside, 0);
  const std::vector<std::vector<int>> refused = {
      {outside}, {allowed.front(), outside}, {-1}, {CPU_SETSIZE}};
  for (const std::vector<int>& cpus : refused) {
    LoopThread::Options options;
    options.cpus = cpus;
    SCOPED_TRACE(testing::PrintToString(cpus));
    try {
      LoopThread worker(options);
      ADD_FAILURE() << "a LoopThread pinned to a CPU it cannot use";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::invalid_argument) << e.what();
    }
  }
  LoopThread::Options options;
  options.cpus = {allowed.front()};
  LoopThread works(options);  // and the next one is fine
  EXPECT_EQ(seen_from_a_task(works).cpus, std::vector<int>{allowed.front()});
}

TEST(EventLoopThreads, JoiningALoopThreadWhileItIsBusyIsSafe) {
  // join()'s stop() races with the loop ending run() and destroying itself; ThreadSanitizer
  // and ASan see it if the loop can die while stop() still uses it. What the race may change
  // is only how many of the posted tasks ran before the stop: post() runs each "exactly once,
  // FIFO per posting thread", and "tasks still queued when the loop is destroyed are destroyed
  // without running". So per round: no task ran twice, those that ran are a prefix of the
  // posting order, and every task's callable was destroyed exactly once.
  constexpr int kRounds = 50;
  constexpr int kTasks = 100;
  int ran_total = 0;
  for (int round = 0; round < kRounds && !HasFailure(); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<TaskRecord> records(kTasks);
    {
      LoopThread worker;
      // Rounds of three kinds: plain; the loop held in a task until everything is posted, so
      // join()'s stop() races with the loop taking the queued tasks; and held, then stopped
      // before it is let go, so none of the tasks runs.
      const int kind = round % 3;
      std::atomic<bool> posted_all{false};
      if (kind != 0) worker.loop().post([&posted_all] { wait_for_flag(posted_all); });
      for (int i = 0; i < kTasks; ++i) {
        TaskRecord* r = &records[static_cast<std::size_t>(i)];
        worker.loop().post([r, m = MarksDestroyed(r)] { r->runs.fetch_add(1); });
      }
      if (kind == 2) worker.loop().stop();
      posted_all.store(true, std::memory_order_release);
      worker.join();
    }
    int ran = 0;
    while (ran < kTasks && records[static_cast<std::size_t>(ran)].runs.load() == 1)
      ++ran;
    ran_total += ran;
    for (int i = 0; i < kTasks; ++i) {
      const TaskRecord& r = records[static_cast<std::size_t>(i)];
      EXPECT_EQ(r.runs.load(), i < ran ? 1 : 0) << "task " << i << " (the first " << ran << " ran)";
      EXPECT_EQ(r.destroyed.load(), 1) << "task " << i;
    }
  }
  EXPECT_GT(ran_total, 0);
}

// The same promises with the count fixed: a task stops the loop while the others are posted, so
// the iteration ends with them still queued; they are destroyed with the loop, never run.
TEST(EventLoopThreads, TasksStillQueuedWhenALoopThreadStopsAreDestroyedWithoutRunning) {
  constexpr int kTasks = 100;
  std::vector<TaskRecord> records(kTasks);
  {
    LoopThread worker;
    std::atomic<bool> started{false};
    std::atomic<bool> posted_all{false};
    TaskRecord* first = &records[0];
    worker.loop().post([&, first, m = MarksDestroyed(first)] {
      first->runs.fetch_add(1);
      started.store(true, std::memory_order_release);
      wait_for_flag(posted_all);
      worker.loop().stop();
    });
    // Posted while the first runs: queued for the next iteration, which never comes.
    ASSERT_TRUE(wait_for_flag(started));
    for (int i = 1; i < kTasks; ++i) {
      TaskRecord* r = &records[static_cast<std::size_t>(i)];
      worker.loop().post([r, m = MarksDestroyed(r)] { r->runs.fetch_add(1); });
    }
    posted_all.store(true, std::memory_order_release);
  }
  EXPECT_EQ(records[0].runs.load(), 1);
  for (int i = 0; i < kTasks; ++i) {
    if (i > 0) {
      EXPECT_EQ(records[static_cast<std::size_t>(i)].runs.load(), 0) << "task " << i;
    }
    EXPECT_EQ(records[static_cast<std::size_t>(i)].destroyed.load(), 1) << "task " << i;
  }
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

// ---------------------------------------------------------------------------------------------
// TcpServer::stop() from two loops at once

// Holds a loop's thread in a posted task (it cannot accept) until release() or destruction.
class LoopBlocker {
 public:
  explicit LoopBlocker(EventLoop& loop) {
    // The task may still read `released` after this object is gone: it holds the flags too.
    loop.post([flags = flags_] {
      flags->entered.store(true, std::memory_order_release);
      wait_for_flag(flags->released);
    });
    wait_for_flag(flags_->entered);
  }
  ~LoopBlocker() { release(); }
  void release() { flags_->released.store(true, std::memory_order_release); }

 private:
  struct Flags {
    std::atomic<bool> entered{false};
    std::atomic<bool> released{false};
  };
  std::shared_ptr<Flags> flags_ = std::make_shared<Flags>();
};

// Calls server.stop(grace, done) at about the same moment from a SIGTERM handler on the home
// loop and from a task on the other loop (a signal and a protocol command asking for shutdown
// together). Both threads spin at a rendezvous and then call stop(): the pair of calls lands
// within a few hundred nanoseconds, which is what a check-then-store across threads needs.
class StopRace {
 public:
  StopRace(EventLoop& home, EventLoop& other) : home_(home), other_(other) {
    EXPECT_FALSE(home.on_signal(SIGTERM, [this](int) { stop_here(); }));
  }

  // Returns once both calls returned (false at the deadline).
  bool run(TcpServer& server, Duration grace, std::function<void()> done) {
    server_ = &server;
    grace_ = grace;
    done_ = std::move(done);
    arrived_.store(0);
    returned_.store(0);
    other_.post([this] { stop_here(); });
    if (::kill(::getpid(), SIGTERM) != 0) return false;
    return run_until(
        home_, [&] { return returned_.load() == 2; }, kDeadline);
  }

 private:
  void stop_here() {
    if (meet()) server_->stop(grace_, [done = done_] { done(); });
    returned_.fetch_add(1);
  }
  // Spins (yielding only now and then, so that the two leave it together) until both threads
  // arrived, or the deadline passed.
  bool meet() {
    arrived_.fetch_add(1);
    const auto give_up = std::chrono::steady_clock::now() + kDeadline;
    for (std::uint32_t spins = 1; arrived_.load() < 2; ++spins) {
      if (spins % 4096 == 0) {
        if (std::chrono::steady_clock::now() >= give_up) return false;
        std::this_thread::yield();
      }
    }
    return true;
  }

  EventLoop& home_;
  EventLoop& other_;
  TcpServer* server_ = nullptr;
  Duration grace_{};
  std::function<void()> done_;
  std::atomic<int> arrived_{0};
  std::atomic<int> returned_{0};
};

// Posts a round trip through `other` and runs `home` until it is back: whatever either loop
// had in flight for the other before has run.
bool flush(EventLoop& home, EventLoop& other) {
  std::atomic<bool> back{false};
  other.post([&] { home.post([&] { back.store(true); }); });
  return run_until(
      home, [&] { return back.load(); }, kDeadline);
}

TEST(TcpServerThreads, SigtermOnHomeRacingStopFromLoopOneRunsEachDoneOnceAfterBothShardsStopped) {
  constexpr int kRounds = 10;
  constexpr int kPerShard = 2;
  EventLoop home;
  LoopThread other;
  StopRace race(home, other.loop());
  for (int round = 0; round < kRounds && !HasFailure(); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::atomic<int> opened[2] = {0, 0};
    std::atomic<int> closed{0};
    ConnectionHandlers handlers = test::echo_handlers();
    handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closed; };
    TcpServer server(std::vector<EventLoop*>{&home, &other.loop()}, Address::ipv4_loopback(0),
                     handlers);
    server.set_open_handler([&](Connection& c) { ++opened[c.id().shard]; });
    ASSERT_FALSE(server.start());

    // Connections on both shards, so that neither stops at once: the home loop takes the
    // first ones while loop 1 is held, loop 1 the others while the home loop is not run.
    std::vector<int> clients;
    {
      LoopBlocker held(other.loop());
      for (int i = 0; i < kPerShard; ++i)
        clients.push_back(test::connect_to(server.address()));
      ASSERT_TRUE(run_until(
          home, [&] { return opened[0].load() == kPerShard; }, kDeadline));
    }
    for (int i = 0; i < kPerShard; ++i)
      clients.push_back(test::connect_to(server.address()));
    for (int fd : clients)
      ASSERT_GE(fd, 0);
    const auto give_up = std::chrono::steady_clock::now() + kDeadline;
    while (opened[1].load() < kPerShard && std::chrono::steady_clock::now() < give_up)
      std::this_thread::yield();
    ASSERT_EQ(opened[1].load(), kPerShard);

    // What `done` saw; written on the home thread only.
    struct AtDone {
      int calls = 0;
      int closed = -1;
      std::uint64_t active = ~std::uint64_t{0};
      bool on_home_thread = false;
    } at_done;
    ASSERT_TRUE(race.run(server, kDeadline, [&] {
      ++at_done.calls;
      at_done.closed = closed.load();
      at_done.active = server.stats().active;
      at_done.on_home_thread = home.in_loop_thread();
    }));

    // The server closes its side of every connection; `done` waits for the clients' EOF.
    for (int fd : clients)
      EXPECT_EQ(test::read_until_closed(home, fd), test::PeerEnd::eof);
    EXPECT_EQ(at_done.calls, 0) << "done ran before the connections finished";
    for (int fd : clients)
      ::close(fd);
    // Two stop() calls, two dones (the second joined the first): each exactly once.
    ASSERT_TRUE(run_until(
        home, [&] { return at_done.calls >= 2; }, kDeadline));
    ASSERT_TRUE(flush(home, other.loop()));
    EXPECT_EQ(at_done.calls, 2);
    EXPECT_EQ(at_done.closed, 2 * kPerShard) << "done ran before every shard stopped";
    EXPECT_EQ(at_done.active, 0u);
    EXPECT_TRUE(at_done.on_home_thread);
  }
}

TEST(TcpServerThreads, StopsFromBothLoopsAtOnceRunEachDoneExactlyOnce) {
  // Many rounds, no connections: each a fresh server whose two stop() calls collide. Before
  // the stop was routed through the home loop, both could pass its check: ThreadSanitizer
  // reported the races and `done` could run before loop 1's shard stopped.
  constexpr int kRounds = 3000;
  EventLoop home;
  LoopThread other;
  StopRace race(home, other.loop());
  ConnectionHandlers handlers = test::echo_handlers();
  for (int round = 0; round < kRounds && !HasFailure(); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    TcpServer server(std::vector<EventLoop*>{&home, &other.loop()}, Address::ipv4_loopback(0),
                     handlers);
    ASSERT_FALSE(server.start());
    int done = 0;  // home thread only
    ASSERT_TRUE(race.run(server, 1s, [&] { ++done; }));
    ASSERT_TRUE(run_until(
        home, [&] { return done >= 2; }, kDeadline));
    ASSERT_TRUE(flush(home, other.loop()));
    EXPECT_EQ(done, 2) << "one done per stop() call";
  }
}

}  // namespace
}  // namespace reactor

// LoopThread: an EventLoop that runs on a thread of its own, for servers that use several
// loops (one per core) and for tests.
//
// The constructor starts the thread and returns once the loop exists; loop() may then be used
// from any thread as the EventLoop contract allows (post(), stop()), and fully from tasks posted
// to it. When the loop cannot be built (EventLoop's constructor throws: EMFILE at start-up), the
// constructor rethrows that exception once the thread has ended. The destructor stops the loop and
// joins the thread; the loop is destroyed on its own thread, and with it the timers and tasks still
// queued (see ~EventLoop). Signals: threads inherit the creating thread's signal mask, so call
// block_signals() before creating any LoopThread.
//
// Name and CPUs (Options): the new thread names itself (pthread_setname_np: what top -H, gdb and
// perf show) and pins itself (pthread_setaffinity_np) before it builds its loop, so the loop's
// memory is first touched, and every task runs, where it is pinned. Either failing is an error at
// construction, reported as a failed loop is: the constructor throws std::system_error once the
// thread has ended. A name longer than 15 characters (Linux's limit) is not truncated: it throws
// with ERANGE. A CPU set the thread cannot run on exactly (a CPU out of [0, CPU_SETSIZE), or one
// outside the process's allowed set, even beside allowed ones) throws with EINVAL.
#pragma once

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "reactor/event_loop.hpp"

namespace reactor {

class LoopThread {
 public:
  struct Options {
    EventLoop::Options loop;
    // The thread's name, at most 15 characters; empty: it keeps the name it inherited.
    std::string name;
    // The CPUs the thread may run on (numbers as in sched_setaffinity); empty: it keeps the
    // affinity it inherited from the creating thread.
    std::vector<int> cpus;
  };

  explicit LoopThread(const EventLoop::Options& options = {});
  explicit LoopThread(const Options& options);
  ~LoopThread();
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  EventLoop& loop() const noexcept { return *loop_; }
  // Stops the loop and waits for its thread to end. Idempotent.
  void join();

 private:
  EventLoop* loop_ = nullptr;
  // Set once join()'s stop() has returned: until then the thread keeps the loop alive, since
  // stop() from another thread still writes to the loop's eventfd after run() may have returned.
  std::atomic<bool> stop_done_{false};
  std::thread thread_;
};

}  // namespace reactor

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
#pragma once

#include <atomic>
#include <thread>

#include "reactor/event_loop.hpp"

namespace reactor {

class LoopThread {
 public:
  explicit LoopThread(const EventLoop::Options& options = {});
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

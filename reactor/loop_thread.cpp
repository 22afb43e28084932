#include "reactor/loop_thread.hpp"

#include <condition_variable>
#include <mutex>

namespace reactor {

LoopThread::LoopThread(const EventLoop::Options& options) {
  std::mutex mutex;
  std::condition_variable created;
  thread_ = std::thread([&, options] {
    EventLoop loop(options);  // constructed on the thread that runs it, as EventLoop requires
    {
      // Notify under the lock: the constructor cannot return (and destroy mutex and condition)
      // before this thread is done with them.
      std::lock_guard lock(mutex);
      loop_ = &loop;
      created.notify_one();
    }
    loop.run();
    stop_done_.wait(false, std::memory_order_acquire);
  });
  std::unique_lock lock(mutex);
  created.wait(lock, [this] { return loop_ != nullptr; });
}

LoopThread::~LoopThread() {
  join();
}

void LoopThread::join() {
  if (!thread_.joinable()) return;
  loop_->stop();
  stop_done_.store(true, std::memory_order_release);
  stop_done_.notify_one();
  thread_.join();
}

}  // namespace reactor

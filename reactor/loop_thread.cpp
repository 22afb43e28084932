#include "reactor/loop_thread.hpp"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>

namespace reactor {

LoopThread::LoopThread(const EventLoop::Options& options) {
  std::mutex mutex;
  std::condition_variable created;
  std::exception_ptr failed;
  thread_ = std::thread([&, options] {
    std::optional<EventLoop> loop;
    try {
      loop.emplace(options);  // constructed on the thread that runs it, as EventLoop requires
    } catch (...) {
      // Handed to the constructor, which rethrows it: escaping this function would terminate.
      std::lock_guard lock(mutex);
      failed = std::current_exception();
      created.notify_one();
      return;
    }
    {
      // Notify under the lock: the constructor cannot return (and destroy mutex and condition)
      // before this thread is done with them.
      std::lock_guard lock(mutex);
      loop_ = &*loop;
      created.notify_one();
    }
    loop->run();
    stop_done_.wait(false, std::memory_order_acquire);
  });
  std::unique_lock lock(mutex);
  created.wait(lock, [&] { return loop_ != nullptr || failed; });
  if (failed) {
    lock.unlock();
    thread_.join();
    std::rethrow_exception(failed);
  }
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

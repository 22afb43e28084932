#include "reactor/loop_thread.hpp"

#include <pthread.h>
#include <sched.h>

#include <cerrno>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>

namespace reactor {

namespace {

std::string describe(const std::vector<int>& cpus) {
  std::string list;
  for (int cpu : cpus)
    list += (list.empty() ? "" : ",") + std::to_string(cpu);
  return list;
}

// Names and pins the calling thread as `options` asks; throws std::system_error on failure.
void name_and_pin_this_thread(const LoopThread::Options& options) {
  if (!options.name.empty()) {
    // glibc refuses a name over 15 characters with ERANGE: reported, never silently truncated.
    if (int rc = ::pthread_setname_np(::pthread_self(), options.name.c_str())) {
      throw std::system_error(rc, std::generic_category(),
                              "cannot name a loop thread \"" + options.name + "\"");
    }
  }
  if (options.cpus.empty()) return;
  const std::string what = "cannot pin a loop thread to CPUs " + describe(options.cpus);
  cpu_set_t wanted;
  CPU_ZERO(&wanted);
  for (int cpu : options.cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE)
      throw std::system_error(EINVAL, std::generic_category(), what);
    CPU_SET(static_cast<unsigned>(cpu), &wanted);
  }
  if (int rc = ::pthread_setaffinity_np(::pthread_self(), sizeof wanted, &wanted)) {
    throw std::system_error(rc, std::generic_category(), what);
  }
  // The kernel accepts a set that holds at least one allowed CPU and drops the others quietly;
  // a CPU the caller named but the thread cannot use is an error too.
  cpu_set_t got;
  CPU_ZERO(&got);
  if (int rc = ::pthread_getaffinity_np(::pthread_self(), sizeof got, &got)) {
    throw std::system_error(rc, std::generic_category(), what);
  }
  if (!CPU_EQUAL(&wanted, &got)) throw std::system_error(EINVAL, std::generic_category(), what);
}

}  // namespace

LoopThread::LoopThread(const EventLoop::Options& options) : LoopThread(Options{options, {}, {}}) {}

LoopThread::LoopThread(const Options& options) {
  std::mutex mutex;
  std::condition_variable created;
  std::exception_ptr failed;
  thread_ = std::thread([&, options] {
    std::optional<EventLoop> loop;
    try {
      // Before the loop exists: its memory is first touched on the CPU it will run on.
      name_and_pin_this_thread(options);
      loop.emplace(options.loop);  // constructed on the thread that runs it, as EventLoop requires
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

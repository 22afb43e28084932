// EventLoop micro-benchmarks: timer schedule+cancel, post() throughput, the cost of an empty
// iteration, and the wake-up latency from post() on one thread to the task running on the
// loop's. Build in release (-Db_ndebug=true) for meaningful numbers.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include <reactor/event_loop.hpp>
#include <reactor/loop_thread.hpp>
#include <reactor/socket.hpp>
#include <reactor/timer_queue.hpp>

namespace {

using namespace std::chrono_literals;
using reactor::Duration;
using reactor::EventLoop;
using reactor::LoopThread;
using reactor::TimePoint;
using reactor::TimerId;
using reactor::TimerQueue;

// Random delays in [1 s, 2 s): schedules land all over the heap, not always at one end.
std::vector<Duration> random_delays(std::size_t n) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::int64_t> ns(1'000'000'000, 1'999'999'999);
  std::vector<Duration> delays(n);
  for (auto& d : delays)
    d = Duration(ns(rng));
  return delays;
}

// One schedule plus one cancel per iteration, with state.range(0) other timers pending.
void BM_TimerQueueScheduleCancel(benchmark::State& state) {
  const auto pending = static_cast<std::size_t>(state.range(0));
  const TimePoint base = TimePoint{} + 1h;
  const auto delays = random_delays(pending + 4096);
  TimerQueue queue;
  queue.reserve(pending + 1);
  for (std::size_t i = 0; i < pending; ++i)
    queue.add(base + delays[i], Duration::zero(), [] {});
  std::size_t next = 0;
  for (auto _ : state) {
    const TimerId id = queue.add(base + delays[next], Duration::zero(), [] {});
    benchmark::DoNotOptimize(queue.cancel(id));
    next = (next + 1) & 4095;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.counters["pending"] = static_cast<double>(queue.size());
}
BENCHMARK(BM_TimerQueueScheduleCancel)->Arg(1'000)->Arg(1'000'000);

// The same through the loop: after() reads the clock, cancel() checks the owning thread.
void BM_LoopAfterCancel(benchmark::State& state) {
  const auto pending = static_cast<std::size_t>(state.range(0));
  const auto delays = random_delays(pending + 4096);
  EventLoop loop;
  for (std::size_t i = 0; i < pending; ++i)
    loop.after(1h + delays[i], [] {});
  std::size_t next = 0;
  for (auto _ : state) {
    const TimerId id = loop.after(1h + delays[next], [] {});
    benchmark::DoNotOptimize(loop.cancel(id));
    next = (next + 1) & 4095;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_LoopAfterCancel)->Arg(1'000)->Arg(1'000'000);

// run_once(0) with nothing ready: one epoll_pwait2 that returns at once, plus bookkeeping.
// instruments: 0 off (the default), 1 measure_time (two clock reads per iteration), 2 that and
// stall_threshold (one more read per callback: none here, so 1 and 2 should match).
void BM_EmptyIteration(benchmark::State& state) {
  EventLoop::Options options;
  options.measure_time = state.range(0) >= 1;
  if (state.range(0) >= 2) options.stall_threshold = std::chrono::milliseconds(10);
  EventLoop loop(options);
  for (auto _ : state)
    benchmark::DoNotOptimize(loop.run_once(Duration::zero()));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_EmptyIteration)->Arg(0)->Arg(1)->Arg(2)->ArgName("instruments");

// One deferred task per iteration (the task re-defers itself): a callback to time, so stall
// detection's per-callback read shows. instruments as above.
void BM_DeferredTaskIteration(benchmark::State& state) {
  EventLoop::Options options;
  options.measure_time = state.range(0) >= 1;
  if (state.range(0) >= 2) options.stall_threshold = std::chrono::milliseconds(10);
  EventLoop loop(options);
  std::uint64_t ran = 0;
  struct Again {
    EventLoop* loop;
    std::uint64_t* ran;
    void operator()() const {
      ++*ran;
      loop->defer(Again{loop, ran});
    }
  };
  loop.defer(Again{&loop, &ran});
  for (auto _ : state)
    loop.run_once(Duration::zero());
  benchmark::DoNotOptimize(ran);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_DeferredTaskIteration)->Arg(0)->Arg(1)->Arg(2)->ArgName("instruments");

bool pin_to_cpu(pthread_t thread, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(thread, sizeof set, &set) == 0;
}

// Pins the benchmark thread to CPU 0 and the loop's thread to CPU 1 (when there are two CPUs),
// and restores the benchmark thread's affinity on destruction.
class Pinning {
 public:
  explicit Pinning(EventLoop& loop) {
    if (std::thread::hardware_concurrency() < 2) return;
    if (pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    restore_ = pin_to_cpu(pthread_self(), 0);
    std::atomic<bool> done{false};
    loop.post([&done] {
      pin_to_cpu(pthread_self(), 1);
      done.store(true, std::memory_order_release);
    });
    while (!done.load(std::memory_order_acquire))
      std::this_thread::yield();
  }
  ~Pinning() {
    if (restore_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  Pinning(const Pinning&) = delete;
  Pinning& operator=(const Pinning&) = delete;

 private:
  cpu_set_t saved_{};
  bool restore_ = false;
};

// Posts from the benchmark thread to a LoopThread; the time includes draining every task.
void BM_PostThroughput(benchmark::State& state) {
  LoopThread worker;
  Pinning pinning(worker.loop());
  std::atomic<std::int64_t> ran{0};
  std::int64_t posted = 0;
  for (auto _ : state) {
    worker.loop().post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
    ++posted;
  }
  while (ran.load(std::memory_order_relaxed) != posted)
    std::this_thread::yield();
  state.SetItemsProcessed(posted);
  std::promise<std::uint64_t> wakeups;
  auto future = wakeups.get_future();
  worker.loop().post([&] { wakeups.set_value(worker.loop().stats().wakeups); });
  state.counters["posts_per_wakeup"] =
      static_cast<double>(posted) / static_cast<double>(std::max<std::uint64_t>(1, future.get()));
}
BENCHMARK(BM_PostThroughput)->UseRealTime();

// One post() at a time to a loop that is asleep (or busy-polling, range(0) microseconds), and
// the time from just before post() to the start of the task. Reports p50 and p99.
void BM_WakeupLatency(benchmark::State& state) {
  EventLoop::Options options;
  options.busy_poll = std::chrono::microseconds(state.range(0));
  LoopThread worker(options);
  Pinning pinning(worker.loop());
  std::vector<double> latencies_ns;
  latencies_ns.reserve(1 << 20);
  std::atomic<std::int64_t> ran_at{0};
  for (auto _ : state) {
    ran_at.store(0, std::memory_order_relaxed);
    const auto posted_at = std::chrono::steady_clock::now();
    worker.loop().post([&ran_at] {
      ran_at.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                   std::memory_order_release);
    });
    std::int64_t t;
    while ((t = ran_at.load(std::memory_order_acquire)) == 0) {
    }
    latencies_ns.push_back(static_cast<double>(t - posted_at.time_since_epoch().count()));
  }
  if (latencies_ns.empty()) return;
  std::sort(latencies_ns.begin(), latencies_ns.end());
  auto percentile = [&](double p) {
    auto i = static_cast<std::size_t>(p * static_cast<double>(latencies_ns.size() - 1));
    return latencies_ns[i] / 1000.0;
  };
  state.counters["p50_us"] = percentile(0.50);
  state.counters["p99_us"] = percentile(0.99);
}
BENCHMARK(BM_WakeupLatency)->Arg(0)->Arg(50)->ArgName("busy_poll_us")->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  // As any reactor program should: a run with many fds must not hit the soft limit.
  if (auto ec = reactor::raise_fd_limit()) {
    std::fprintf(stderr, "warning: cannot raise the fd limit: %s\n", ec.message().c_str());
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

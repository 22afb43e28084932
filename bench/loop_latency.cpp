// loop_latency: how late each event loop runs a timer, and how long a task posted from another
// thread waits to run, for the reactor and its peers (libuv, libevent, Boost.Asio), each used the
// way its documentation shows. bench/loop_latency.sh runs it for every loop and tabulates.
//
//   loop_latency timers --loop L [--count N] [--seed S] [--timer-slack NS] [--json]
//   loop_latency post   --loop L [--count N] [--seed S] [--timer-slack NS] [--busy-poll] [--json]
//                       [--loop-cpu C] [--poster-cpu C]
//
// L: reactor, reactor-slack1ns (the reactor with the loop thread's timer slack at 1 ns), libuv,
// libevent, libevent-precise (EVENT_BASE_FLAG_PRECISE_TIMER: a timerfd), asio.
// --timer-slack NS sets the loop thread's timer slack, for any loop: the reactor's
// EventLoop::Options::timer_slack, prctl(PR_SET_TIMERSLACK) before building a peer's loop; 0 (the
// default) leaves the inherited slack (Linux: 50 us) untouched. The output reports the slack in
// effect on the loop's thread.
//
// timers: N one-shot timers (default 1,000), one pending at a time, at delays drawn uniformly
// from [50 us, 10 ms] in whole microseconds (the same sequence for every loop, from --seed); when
// one fires, its lateness is recorded and the next is armed, so each one measures a sleeping
// loop's wake-up. Lateness = the time its callback starts minus (the time just before it was
// armed + the requested delay), both read with clock_gettime(CLOCK_MONOTONIC): negative when a
// loop fires early. libuv takes milliseconds, so its delays are rounded up to whole ms, as a
// libuv user must; libevent takes a timeval (us); the reactor and Asio nanoseconds.
//
// post: a poster thread stamps the time and posts a task; the task, on the loop's thread,
// records (now - stamp). One post at a time: the poster waits until the task ran, then spins a
// random 20-200 us gap, so a sleeping loop has gone back to sleep before the next post and every
// post must wake it. Default N: 20,000. The cross-thread path: reactor EventLoop::post; libuv a
// mutex-guarded queue + uv_async_send; libevent the same queue + event_active() with
// evthread_use_pthreads(); Asio boost::asio::post. --busy-poll: the loop never sleeps (reactor
// Options::busy_poll = 10 s; libuv uv_run(UV_RUN_NOWAIT), libevent
// event_base_loop(EVLOOP_NONBLOCK) and Asio io_context::poll() called in a loop).
//
// Pinning, done here with pthread_setaffinity_np: the loop runs on the main thread, pinned to
// --loop-cpu (default 0); the poster to --poster-cpu (default 1); -1 leaves a thread unpinned.
// The first 20 timers / 1,000 posts are a warm-up, not recorded. Every sample goes through the
// same stamp (now_ns) and record code whatever the loop. Output: one line (or one JSON object
// with --json) with min, p50, p90, p99 and max in microseconds.
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <reactor/event_loop.hpp>

namespace {

using namespace std::chrono_literals;

constexpr std::int64_t kMinDelayUs = 50;
constexpr std::int64_t kMaxDelayUs = 10'000;
constexpr std::int64_t kMinGapUs = 20;
constexpr std::int64_t kMaxGapUs = 200;
constexpr std::size_t kTimerWarmup = 20;
constexpr std::size_t kPostWarmup = 1'000;

// The one clock every sample is read with, for every loop.
std::int64_t now_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "loop_latency: %s\nusage: loop_latency timers|post --loop "
               "reactor|reactor-slack1ns|libuv|libevent|libevent-precise|asio [--count N] "
               "[--seed S] [--timer-slack NS] [--busy-poll] [--json] [--loop-cpu C] "
               "[--poster-cpu C]\n",
               why);
  std::exit(2);
}

struct Args {
  std::string kind;  // timers | post
  std::string loop;
  std::size_t count = 0;  // 0: the kind's default
  std::uint64_t seed = 1;
  long timer_slack_ns = 0;  // 0: untouched
  bool busy_poll = false;
  bool json = false;
  int loop_cpu = 0;
  int poster_cpu = 1;
};

long long number(const char* text, const char* what) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') usage((std::string("bad ") + what).c_str());
  return value;
}

Args parse(int argc, char** argv) {
  if (argc < 2) usage("missing kind");
  Args args;
  args.kind = argv[1];
  if (args.kind != "timers" && args.kind != "post") usage("kind is timers or post");
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage((flag + " needs a value").c_str());
      return argv[++i];
    };
    if (flag == "--loop") {
      args.loop = value();
    } else if (flag == "--count") {
      const long long n = number(value(), "--count");
      if (n < 1) usage("--count must be positive");
      args.count = static_cast<std::size_t>(n);
    } else if (flag == "--seed") {
      args.seed = static_cast<std::uint64_t>(number(value(), "--seed"));
    } else if (flag == "--timer-slack") {
      args.timer_slack_ns = static_cast<long>(number(value(), "--timer-slack"));
      if (args.timer_slack_ns < 0) usage("--timer-slack must be >= 0");
    } else if (flag == "--busy-poll") {
      args.busy_poll = true;
    } else if (flag == "--json") {
      args.json = true;
    } else if (flag == "--loop-cpu") {
      args.loop_cpu = static_cast<int>(number(value(), "--loop-cpu"));
    } else if (flag == "--poster-cpu") {
      args.poster_cpu = static_cast<int>(number(value(), "--poster-cpu"));
    } else {
      usage(("unknown argument " + flag).c_str());
    }
  }
  static const char* const loops[] = {"reactor",  "reactor-slack1ns", "libuv",
                                      "libevent", "libevent-precise", "asio"};
  if (std::find(std::begin(loops), std::end(loops), args.loop) == std::end(loops))
    usage("--loop is reactor, reactor-slack1ns, libuv, libevent, libevent-precise or asio");
  if (args.loop == "reactor-slack1ns") args.timer_slack_ns = 1;
  if (args.busy_poll && args.kind != "post") usage("--busy-poll is for post");
  if (args.count == 0) args.count = args.kind == "timers" ? 1'000 : 20'000;
  return args;
}

void pin_to_cpu(int cpu, const char* who) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set); rc != 0) {
    std::fprintf(stderr, "loop_latency: warning: cannot pin the %s thread to CPU %d: %s\n", who,
                 cpu, std::strerror(rc));
  }
}

std::vector<std::int64_t> uniform_us(std::size_t n, std::uint64_t seed, std::int64_t lo,
                                     std::int64_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> us(lo, hi);
  std::vector<std::int64_t> values(n);
  for (auto& v : values)
    v = us(rng);
  return values;
}

// ---- timers ----

// The delay sequence and the lateness of each timer. One timer is pending at a time: arm() starts
// the next, fired() records the one that fired and says whether another is due.
class TimerRun {
 public:
  TimerRun(std::size_t count, std::uint64_t seed)
      : delays_us_(uniform_us(kTimerWarmup + count, seed, kMinDelayUs, kMaxDelayUs)) {
    lateness_ns_.reserve(count);
  }

  // Calls start(delay_us) to arm the next timer, with the time stamped just before.
  template <class Start>
  void arm(Start&& start) {
    delay_us_ = delays_us_[next_++];
    armed_at_ns_ = now_ns();
    start(delay_us_);
  }
  // In the timer's callback, first thing: records its lateness; true if there is a next one.
  bool fired() {
    const std::int64_t now = now_ns();
    if (next_ > kTimerWarmup) lateness_ns_.push_back(now - (armed_at_ns_ + delay_us_ * 1'000));
    return next_ < delays_us_.size();
  }
  std::vector<std::int64_t>& lateness_ns() { return lateness_ns_; }

 private:
  std::vector<std::int64_t> delays_us_;
  std::vector<std::int64_t> lateness_ns_;
  std::size_t next_ = 0;
  std::int64_t delay_us_ = 0;
  std::int64_t armed_at_ns_ = 0;
};

// The reactor sets its thread's timer slack itself; the peers have no such option (main()).
reactor::EventLoop::Options reactor_options(const Args& args) {
  reactor::EventLoop::Options options;
  options.timer_slack = std::chrono::nanoseconds(args.timer_slack_ns);
  if (args.busy_poll) options.busy_poll = 10s;  // never sleeps between posts
  return options;
}

void timers_reactor(TimerRun& run, const Args& args) {
  reactor::EventLoop loop(reactor_options(args));
  struct Timers {
    reactor::EventLoop& loop;
    TimerRun& run;
    void arm() {
      run.arm([this](std::int64_t us) {
        loop.after(std::chrono::microseconds(us), [this] {
          if (run.fired()) {
            arm();
          } else {
            loop.stop();
          }
        });
      });
    }
  } timers{loop, run};
  timers.arm();
  loop.run();
}

void timers_libuv(TimerRun& run) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_timer_t timer;
  uv_timer_init(&loop, &timer);
  timer.data = &run;
  struct Timers {
    static void arm(uv_timer_t* timer) {
      static_cast<TimerRun*>(timer->data)->arm([timer](std::int64_t us) {
        // uv_timer_start takes milliseconds: round up, so the timer is not due before its delay.
        uv_timer_start(timer, on_timer, static_cast<std::uint64_t>((us + 999) / 1'000), 0);
      });
    }
    static void on_timer(uv_timer_t* timer) {
      if (static_cast<TimerRun*>(timer->data)->fired()) {
        arm(timer);
      } else {
        uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
      }
    }
  };
  Timers::arm(&timer);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

event_base* new_event_base(bool precise) {
  event_config* config = event_config_new();
  // PRECISE_TIMER: CLOCK_MONOTONIC instead of CLOCK_MONOTONIC_COARSE, and on epoll a timerfd for
  // the timeout instead of epoll_wait's milliseconds.
  if (precise) event_config_set_flag(config, EVENT_BASE_FLAG_PRECISE_TIMER);
  event_base* base = event_base_new_with_config(config);
  event_config_free(config);
  if (!base) {
    std::fprintf(stderr, "loop_latency: event_base_new_with_config failed\n");
    std::exit(1);
  }
  return base;
}

void timers_libevent(TimerRun& run, bool precise) {
  event_base* base = new_event_base(precise);
  struct Timers {
    TimerRun& run;
    event* timer = nullptr;
    void arm() {
      run.arm([this](std::int64_t us) {
        const timeval delay{static_cast<time_t>(us / 1'000'000),
                            static_cast<suseconds_t>(us % 1'000'000)};
        event_add(timer, &delay);
      });
    }
    static void on_timer(evutil_socket_t, short, void* self) {
      auto* timers = static_cast<Timers*>(self);
      if (timers->run.fired()) timers->arm();  // else nothing is pending: the loop returns
    }
  } timers{run};
  timers.timer = evtimer_new(base, Timers::on_timer, &timers);
  timers.arm();
  event_base_dispatch(base);
  event_free(timers.timer);
  event_base_free(base);
}

void timers_asio(TimerRun& run) {
  boost::asio::io_context io;
  boost::asio::steady_timer timer(io);
  struct Timers {
    boost::asio::steady_timer& timer;
    TimerRun& run;
    void arm() {
      run.arm([this](std::int64_t us) {
        timer.expires_after(std::chrono::microseconds(us));
        timer.async_wait([this](const boost::system::error_code&) {
          if (run.fired()) arm();
        });
      });
    }
  } timers{timer, run};
  timers.arm();
  io.run();
}

// ---- post ----

// One sample per posted task: the poster stamps, the task records. Only one task is in flight.
class PostRun {
 public:
  explicit PostRun(std::size_t count) : latency_ns_(kPostWarmup + count) {}

  // On the loop's thread, first thing in the task: true after the last task.
  bool record(std::int64_t stamp_ns) noexcept {
    const std::int64_t now = now_ns();
    const std::size_t i = ran_.load(std::memory_order_relaxed);
    latency_ns_[i] = now - stamp_ns;
    ran_.store(i + 1, std::memory_order_release);
    return i + 1 == latency_ns_.size();
  }

  // The poster thread: post(stamp) for every sample, one at a time, a random gap between.
  template <class Post>
  void poster(std::uint64_t seed, int cpu, Post&& post) {
    pin_to_cpu(cpu, "poster");
    const auto gaps_us = uniform_us(latency_ns_.size(), seed + 1, kMinGapUs, kMaxGapUs);
    for (std::size_t k = 0; k < latency_ns_.size(); ++k) {
      post(now_ns());
      while (ran_.load(std::memory_order_acquire) == k)
        cpu_relax();
      const std::int64_t until = now_ns() + gaps_us[k] * 1'000;
      while (now_ns() < until)
        cpu_relax();
    }
  }

  std::vector<std::int64_t> samples_ns() const {
    return {latency_ns_.begin() + kPostWarmup, latency_ns_.end()};
  }

 private:
  std::vector<std::int64_t> latency_ns_;
  std::atomic<std::size_t> ran_{0};
};

void post_reactor(PostRun& run, const Args& args) {
  reactor::EventLoop loop(reactor_options(args));
  std::thread poster([&] {
    run.poster(args.seed, args.poster_cpu, [&](std::int64_t stamp) {
      loop.post([&run, &loop, stamp] {
        if (run.record(stamp)) loop.stop();
      });
    });
  });
  loop.run();
  poster.join();
}

// What a libuv or libevent user writes to hand work to the loop: a queue under a mutex, drained
// on the loop's thread after the wake-up (uv_async_send and event_active carry no data).
struct Mailbox {
  std::mutex mutex;
  std::vector<std::int64_t> queued;  // guarded by mutex
  std::vector<std::int64_t> running;
  PostRun* run = nullptr;
  bool done = false;

  void put(std::int64_t stamp) {
    std::lock_guard lock(mutex);
    queued.push_back(stamp);
  }
  void drain() {
    {
      std::lock_guard lock(mutex);
      running.swap(queued);
    }
    for (std::int64_t stamp : running)
      done = run->record(stamp) || done;
    running.clear();
  }
};

void post_libuv(PostRun& run, const Args& args) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  Mailbox mailbox;
  mailbox.run = &run;
  mailbox.queued.reserve(16);
  mailbox.running.reserve(16);
  uv_async_t async;
  uv_async_init(&loop, &async, [](uv_async_t* handle) {
    auto* box = static_cast<Mailbox*>(handle->data);
    box->drain();
    if (box->done) uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
  });
  async.data = &mailbox;
  std::thread poster([&] {
    run.poster(args.seed, args.poster_cpu, [&](std::int64_t stamp) {
      mailbox.put(stamp);
      uv_async_send(&async);
    });
  });
  if (args.busy_poll) {
    while (!mailbox.done)
      uv_run(&loop, UV_RUN_NOWAIT);
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // sleeping; or, busy, runs the close callback
  poster.join();
  uv_loop_close(&loop);
}

void post_libevent(PostRun& run, const Args& args, bool precise) {
  // libevent's documented cross-thread path: locking on, then event_active() from any thread.
  evthread_use_pthreads();
  event_base* base = new_event_base(precise);
  Mailbox mailbox;
  mailbox.run = &run;
  mailbox.queued.reserve(16);
  mailbox.running.reserve(16);
  struct Context {
    Mailbox& mailbox;
    event_base* base;
    bool busy;
  } context{mailbox, base, args.busy_poll};
  event* task = event_new(
      base, -1, 0,
      [](evutil_socket_t, short, void* arg) {
        auto* c = static_cast<Context*>(arg);
        c->mailbox.drain();
        if (c->mailbox.done && !c->busy) event_base_loopbreak(c->base);
      },
      &context);
  std::thread poster([&] {
    run.poster(args.seed, args.poster_cpu, [&](std::int64_t stamp) {
      mailbox.put(stamp);
      event_active(task, EV_READ, 0);
    });
  });
  if (args.busy_poll) {
    while (!mailbox.done)
      event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY);
  } else {
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);  // nothing is added: it must not return
  }
  poster.join();
  event_free(task);
  event_base_free(base);
}

void post_asio(PostRun& run, const Args& args) {
  boost::asio::io_context io;
  // An io_context with no I/O object idles on a condition variable (futex), not in epoll_wait;
  // one that serves sockets or timers, as a program with an event loop does, idles in
  // epoll_wait and is woken through its reactor's interrupter. A timer makes this one do that.
  boost::asio::steady_timer serves_io(io);
  auto work = boost::asio::make_work_guard(io);  // run() and poll() return once it is reset
  bool done = false;
  std::thread poster([&] {
    run.poster(args.seed, args.poster_cpu, [&](std::int64_t stamp) {
      boost::asio::post(io, [&run, &work, &done, stamp] {
        if (run.record(stamp)) {
          done = true;
          work.reset();
        }
      });
    });
  });
  if (args.busy_poll) {
    while (!done)
      io.poll();
  } else {
    io.run();
  }
  poster.join();
}

// ---- report ----

struct Summary {
  double min_us, p50_us, p90_us, p99_us, max_us, mean_us;
  std::size_t early;  // samples below zero (timers that fired before their deadline)
};

Summary summarize(std::vector<std::int64_t>& ns) {
  std::sort(ns.begin(), ns.end());
  // Nearest rank: the smallest sample with at least p of them at or below it.
  auto at = [&](double p) {
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(ns.size())));
    return static_cast<double>(ns[std::max<std::size_t>(rank, 1) - 1]) / 1e3;
  };
  double sum = 0;
  std::size_t early = 0;
  for (std::int64_t v : ns) {
    sum += static_cast<double>(v);
    early += v < 0 ? 1 : 0;
  }
  return {static_cast<double>(ns.front()) / 1e3,
          at(0.50),
          at(0.90),
          at(0.99),
          static_cast<double>(ns.back()) / 1e3,
          sum / static_cast<double>(ns.size()) / 1e3,
          early};
}

// How the loop waits for a timer: what decides its precision.
const char* timer_wait(const std::string& loop) {
  if (loop == "libuv") return "epoll_wait, ms timeout; delay rounded up to ms";
  if (loop == "libevent") return "epoll_wait, ms timeout; CLOCK_MONOTONIC_COARSE";
  if (loop == "libevent-precise") return "timerfd (EVENT_BASE_FLAG_PRECISE_TIMER)";
  if (loop == "asio") return "timerfd";
  return "epoll_pwait2, ns timeout";  // the reactor (it falls back to epoll_wait: see stderr)
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  Args pinned = args;
  if (cpus < 2 && args.kind == "post") {
    std::fprintf(stderr, "loop_latency: warning: %ld CPU: loop and poster not pinned\n", cpus);
    pinned.loop_cpu = pinned.poster_cpu = -1;
  }
  // The loop runs on this thread; the poster thread re-pins itself.
  pin_to_cpu(pinned.loop_cpu, "loop");
  const bool is_reactor = args.loop.rfind("reactor", 0) == 0;
  // The peers' timer slack, set as a user of theirs must: prctl on the loop's thread (this one)
  // before building the loop. The reactor's is its Options::timer_slack.
  if (!is_reactor && args.timer_slack_ns > 0 &&
      ::prctl(PR_SET_TIMERSLACK, args.timer_slack_ns) != 0) {
    std::perror("loop_latency: prctl(PR_SET_TIMERSLACK)");
    return 1;
  }
  if (is_reactor && !reactor::EventLoop().stats().epoll_pwait2)
    std::fprintf(stderr, "loop_latency: note: no epoll_pwait2 here, the reactor waits in ms\n");

  std::vector<std::int64_t> samples;
  if (args.kind == "timers") {
    TimerRun run(args.count, args.seed);
    if (args.loop == "libuv") {
      timers_libuv(run);
    } else if (args.loop == "libevent" || args.loop == "libevent-precise") {
      timers_libevent(run, args.loop == "libevent-precise");
    } else if (args.loop == "asio") {
      timers_asio(run);
    } else {
      timers_reactor(run, args);
    }
    samples = std::move(run.lateness_ns());
  } else {
    PostRun run(args.count);
    if (args.loop == "libuv") {
      post_libuv(run, pinned);
    } else if (args.loop == "libevent" || args.loop == "libevent-precise") {
      post_libevent(run, pinned, args.loop == "libevent-precise");
    } else if (args.loop == "asio") {
      post_asio(run, pinned);
    } else {
      post_reactor(run, pinned);
    }
    samples = run.samples_ns();
  }

  // The slack the loop ran with: this thread's, which the reactor's constructor may have set.
  const long slack_ns = ::prctl(PR_GET_TIMERSLACK);
  const Summary s = summarize(samples);
  const bool timers = args.kind == "timers";
  if (args.json) {
    std::printf(
        "{\"kind\": \"%s\", \"loop\": \"%s\", \"busy_poll\": %s, \"timer_slack_ns\": %ld, "
        "\"count\": %zu, \"seed\": %llu, \"loop_cpu\": %d, \"poster_cpu\": %d, "
        "\"timer_wait\": \"%s\", \"%s\": {\"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
        "\"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f}, \"early\": %zu}\n",
        args.kind.c_str(), args.loop.c_str(), args.busy_poll ? "true" : "false", slack_ns,
        samples.size(), static_cast<unsigned long long>(args.seed), pinned.loop_cpu,
        timers ? -1 : pinned.poster_cpu, timers ? timer_wait(args.loop) : "",
        timers ? "lateness_us" : "latency_us", s.min_us, s.p50_us, s.p90_us, s.p99_us, s.max_us,
        s.mean_us, s.early);
  } else {
    std::printf(
        "%s %s%s (timer slack %ld ns%s%s): %zu samples, %s us: min %.1f p50 %.1f "
        "p90 %.1f p99 %.1f max %.1f mean %.1f",
        args.kind.c_str(), args.loop.c_str(), args.busy_poll ? " busy-poll" : "", slack_ns,
        timers ? "; " : "", timers ? timer_wait(args.loop) : "", samples.size(),
        timers ? "lateness" : "post-to-run latency", s.min_us, s.p50_us, s.p90_us, s.p99_us,
        s.max_us, s.mean_us);
    if (timers) std::printf(", %zu fired early", s.early);
    std::printf("\n");
  }
  return 0;
}

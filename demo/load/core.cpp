// reactor-load's shared core: error kinds, the Worker and the LoadRun's control loop.
#include "core.hpp"

#include <unistd.h>

#include <csignal>

namespace load {

const char* to_string(Mode mode) {
  switch (mode) {
    case Mode::echo:
      return "echo";
    case Mode::accept:
      return "accept";
    case Mode::churn:
      return "churn";
    case Mode::slowread:
      return "slowread";
    case Mode::idle:
      return "idle";
    case Mode::rate:
      return "rate";
    case Mode::udp:
      return "udp";
  }
  return "?";
}

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::refused:
      return "connection refused";
    case ErrorKind::reset:
      return "connection reset";
    case ErrorKind::closed:
      return "closed by server";
    case ErrorKind::wrong_bytes:
      return "wrong bytes";
    case ErrorKind::connect_timeout:
      return "connect not completed";
    case ErrorKind::other:
      return "socket error";
    case ErrorKind::count:
      break;
  }
  return "error";
}

const char* key_of(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::refused:
      return "refused";
    case ErrorKind::reset:
      return "reset";
    case ErrorKind::closed:
      return "closed";
    case ErrorKind::wrong_bytes:
      return "wrong_bytes";
    case ErrorKind::connect_timeout:
      return "connect_timeout";
    case ErrorKind::other:
      return "other";
    case ErrorKind::count:
      break;
  }
  return "error";
}

ErrorKind kind_of(std::error_code ec) {
  if (ec == std::errc::connection_refused) return ErrorKind::refused;
  if (ec == std::errc::connection_reset || ec == std::errc::broken_pipe) return ErrorKind::reset;
  if (ec == std::errc::timed_out) return ErrorKind::connect_timeout;
  return ErrorKind::other;
}

ErrorKind kind_of(reactor::CloseReason reason, std::error_code ec) {
  switch (reason) {
    case reactor::CloseReason::reset:
      return ErrorKind::reset;
    case reactor::CloseReason::peer_closed:
      return ErrorKind::closed;
    default:
      return ec ? kind_of(ec) : ErrorKind::other;
  }
}

std::string lowercase_first(std::string text) {
  if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z')
    text[0] = static_cast<char>(text[0] - 'A' + 'a');
  return text;
}

// ---- Worker ----

Worker::Worker(LoadRun& owner, reactor::EventLoop& worker_loop) : run(owner), loop(worker_loop) {
  handlers.on_data = [](reactor::Connection& c, reactor::Buffer& input) {
    c.context_as<Client>()->on_data(input);
  };
  handlers.on_close = [](reactor::Connection& c, reactor::CloseReason reason, std::error_code ec) {
    c.context_as<Client>()->on_close(reason, ec);
  };
  if (run.settings().mode == Mode::slowread) {
    handlers.on_drained = [](reactor::Connection& c) { c.context_as<Client>()->on_drained(); };
  }
}

void Worker::error(ErrorKind kind, const std::string& detail) {
  const auto k = static_cast<std::size_t>(kind);
  ++error_counts[k];
  errors.add(1);
  if (first_detail[k].empty()) first_detail[k] = detail;
}

void Worker::client_lost() {
  if (--alive == 0 && running) run.worker_emptied();
}

void Worker::stop() {
  if (schedule) schedule->stop();
  running = false;
  if (ping_timer) loop.cancel(ping_timer);
  for (auto& client : clients)
    client->stop();
  clients.clear();
}

void Worker::start_clients() {
  if (starting) return;  // a start() that failed at once: the loop below goes on
  starting = true;
  while (running && connecting < kMaxConnecting && next_start < clients.size()) {
    ++connecting;
    clients[next_start++]->start();
  }
  starting = false;
}

void Worker::client_settled() {
  --connecting;
  if (++settled == clients.size()) {
    run.worker_settled();
    const double ping_s = run.settings().ping_s;
    if (ping_s > 0) {
      ping_timer = loop.every(
          std::chrono::duration_cast<Duration>(std::chrono::duration<double>(ping_s)), [this] {
            for (auto& client : clients)
              client->ping();
          });
    }
  } else {
    start_clients();
  }
}

void Worker::echo_round() {
  if (!running) return;
  if (ping_timer) loop.cancel(ping_timer);
  ping_timer = {};
  echo_phase = true;
  echo_pending = clients.size();
  for (auto& client : clients)
    client->echo_once();
}

void Worker::client_echoed() {
  if (--echo_pending == 0) run.worker_echoed();
}

// ---- LoadRun ----

void LoadRun::end_early(std::string why) {
  control_->post([this, why = std::move(why)] {
    if (ending_) return;
    early_end_ = why;
    end_run();
  });
}

void LoadRun::worker_emptied() {
  control_->post([this] {
    if (++workers_emptied_ < workers_with_clients_ || ending_) return;
    early_end_ = "every connection to " + settings_.target.to_string() +
                 " was lost: did the server go away?";
    end_run();
  });
}

void LoadRun::worker_settled() {
  control_->post([this] {
    if (++workers_settled_ < workers_with_clients_ || ending_) return;
    hold_started_ = Clock::now();
    const auto duration =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
    deadline_ = control_->after(duration, [this] { begin_echo_round(); });
  });
}

void LoadRun::begin_echo_round() {
  if (ending_) return;
  hold_ended_ = Clock::now();
  deadline_ = control_->after(kEchoRoundBound, [this] {
    early_end_ = "the echo round did not complete within the bound";
    end_run();
  });
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    if (!w->clients.empty()) w->loop.post([w] { w->echo_round(); });
  }
}

void LoadRun::worker_echoed() {
  control_->post([this] {
    if (++workers_echoed_ < workers_with_clients_ || ending_) return;
    end_run();
  });
}

void LoadRun::schedule_started(TimePoint start) {
  control_->post([this, start] {
    if (ending_) return;
    schedule_started_ = start;
    const auto duration =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
    deadline_ = control_->after(start + duration - Clock::now(), [this] { end_run(); });
  });
}

void LoadRun::end_run() {
  if (ending_) return;
  ending_ = true;
  ended_ = Clock::now();
  control_->cancel(deadline_);
  control_->cancel(progress_timer_);
  workers_running_ = workers_.size();
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->loop.post([this, w] {
      w->stop();
      control_->post([this] { worker_stopped(); });
    });
  }
}

void LoadRun::worker_stopped() {
  if (--workers_running_ == 0) control_->stop();
}

void LoadRun::progress() {
  std::uint64_t messages = 0, bytes = 0, errors = 0;
  for (const auto& w : workers_) {
    messages += w->messages.load();
    bytes += w->bytes.load();
    errors += w->errors.load();
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - started_).count();
  std::fprintf(stderr, "[%5.1fs] %llu msgs/s  %.2f MiB/s  %llu errors\n", elapsed,
               static_cast<unsigned long long>(messages - last_messages_),
               static_cast<double>(bytes - last_bytes_) / (1 << 20),
               static_cast<unsigned long long>(errors));
  last_messages_ = messages;
  last_bytes_ = bytes;
}

int LoadRun::run() {
  control_.emplace();
  if (auto ec = control_->on_signal(SIGINT, [this](int) {
        if (ending_) return;
        early_end_ = "interrupted";
        end_run();
      })) {
    std::fprintf(stderr, "cannot handle SIGINT: %s\n", ec.message().c_str());
  }
  for (int i = 0; i < settings_.threads; ++i) {
    reactor::EventLoop::Options options;
    // rate --spin: the probe loop (the first) busy-polls until its next message is due and
    // never sleeps; an hour is "for ever" without overflowing the loop's deadline arithmetic.
    if (settings_.mode == Mode::rate && settings_.spin && i == 0) options.busy_poll = 1h;
    threads_.push_back(std::make_unique<reactor::LoopThread>(options));
    workers_.push_back(std::make_unique<Worker>(*this, threads_.back()->loop()));
  }
  if (settings_.mode == Mode::rate) {
    // The probes on the first loop, the --bulk connections on the second (main.cpp asks for
    // one loop more when there are any), so that the bulk's work does not delay the probes.
    make_rate_clients(*workers_[0], settings_.connections);
    if (settings_.bulk > 0) {
      Worker& w = *workers_[1];
      w.bulk = true;
      for (int i = 0; i < settings_.bulk; ++i)
        w.clients.push_back(make_bulk_client(w, static_cast<std::uint64_t>(i) * 41 + 7));
    }
  } else if (settings_.mode == Mode::udp) {
    // The sockets spread evenly over the loops (main.cpp keeps --threads <= --sockets).
    const auto threads = static_cast<int>(workers_.size());
    int first = 0;
    for (int t = 0; t < threads; ++t) {
      const int count = settings_.connections / threads + (t < settings_.connections % threads);
      make_udp_clients(*workers_[static_cast<std::size_t>(t)], static_cast<std::uint64_t>(first),
                       count);
      first += count;
    }
  } else {
    for (int i = 0; i < settings_.connections; ++i) {
      Worker& w = *workers_[static_cast<std::size_t>(i) % workers_.size()];
      const auto seed = static_cast<std::uint64_t>(i) * 37;
      switch (settings_.mode) {
        case Mode::echo:
          w.clients.push_back(make_echo_client(w, seed));
          break;
        case Mode::accept:
          w.clients.push_back(make_accept_client(w, seed));
          break;
        case Mode::churn:
          w.clients.push_back(make_churn_client(w, static_cast<std::uint64_t>(i)));
          break;
        case Mode::slowread:
          w.clients.push_back(make_slowread_client(w, seed));
          break;
        case Mode::idle:
          w.clients.push_back(make_idle_client(w, seed));
          break;
        case Mode::rate:
        case Mode::udp:
          break;
      }
    }
  }

  for (const auto& w : workers_)
    workers_with_clients_ += w->clients.empty() ? 0 : 1;

  started_ = Clock::now();
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->loop.post([w, idle = settings_.mode == Mode::idle] {
      w->running = true;
      w->alive = w->clients.size();  // before any start(): a failing one counts itself out
      if (idle) {
        w->start_clients();
        return;
      }
      for (auto& client : w->clients)
        client->start();
      if (w->schedule) w->schedule->start();
    });
  }
  // idle: the hold begins when every connect settled (worker_settled); rate: the schedule, when
  // every probe's connect settled (schedule_started).
  if (settings_.mode != Mode::idle && settings_.mode != Mode::rate) {
    const auto duration =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
    deadline_ = control_->after(duration, [this] { end_run(); });
  }
  if (::isatty(STDERR_FILENO)) progress_timer_ = control_->every(1s, [this] { progress(); });
  control_->run();

  // Every worker stopped its clients on its own thread; joining makes their results visible here.
  threads_.clear();
  return report();
}

}  // namespace load

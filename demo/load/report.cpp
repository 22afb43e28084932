// reactor-load's report: the merged result as text or one JSON object on stdout, errors by
// kind on stderr, and the exit code.
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "core.hpp"

namespace load {

namespace {

// Why the run ended early and what went wrong go to stderr, so stdout stays one JSON object.
void print_errors(const std::string& early_end,
                  const std::array<std::uint64_t, kErrorKinds>& error_counts,
                  const std::array<std::string, kErrorKinds>& details, bool nothing_came_back,
                  const std::string& target, double seconds) {
  if (!early_end.empty()) std::fprintf(stderr, "reactor-load: %s\n", early_end.c_str());
  for (std::size_t k = 0; k < kErrorKinds; ++k) {
    if (error_counts[k] == 0) continue;
    std::fprintf(stderr, "error: %llu x %s (first: %s)\n",
                 static_cast<unsigned long long>(error_counts[k]),
                 to_string(static_cast<ErrorKind>(k)), details[k].c_str());
  }
  if (nothing_came_back) {
    std::fprintf(stderr, "reactor-load: no echo came back from %s within %.3g s\n", target.c_str(),
                 seconds);
  }
}

// {"kind": count, ...} for every error kind, the zero ones included (scripts read them by key).
nlohmann::ordered_json errors_by_kind(const std::array<std::uint64_t, kErrorKinds>& error_counts) {
  nlohmann::ordered_json by_kind = nlohmann::ordered_json::object();
  for (std::size_t k = 0; k < kErrorKinds; ++k)
    by_kind[key_of(static_cast<ErrorKind>(k))] = error_counts[k];
  return by_kind;
}

}  // namespace

int LoadRun::report() {
  if (settings_.mode == Mode::rate) return report_rate();
  if (settings_.mode == Mode::udp) return report_udp();
  if (settings_.mode != Mode::echo && settings_.mode != Mode::accept) return report_fault_mode();
  std::uint64_t messages = 0, bytes = 0, errors = 0;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  reactor::Histogram latency;
  for (const auto& w : workers_) {
    messages += w->messages.load();
    bytes += w->bytes.load();
    errors += w->errors.load();
    latency.merge(w->latency);
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
  }
  workers_.clear();

  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const bool accept = settings_.mode == Mode::accept;
  const double msgs_per_s = static_cast<double>(messages) / seconds;
  const double mib_per_s = static_cast<double>(bytes) / (1 << 20) / seconds;
  const double conns_per_s = accept ? msgs_per_s : 0.0;
  auto us = [&latency](double p) {
    return static_cast<double>(latency.value_at_percentile(p)) / 1000;
  };
  const double p50 = us(50), p90 = us(90), p99 = us(99), p999 = us(99.9);
  const double max = static_cast<double>(latency.max()) / 1000;
  const char* mode = accept ? "accept" : "echo";
  const std::string target = settings_.target.to_string();

  print_errors(early_end_, error_counts, details, messages == 0 && errors == 0, target, seconds);

  if (settings_.json) {
    const nlohmann::ordered_json result = {
        {"mode", mode},
        {"target", target},
        {"connections", settings_.connections},
        {"duration_s", seconds},
        {"messages", messages},
        {"bytes", bytes},
        {"errors", errors},
        {"msgs_per_s", msgs_per_s},
        {"mib_per_s", mib_per_s},
        {"conns_per_s", conns_per_s},
        {"latency_us", {{"p50", p50}, {"p90", p90}, {"p99", p99}, {"p999", p999}, {"max", max}}},
    };
    // Replace, not throw, on a target that is not valid UTF-8 (an odd Unix path).
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load %s -> %s\n", mode, target.c_str());
    if (accept) {
      std::printf("  clients       %d (threads %d)\n", settings_.connections, settings_.threads);
    } else {
      std::printf("  connections   %d (size %lld B, depth %d, threads %d)\n", settings_.connections,
                  static_cast<long long>(settings_.size), settings_.depth, settings_.threads);
    }
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  %-13s %llu (%.0f/s)\n", accept ? "connections" : "messages",
                static_cast<unsigned long long>(messages), msgs_per_s);
    if (!accept) std::printf("  throughput    %.2f MiB/s\n", mib_per_s);
    std::printf("  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f%s\n", p50, p90,
                p99, p999, max, accept ? "  (connect to echo)" : "  (round trip)");
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(errors));
  }
  std::fflush(stdout);
  return errors == 0 && messages > 0 ? demo::kExitOk : demo::kExitRuntime;
}

// churn, slowread, idle: the counts each mode is about, every error kind by name.
int LoadRun::report_fault_mode() {
  struct {
    std::uint64_t messages = 0, bytes = 0, errors = 0, connects = 0, bytes_sent = 0, closes = 0,
                  resets = 0, held = 0, echoed = 0;
  } t;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  for (const auto& w : workers_) {
    t.messages += w->messages.load();
    t.bytes += w->bytes.load();
    t.errors += w->errors.load();
    t.connects += w->connects.load();
    t.bytes_sent += w->bytes_sent.load();
    t.closes += w->closes.load();
    t.resets += w->resets.load();
    t.held += w->held;
    t.echoed += w->echoed;
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
  }
  workers_.clear();

  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const std::string target = settings_.target.to_string();
  const auto connections = static_cast<std::uint64_t>(settings_.connections);
  if (!early_end_.empty()) std::fprintf(stderr, "reactor-load: %s\n", early_end_.c_str());
  for (std::size_t k = 0; k < kErrorKinds; ++k) {
    if (error_counts[k] == 0) continue;
    std::fprintf(stderr, "error: %llu x %s (first: %s)\n",
                 static_cast<unsigned long long>(error_counts[k]),
                 to_string(static_cast<ErrorKind>(k)), details[k].c_str());
  }

  // Did the mode do its work at all? (Errors aside.)
  bool worked = false;
  switch (settings_.mode) {
    case Mode::churn:
      worked = t.connects > 0;
      break;
    case Mode::slowread:
      worked = t.bytes > 0;
      break;
    case Mode::idle:
      worked = t.echoed == connections;
      if (!worked) {
        std::fprintf(stderr, "reactor-load: %llu of %llu connections echoed\n",
                     static_cast<unsigned long long>(t.echoed),
                     static_cast<unsigned long long>(connections));
      }
      break;
    case Mode::echo:
    case Mode::accept:
    case Mode::rate:
    case Mode::udp:
      break;
  }

  nlohmann::ordered_json result = {
      {"mode", to_string(settings_.mode)},
      {"target", target},
      {"connections", settings_.connections},
      {"duration_s", seconds},
  };
  if (settings_.mode != Mode::slowread) result["messages"] = t.messages;
  result["bytes"] = t.bytes;
  result["errors"] = t.errors;
  result["connects"] = t.connects;
  switch (settings_.mode) {
    case Mode::churn:
      result["seed"] = settings_.seed;
      result["bytes_sent"] = t.bytes_sent;
      result["wrong_bytes"] = error_counts[static_cast<std::size_t>(ErrorKind::wrong_bytes)];
      result["closes"] = t.closes;
      result["resets"] = t.resets;
      result["connects_per_s"] = static_cast<double>(t.connects) / seconds;
      break;
    case Mode::idle:
      result["idle_s"] = std::chrono::duration<double>(hold_ended_ - hold_started_).count();
      result["held"] = t.held;
      result["echoed"] = t.echoed;
      break;
    default:
      break;
  }
  result["errors_by_kind"] = errors_by_kind(error_counts);

  if (settings_.json) {
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load %s -> %s\n", to_string(settings_.mode), target.c_str());
    std::printf("  clients       %d (threads %d)\n", settings_.connections, settings_.threads);
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  connects      %llu\n", static_cast<unsigned long long>(t.connects));
    switch (settings_.mode) {
      case Mode::churn:
        std::printf("  messages      %llu (%.2f MiB verified)\n",
                    static_cast<unsigned long long>(t.messages),
                    static_cast<double>(t.bytes) / (1 << 20));
        std::printf("  closes        %llu graceful, %llu reset\n",
                    static_cast<unsigned long long>(t.closes),
                    static_cast<unsigned long long>(t.resets));
        break;
      case Mode::slowread:
        std::printf("  sent          %.2f MiB, never read\n",
                    static_cast<double>(t.bytes) / (1 << 20));
        break;
      case Mode::idle:
        std::printf("  echoed        %llu of %llu held after %.3f s idle\n",
                    static_cast<unsigned long long>(t.echoed),
                    static_cast<unsigned long long>(t.held),
                    std::chrono::duration<double>(hold_ended_ - hold_started_).count());
        break;
      default:
        break;
    }
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(t.errors));
  }
  std::fflush(stdout);
  return t.errors == 0 && worked ? demo::kExitOk : demo::kExitRuntime;
}

// rate: the probes' schedule and latency from due time; the bulk connections' rate apart.
int LoadRun::report_rate() {
  std::uint64_t due = 0, sent = 0, late = 0, messages = 0, bytes = 0, errors = 0;
  std::uint64_t bulk_messages = 0;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  reactor::Histogram latency;
  for (const auto& w : workers_) {
    errors += w->errors.load();
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
    if (w->bulk) {
      bulk_messages += w->messages.load();
      continue;
    }
    due += w->due;
    sent += w->sent.load();
    late += w->late_sends.load();
    messages += w->messages.load();
    bytes += w->bytes.load();
    latency.merge(w->latency);
  }
  workers_.clear();

  // The probes' time is the schedule's (from message 0's due time); the bulk ran from the start.
  const TimePoint from = schedule_started_.value_or(started_);
  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - from).count());
  const double bulk_seconds =
      std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const double achieved = static_cast<double>(messages) / seconds;
  const double bulk_per_s = static_cast<double>(bulk_messages) / bulk_seconds;
  auto us = [&latency](double p) {
    return static_cast<double>(latency.value_at_percentile(p)) / 1000;
  };
  const double p50 = us(50), p90 = us(90), p99 = us(99), p999 = us(99.9), p9999 = us(99.99);
  const double max = static_cast<double>(latency.max()) / 1000;
  const std::string target = settings_.target.to_string();

  print_errors(early_end_, error_counts, details, messages == 0 && errors == 0, target, seconds);

  if (settings_.json) {
    const nlohmann::ordered_json by_kind = errors_by_kind(error_counts);
    const nlohmann::ordered_json result = {
        {"mode", "rate"},
        {"target", target},
        {"connections", settings_.connections},
        {"size", settings_.size},
        {"spin", settings_.spin},
        {"duration_s", seconds},
        {"offered_per_s", settings_.rate},
        {"achieved_per_s", achieved},
        {"due", due},
        {"sent", sent},
        {"late_sends", late},
        {"messages", messages},
        {"bytes", bytes},
        {"errors", errors},
        {"errors_by_kind", by_kind},
        {"bulk_connections", settings_.bulk},
        {"bulk_size", settings_.bulk > 0 ? settings_.bulk_size : 0},
        {"bulk_messages", bulk_messages},
        {"bulk_msgs_per_s", bulk_per_s},
        {"latency_us",
         {{"p50", p50},
          {"p90", p90},
          {"p99", p99},
          {"p999", p999},
          {"p9999", p9999},
          {"max", max}}},
    };
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load rate -> %s\n", target.c_str());
    std::printf("  connections   %d (size %lld B%s)\n", settings_.connections,
                static_cast<long long>(settings_.size), settings_.spin ? ", spinning" : "");
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  offered       %.0f/s (%llu due, %llu sent, %llu late by > %lld us)\n",
                settings_.rate, static_cast<unsigned long long>(due),
                static_cast<unsigned long long>(sent), static_cast<unsigned long long>(late),
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::microseconds>(kLateSend).count()));
    std::printf("  achieved      %.0f/s (%llu messages)\n", achieved,
                static_cast<unsigned long long>(messages));
    std::printf(
        "  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  p99.99 %.1f  max %.1f  (from "
        "due time)\n",
        p50, p90, p99, p999, p9999, max);
    if (settings_.bulk > 0) {
      std::printf("  bulk          %d connections x %lld B: %.0f msgs/s\n", settings_.bulk,
                  static_cast<long long>(settings_.bulk_size), bulk_per_s);
    }
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(errors));
  }
  std::fflush(stdout);
  return errors == 0 && messages > 0 ? demo::kExitOk : demo::kExitRuntime;
}

// udp: what became of every datagram sent (udp.cpp), and latency of the ones received.
int LoadRun::report_udp() {
  std::uint64_t due = 0, sent = 0, received = 0, bytes = 0, errors = 0;
  std::uint64_t lost = 0, duplicated = 0, reordered = 0, late = 0, in_flight = 0;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  reactor::Histogram latency;
  for (const auto& w : workers_) {
    due += w->due;
    sent += w->sent.load();
    received += w->messages.load();
    bytes += w->bytes.load();
    errors += w->errors.load();
    lost += w->lost;
    duplicated += w->duplicated;
    reordered += w->reordered;
    late += w->late;
    in_flight += w->in_flight;
    latency.merge(w->latency);
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
  }
  workers_.clear();
  const std::uint64_t corrupt = error_counts[static_cast<std::size_t>(ErrorKind::wrong_bytes)];

  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const double per_s = static_cast<double>(received) / seconds;
  auto us = [&latency](double p) {
    return static_cast<double>(latency.value_at_percentile(p)) / 1000;
  };
  const double p50 = us(50), p90 = us(90), p99 = us(99), p999 = us(99.9), p9999 = us(99.99);
  const double max = static_cast<double>(latency.max()) / 1000;
  const std::string target = "udp:" + settings_.target.to_string();
  const bool open_loop = settings_.rate > 0;

  print_errors(early_end_, error_counts, details, received == 0 && errors == 0, target, seconds);

  if (settings_.json) {
    const nlohmann::ordered_json by_kind = errors_by_kind(error_counts);
    const nlohmann::ordered_json result = {
        {"mode", "udp"},
        {"target", target},
        {"sockets", settings_.connections},
        {"threads", settings_.threads},
        {"size", settings_.size},
        {"depth", open_loop ? 0 : settings_.depth},
        {"offered_per_s", open_loop ? settings_.rate : 0.0},
        {"timeout_s", settings_.timeout_s},
        {"duration_s", seconds},
        {"due", due},
        {"sent", sent},
        {"received", received},
        {"lost", lost},
        {"duplicated", duplicated},
        {"reordered", reordered},
        {"late", late},
        {"corrupt", corrupt},
        {"in_flight", in_flight},
        {"bytes", bytes},
        {"msgs_per_s", per_s},
        {"errors", errors},
        {"errors_by_kind", by_kind},
        {"latency_us",
         {{"p50", p50},
          {"p90", p90},
          {"p99", p99},
          {"p999", p999},
          {"p9999", p9999},
          {"max", max}}},
    };
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load udp -> %s\n", target.c_str());
    if (open_loop) {
      std::printf("  sockets       %d (size %lld B, rate %.0f/s, threads %d)\n",
                  settings_.connections, static_cast<long long>(settings_.size), settings_.rate,
                  settings_.threads);
    } else {
      std::printf("  sockets       %d (size %lld B, depth %d, threads %d)\n", settings_.connections,
                  static_cast<long long>(settings_.size), settings_.depth, settings_.threads);
    }
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  datagrams     %llu sent, %llu received (%.0f/s), %llu in flight at the end\n",
                static_cast<unsigned long long>(sent), static_cast<unsigned long long>(received),
                per_s, static_cast<unsigned long long>(in_flight));
    std::printf(
        "  faults        %llu lost (> %.3g s), %llu duplicated, %llu reordered, %llu late, "
        "%llu corrupt\n",
        static_cast<unsigned long long>(lost), settings_.timeout_s,
        static_cast<unsigned long long>(duplicated), static_cast<unsigned long long>(reordered),
        static_cast<unsigned long long>(late), static_cast<unsigned long long>(corrupt));
    std::printf(
        "  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  p99.99 %.1f  max %.1f  (%s)\n",
        p50, p90, p99, p999, p9999, max, open_loop ? "from due time" : "round trip");
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(errors));
  }
  std::fflush(stdout);
  return errors == 0 && received > 0 ? demo::kExitOk : demo::kExitRuntime;
}

}  // namespace load

#include "reactor/host_connector.hpp"

#include <sys/socket.h>

#include <charconv>
#include <cstdint>
#include <string>
#include <utility>

namespace reactor {

namespace {

// "host:port" or "[v6]:port" -> host, port; false when malformed.
bool split_target(std::string_view target, std::string& host, std::uint16_t& port) {
  const std::size_t colon = target.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == target.size()) return false;
  std::string_view name = target.substr(0, colon);
  if (name.size() >= 2 && name.front() == '[' && name.back() == ']') {
    name = name.substr(1, name.size() - 2);
  } else if (name.find(':') != std::string_view::npos) {
    return false;  // an IPv6 literal needs its brackets
  }
  if (name.empty()) return false;
  const std::string_view digits = target.substr(colon + 1);
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || end != digits.data() + digits.size() || value == 0 || value > 65535)
    return false;
  host.assign(name);
  port = static_cast<std::uint16_t>(value);
  return true;
}

}  // namespace

HostConnector::HostConnector(EventLoop& loop, Resolver& resolver, Options options) noexcept
    : loop_(loop), resolver_(resolver), options_(std::move(options)) {}

std::error_code HostConnector::connect(std::string_view target, Duration timeout,
                                       ConnectionHandlers& handlers, ConnectHandler on_connect,
                                       const ConnectionOptions& options,
                                       TrafficCounters* counters) {
  if (pending()) return std::make_error_code(std::errc::connection_already_in_progress);
  auto numeric = Address::parse(target);
  std::string host;
  std::uint16_t port = 0;
  if (!numeric.ok() && !split_target(target, host, port))
    return std::make_error_code(std::errc::invalid_argument);
  handlers_ = &handlers;
  connection_options_ = options;
  counters_ = counters;
  on_connect_ = std::move(on_connect);
  addresses_.clear();
  attempts_.clear();
  started_ = failed_ = 0;
  last_error_ = {};
  deadline_ = loop_.after(timeout, [this] {
    deadline_ = TimerId{};
    finish(std::make_error_code(std::errc::timed_out), {});
  });
  if (numeric.ok()) {
    // No DNS for an address: the one attempt starts from the loop, as the handler must.
    addresses_.push_back(*numeric);
    next_attempt_ = loop_.after(Duration::zero(), [this] {
      next_attempt_ = TimerId{};
      start_next();
    });
    return {};
  }
  query_ = resolver_.resolve(host, port, AF_UNSPEC,
                             [this](std::error_code ec, std::span<const Address> addresses) {
                               query_ = 0;
                               on_resolved(ec, addresses);
                             });
  return {};
}

void HostConnector::on_resolved(std::error_code ec, std::span<const Address> addresses) {
  if (ec || addresses.empty()) {
    finish(ec ? ec : make_error_code(ResolveError::no_address), {});
    return;
  }
  // RFC 8305 section 4: alternate the families, starting with the first address's.
  std::vector<Address> first, second;
  const int first_family = addresses.front().family();
  for (const Address& a : addresses)
    (a.family() == first_family ? first : second).push_back(a);
  for (std::size_t i = 0; i < first.size() || i < second.size(); ++i) {
    if (i < first.size()) addresses_.push_back(first[i]);
    if (i < second.size()) addresses_.push_back(second[i]);
  }
  start_next();
}

// Starts the next address's attempt, and arms the delay after which the one after it starts.
void HostConnector::start_next() {
  if (next_attempt_) loop_.cancel(next_attempt_);
  next_attempt_ = TimerId{};
  while (started_ < addresses_.size()) {
    const std::size_t index = started_++;
    Connector::Options connector_options;
    if (options_.configure)
      connector_options.configure = [this](int fd) { return options_.configure(fd); };
    auto& connector =
        attempts_.emplace_back(std::make_unique<Connector>(loop_, std::move(connector_options)));
    const std::error_code ec = connector->connect(
        addresses_[index], Duration::max(), *handlers_,
        [this, index](std::error_code result, ConnectionHandle handle) {
          on_attempt(index, result, std::move(handle));
        },
        connection_options_, counters_);
    if (!ec) {
      if (started_ < addresses_.size()) {
        next_attempt_ = loop_.after(options_.attempt_delay, [this] {
          next_attempt_ = TimerId{};
          start_next();
        });
      }
      return;
    }
    // Failed before anything was in flight (EMFILE, a configure error): that address is done.
    last_error_ = ec;
    ++failed_;
  }
  if (failed_ == addresses_.size()) finish(last_error_, {});
}

void HostConnector::on_attempt(std::size_t index, std::error_code ec, ConnectionHandle handle) {
  if (!pending()) return;  // finished in this round already; dropping `handle` closes it
  if (!ec) {
    finish({}, std::move(handle));
    return;
  }
  last_error_ = ec;
  ++failed_;
  if (failed_ == addresses_.size()) {
    finish(ec, {});
  } else if (index + 1 == started_) {
    start_next();  // the latest attempt failed: the next one now, not after the delay
  }
}

void HostConnector::finish(std::error_code ec, ConnectionHandle handle) {
  ConnectHandler handler = std::move(on_connect_);
  cancel();  // the other attempts, the timers, the query
  if (handler) handler(ec, std::move(handle));
}

void HostConnector::cancel() noexcept {
  on_connect_ = nullptr;
  if (query_) resolver_.cancel(query_);
  query_ = 0;
  if (deadline_) loop_.cancel(deadline_);
  if (next_attempt_) loop_.cancel(next_attempt_);
  deadline_ = next_attempt_ = TimerId{};
  // A Connector cancels when destroyed; this may run inside one's handler (finish()), so the
  // objects are destroyed after the round.
  if (!attempts_.empty()) {
    for (auto& attempt : attempts_)
      attempt->cancel();
    loop_.defer([doomed = std::move(attempts_)]() mutable { doomed.clear(); });
    attempts_.clear();
  }
}

}  // namespace reactor

#include "reactor/resolver.hpp"

#include <ares.h>
#include <arpa/inet.h>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

namespace reactor {

namespace {

class ResolveCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "reactor.resolve"; }
  std::string message(int value) const override {
    switch (static_cast<ResolveError>(value)) {
      case ResolveError::not_found:
        return "host not found";
      case ResolveError::no_address:
        return "host has no address of the requested family";
      case ResolveError::timeout:
        return "name resolution timed out";
      case ResolveError::server_failure:
        return "DNS server failure";
      case ResolveError::refused:
        return "no DNS server could be reached";
      case ResolveError::bad_name:
        return "invalid host name or address family";
      case ResolveError::out_of_memory:
        return "out of memory";
      case ResolveError::other:
        return "name resolution failed";
    }
    return "unknown resolve error " + std::to_string(value);
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<ResolveError>(value)) {
      case ResolveError::timeout:
        return std::errc::timed_out;
      case ResolveError::bad_name:
        return std::errc::invalid_argument;
      case ResolveError::out_of_memory:
        return std::errc::not_enough_memory;
      default:
        return {value, *this};
    }
  }
};

ResolveError from_ares(int status) noexcept {
  switch (status) {
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
      return ResolveError::not_found;
    case ARES_ENODATA:
      return ResolveError::no_address;
    case ARES_ETIMEOUT:
      return ResolveError::timeout;
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
    case ARES_EFORMERR:
    case ARES_ENOTIMP:
    case ARES_EBADRESP:
    case ARES_EOF:
      return ResolveError::server_failure;
    case ARES_ECONNREFUSED:
      return ResolveError::refused;
    case ARES_EBADNAME:
    case ARES_EBADFAMILY:
    case ARES_EBADHINTS:
    case ARES_EBADSTR:
    case ARES_EBADQUERY:
    case ARES_EBADFLAGS:
    case ARES_ESERVICE:
      return ResolveError::bad_name;
    case ARES_ENOMEM:
      return ResolveError::out_of_memory;
    default:
      return ResolveError::other;
  }
}

// c-ares 1.18's library init is reference-counted and not thread-safe: do it once per process,
// whichever loop thread gets here first, and never undo it.
void init_library() {
  static std::once_flag once;
  static int status = ARES_SUCCESS;
  std::call_once(once, [] { status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (status != ARES_SUCCESS)
    throw std::system_error(make_error_code(from_ares(status)), "ares_library_init");
}

}  // namespace

const std::error_category& resolve_category() noexcept {
  static const ResolveCategory category;
  return category;
}

std::error_code make_error_code(ResolveError error) noexcept {
  return {static_cast<int>(error), resolve_category()};
}

struct Resolver::Query {
  Resolver* resolver = nullptr;
  QueryId id = 0;
  std::uint16_t port = 0;
  Handler handler;
  bool cancelled = false;  // the handler is gone; c-ares' callback only frees the record
  TimerId delivery{};      // answered: the timer that runs the handler
  std::error_code error;
  std::vector<Address> addresses;
};

Resolver::Resolver(EventLoop& loop, const Options& options) : loop_(loop) {
  assert(loop_.in_loop_thread() && "Resolver made on a thread that does not own the loop");
  init_library();
  ares_options opts{};
  opts.sock_state_cb = &Resolver::on_sock_state;
  opts.sock_state_cb_data = this;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(options.timeout).count();
  opts.timeout = static_cast<int>(std::clamp<decltype(ms)>(ms, 1, 24 * 3600 * 1000));
  opts.tries = std::max(options.tries, 1);
  const int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  if (int status = ares_init_options(&channel_, &opts, mask); status != ARES_SUCCESS)
    throw std::system_error(make_error_code(from_ares(status)), "ares_init_options");
  if (!options.servers.empty()) {
    if (int status = ares_set_servers_ports_csv(channel_, options.servers.c_str());
        status != ARES_SUCCESS) {
      ares_destroy(channel_);
      throw std::system_error(make_error_code(from_ares(status)),
                              "ares_set_servers_ports_csv: " + options.servers);
    }
  }
  // Once per iteration, before the loop computes its wait: c-ares' next timeout, when anything
  // called into c-ares since the last time (nothing else changes it).
  hook_ = loop_.on_before_wait([this] {
    if (!timer_stale_) return;
    timer_stale_ = false;
    update_timer();
  });
}

Resolver::~Resolver() {
  destroying_ = true;
  loop_.remove_hook(hook_);
  loop_.cancel(timer_);
  for (auto& [id, query] : queries_)
    loop_.cancel(query->delivery);
  // Calls every outstanding query's callback with ARES_EDESTRUCTION (ignored: destroying_) and
  // reports each socket closed through on_sock_state, which deregisters it first.
  ares_destroy(channel_);
  for (auto& [fd, io] : sockets_)
    loop_.remove(io);
}

Resolver::QueryId Resolver::resolve(std::string_view host, std::uint16_t port, int family,
                                    Handler handler) {
  const QueryId id = next_id_++;
  auto owned = std::make_unique<Query>();
  Query& query = *owned;
  query.resolver = this;
  query.id = id;
  query.port = port;
  query.handler = std::move(handler);
  queries_.emplace(id, std::move(owned));
  ++pending_;
  if (host.find('\0') != std::string_view::npos) {
    query.error = ResolveError::bad_name;
    query.delivery = loop_.at(TimePoint{}, [this, id] { deliver(id); });
    return id;
  }
  ares_addrinfo_hints hints{};
  hints.ai_family = family;
  hints.ai_socktype = SOCK_STREAM;
  // May call on_addrinfo before it returns (the hosts file, a numeric host): that only
  // schedules the delivery.
  ares_getaddrinfo(channel_, std::string(host).c_str(), nullptr, &hints, &Resolver::on_addrinfo,
                   &query);
  timer_stale_ = true;
  return id;
}

bool Resolver::cancel(QueryId id) noexcept {
  auto it = queries_.find(id);
  if (it == queries_.end() || it->second->cancelled) return false;
  Query& query = *it->second;
  --pending_;
  if (query.delivery) {  // answered: c-ares is done with it
    loop_.cancel(query.delivery);
    queries_.erase(it);
    return true;
  }
  query.cancelled = true;
  query.handler = {};
  return true;
}

void Resolver::on_addrinfo(void* arg, int status, int /*timeouts*/, ::ares_addrinfo* result) {
  auto& query = *static_cast<Query*>(arg);
  Resolver& self = *query.resolver;
  if (self.destroying_) {  // ARES_EDESTRUCTION from ~Resolver: no handler runs
    if (result != nullptr) ares_freeaddrinfo(result);
    return;
  }
  if (query.cancelled) {
    if (result != nullptr) ares_freeaddrinfo(result);
    self.queries_.erase(query.id);
    return;
  }
  if (status == ARES_SUCCESS && result != nullptr) {
    for (const ares_addrinfo_node* node = result->nodes; node != nullptr; node = node->ai_next) {
      if (node->ai_addr == nullptr || node->ai_addrlen > sizeof(sockaddr_storage)) continue;
      sockaddr_storage storage{};
      std::memcpy(&storage, node->ai_addr, node->ai_addrlen);
      if (storage.ss_family == AF_INET)
        reinterpret_cast<sockaddr_in&>(storage).sin_port = htons(query.port);
      else if (storage.ss_family == AF_INET6)
        reinterpret_cast<sockaddr_in6&>(storage).sin6_port = htons(query.port);
      else
        continue;
      auto address =
          Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&storage), node->ai_addrlen);
      if (address) query.addresses.push_back(*address);
    }
    if (query.addresses.empty()) query.error = ResolveError::no_address;
  } else {
    query.error = from_ares(status);
  }
  if (result != nullptr) ares_freeaddrinfo(result);
  // Handlers never run inside a call into c-ares (nor inside resolve()): they may destroy the
  // Resolver, which destroys the channel. The timer step of this iteration, or of the next when
  // this is resolve() outside any callback, runs it.
  const QueryId id = query.id;
  query.delivery = self.loop_.at(TimePoint{}, [&self, id] { self.deliver(id); });
}

void Resolver::deliver(QueryId id) {
  auto it = queries_.find(id);
  if (it == queries_.end()) return;
  std::unique_ptr<Query> query = std::move(it->second);
  queries_.erase(it);
  --pending_;
  Handler handler = std::move(query->handler);
  // Last: the handler may destroy this Resolver.
  handler(query->error, std::span<const Address>(query->addresses));
}

void Resolver::on_sock_state(void* data, int fd, int readable, int writable) {
  auto& self = *static_cast<Resolver*>(data);
  const std::uint32_t interest = (readable ? io::readable : 0U) | (writable ? io::writable : 0U);
  auto it = self.sockets_.find(fd);
  if (interest == 0) {  // c-ares closes the socket right after this
    if (it != self.sockets_.end()) {
      self.loop_.remove(it->second);
      self.sockets_.erase(it);
    }
    return;
  }
  if (it != self.sockets_.end()) {
    (void)self.loop_.modify(it->second, interest);
    return;
  }
  // A registration that fails leaves the query to c-ares' timeout.
  auto id =
      self.loop_.add(fd, interest, [&self, fd](std::uint32_t events) { self.on_io(fd, events); });
  if (id) self.sockets_.emplace(fd, *id);
}

void Resolver::on_io(int fd, std::uint32_t events) {
  // An error or hangup goes to whichever side c-ares waits on: its read or write reports it.
  const std::uint32_t interest = loop_.interest(sockets_.at(fd));
  const bool failed = (events & (io::error | io::hangup)) != 0;
  const bool read = (events & io::readable) != 0 || (failed && (interest & io::readable) != 0);
  const bool write = (events & io::writable) != 0 || (failed && (interest & io::writable) != 0);
  ares_process_fd(channel_, read ? fd : ARES_SOCKET_BAD, write ? fd : ARES_SOCKET_BAD);
  timer_stale_ = true;
}

void Resolver::on_timer() {
  timer_ = {};
  ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // expires what timed out
  timer_stale_ = true;
}

void Resolver::update_timer() {
  timeval tv{};
  if (ares_timeout(channel_, nullptr, &tv) == nullptr) {  // nothing in flight
    loop_.cancel(timer_);
    timer_ = {};
    return;
  }
  const Duration delay = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
  if (timer_ && loop_.reschedule(timer_, delay)) return;
  timer_ = loop_.after(delay, [this] { on_timer(); });
}

}  // namespace reactor

#include "reactor/datagram_socket.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace reactor {

namespace {

constexpr int kMaxBatch = 1024;  // UIO_MAXIOV: the kernel's bound on one recvmmsg/sendmmsg
constexpr std::size_t kMaxDatagram = 65536;

bool options_valid(const DatagramOptions& o) noexcept {
  return o.batch >= 1 && o.batch <= kMaxBatch && o.max_datagram >= 1 &&
         o.max_datagram <= kMaxDatagram && o.reads_per_event >= 1;
}

std::error_code errc(std::errc e) noexcept {
  return std::make_error_code(e);
}

// The errors of a send that mean "the socket buffer is full, try when writable".
// Not ENOBUFS (a full device queue): EPOLLOUT would not wait for it, the loop would spin.
bool would_block(int err) noexcept {
  return err == EAGAIN || err == EWOULDBLOCK;
}

}  // namespace

DatagramSocket::DatagramSocket(EventLoop& loop, DatagramHandlers& handlers,
                               const DatagramOptions& options)
    : loop_(loop), handlers_(handlers), options_(options) {}

DatagramSocket::~DatagramSocket() {
  close();
}

std::error_code DatagramSocket::open(int family) {
  assert_in_loop();
  if (fd_) return errc(std::errc::already_connected);
  if (!options_valid(options_)) return errc(std::errc::invalid_argument);
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX)
    return errc(std::errc::address_family_not_supported);
  // The one raw socket() of the datagram layer (socket.hpp opens only stream sockets).
  int fd = ::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_code();
  family_ = family;  // start() aims the receive headers by family
  if (auto ec = start(Fd(fd))) {
    family_ = AF_UNSPEC;
    return ec;
  }
  return {};
}

std::error_code DatagramSocket::bind(const Address& local) {
  assert_in_loop();
  if (fd_) return errc(std::errc::already_connected);
  if (auto ec = open(local.family())) return ec;
  const int on = 1;
  if ((options_.reuse_port &&
       ::setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) ||
      ::bind(fd_.get(), local.sockaddr_ptr(), local.length()) != 0) {
    std::error_code ec = errno_code();
    close();
    return ec;
  }
  if (local.is_unix() && !local.is_abstract()) bound_ = local;
  return {};
}

std::error_code DatagramSocket::connect(const Address& peer) {
  assert_in_loop();
  if (!fd_) {
    if (auto ec = open(peer.family())) return ec;
  }
  if (peer.family() == AF_UNSPEC) return errc(std::errc::destination_address_required);
  // A datagram connect completes at once (no handshake): EINPROGRESS never happens.
  if (::connect(fd_.get(), peer.sockaddr_ptr(), peer.length()) != 0) return errno_code();
  peer_ = peer;
  return {};
}

std::error_code DatagramSocket::start(Fd fd) {
  const auto batch = static_cast<std::size_t>(options_.batch);
  // Sized once per socket (re-opening with the same options reuses them).
  if (receive_headers_.size() != batch || !receive_buffer_) {
    receive_buffer_ = std::make_unique<std::byte[]>(batch * options_.max_datagram);
    receive_headers_.assign(batch, mmsghdr{});
    receive_iov_.assign(batch, iovec{});
    sources_.assign(batch, sockaddr_storage{});
    datagrams_.assign(batch, Datagram{});
    send_headers_.assign(batch, mmsghdr{});
    send_iov_.assign(batch, iovec{});
  }
  if (options_.receive_timestamps) {
    if (control_.empty()) {
      control_slot_ = (CMSG_SPACE(sizeof(timespec)) + sizeof(cmsghdr) - 1) / sizeof(cmsghdr);
      control_.assign(batch * control_slot_, cmsghdr{});
    }
    int on = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0)
      return errno_code();
  }
  const std::size_t size = options_.max_datagram;
  // IP sources go straight into each Datagram's Address, zeroed here: the kernel writes a whole
  // sockaddr_in or sockaddr_in6 (padding zeroed), so the Address stays canonical, and no
  // conversion runs per datagram. Unix names take Address::from_sockaddr's checks (an unnamed
  // sender, the path's length).
  const bool direct = family_ != AF_UNIX;
  for (std::size_t i = 0; i < batch; ++i) {
    receive_iov_[i] = {receive_buffer_.get() + i * size, size};
    msghdr& h = receive_headers_[i].msg_hdr;
    h.msg_iov = &receive_iov_[i];
    h.msg_iovlen = 1;
    datagrams_[i].source = Address();
    h.msg_name = direct ? static_cast<void*>(&datagrams_[i].source.storage_) : &sources_[i];
    h.msg_control = control_slot_ != 0 ? &control_[i * control_slot_] : nullptr;
    reset_receive_header(i);
    msghdr& out = send_headers_[i].msg_hdr;
    out = msghdr{};
    out.msg_iov = &send_iov_[i];
    out.msg_iovlen = 1;
  }
  auto added =
      loop_.add(fd.get(), io::readable, [this](std::uint32_t events) { on_events(events); });
  if (!added) return added.error();
  io_id_ = *added;
  fd_ = std::move(fd);
  writable_armed_ = false;
  return {};
}

void DatagramSocket::close() noexcept {
  assert_in_loop();
  if (closed_flag_) {
    *closed_flag_ = true;
    closed_flag_ = nullptr;
  }
  if (!fd_) return;
  loop_.remove(io_id_);
  io_id_ = {};
  fd_.reset();
  if (bound_.is_unix()) ::unlink(std::string(bound_.unix_path()).c_str());
  bound_ = Address();
  peer_ = Address();
  family_ = AF_UNSPEC;
  writable_armed_ = false;
  queue_.clear();
  queue_head_ = 0;
  queued_bytes_ = 0;
  queue_bytes_.clear();
}

Result<Address> DatagramSocket::local_address() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return errno_code();
  if (ss.ss_family == AF_UNIX && len < sizeof(sa_family_t)) len = sizeof(sa_family_t);
  return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

void DatagramSocket::on_events(std::uint32_t events) {
  bool closed = false;
  closed_flag_ = &closed;
  // An error event (a pending ICMP error) is read by recvmmsg, which returns it: readable and
  // error are handled the same way.
  if (events & (io::readable | io::error | io::hangup)) {
    receive(closed);
    if (closed) return;
  }
  if ((events & io::writable) && queued_datagrams() > 0) {
    flush();
    if (closed) return;
  }
  closed_flag_ = nullptr;
}

void DatagramSocket::receive(const bool& closed) {
  const auto batch = static_cast<unsigned>(options_.batch);
  const std::size_t size = options_.max_datagram;
  for (int round = 0; round < options_.reads_per_event; ++round) {
    int n = ::recvmmsg(fd_.get(), receive_headers_.data(), batch, 0, nullptr);
    ++stats_.receive_calls;
    if (n < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (err == EINTR) continue;
      // ECONNREFUSED and the other ICMP errors of a connected socket, reported once each.
      report({err, std::system_category()});
      if (closed) return;  // nothing of *this may be touched: it may be destroyed
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const mmsghdr& m = receive_headers_[static_cast<std::size_t>(i)];
      Datagram& d = datagrams_[static_cast<std::size_t>(i)];
      std::size_t len = std::min<std::size_t>(m.msg_len, size);
      d.bytes = {static_cast<const std::byte*>(receive_iov_[static_cast<std::size_t>(i)].iov_base),
                 len};
      d.truncated = (m.msg_hdr.msg_flags & MSG_TRUNC) != 0;
      if (control_slot_ != 0) {
        d.timestamp = {};
        msghdr& h = receive_headers_[static_cast<std::size_t>(i)].msg_hdr;
        for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
          if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
            std::memcpy(&d.timestamp, CMSG_DATA(c), sizeof d.timestamp);
        }
      }
      socklen_t name_len = m.msg_hdr.msg_namelen;
      if (family_ != AF_UNIX) {
        d.source.length_ = name_len;  // written in place (see start())
      } else {
        auto* sa = reinterpret_cast<sockaddr*>(&sources_[static_cast<std::size_t>(i)]);
        if (name_len < sizeof(sa_family_t)) {
          // An unbound Unix sender: the kernel reports no name at all.
          sa->sa_family = AF_UNIX;
          name_len = sizeof(sa_family_t);
        }
        auto source = Address::from_sockaddr(sa, name_len);
        d.source = source ? *source : Address();
      }
      stats_.received_bytes += len;
      stats_.truncated += d.truncated ? 1 : 0;
    }
    // recvmmsg rewrote the lengths and flags of the headers it filled (and, to be safe, the
    // one after them, where it stopped): only those need their capacities back.
    const std::size_t touched = std::min<std::size_t>(static_cast<std::size_t>(n) + 1, batch);
    for (std::size_t i = 0; i < touched; ++i)
      reset_receive_header(i);
    stats_.received += static_cast<std::uint64_t>(n);
    if (n > 0 && handlers_.on_datagrams) {
      handlers_.on_datagrams(
          *this, std::span<const Datagram>(datagrams_.data(), static_cast<std::size_t>(n)));
      if (closed) return;  // nothing of *this may be touched: it may be destroyed
    }
    // A short batch: the socket is drained; another recvmmsg would only say EAGAIN.
    if (static_cast<unsigned>(n) < batch) return;
  }
}

void DatagramSocket::reset_receive_header(std::size_t i) noexcept {
  msghdr& h = receive_headers_[i].msg_hdr;
  h.msg_namelen = sizeof(sockaddr_storage);
  h.msg_controllen = control_slot_ * sizeof(cmsghdr);
  h.msg_flags = 0;
}

void DatagramSocket::report(std::error_code ec) {
  ++stats_.errors;
  if (handlers_.on_error) handlers_.on_error(*this, ec);
}

std::error_code DatagramSocket::send(std::span<const std::byte> bytes) {
  assert_in_loop();
  return send_one(nullptr, bytes);
}

std::error_code DatagramSocket::send_to(const Address& to, std::span<const std::byte> bytes) {
  assert_in_loop();
  if (to.family() == AF_UNSPEC) return errc(std::errc::destination_address_required);
  return send_one(&to, bytes);
}

std::error_code DatagramSocket::send_one(const Address* to, std::span<const std::byte> bytes) {
  if (!fd_) return errc(std::errc::bad_file_descriptor);
  if (queued_datagrams() > 0) return enqueue(to, bytes);  // keep the order
  for (;;) {
    ssize_t n = ::sendto(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL,
                         to ? to->sockaddr_ptr() : nullptr, to ? to->length() : 0);
    ++stats_.send_calls;
    if (n >= 0) {
      ++stats_.sent;
      stats_.sent_bytes += static_cast<std::uint64_t>(n);
      return {};
    }
    int err = errno;
    if (err == EINTR) continue;
    if (would_block(err)) return enqueue(to, bytes);
    ++stats_.send_errors;
    return {err, std::system_category()};
  }
}

std::error_code DatagramSocket::send_batch(std::span<const OutgoingDatagram> datagrams) {
  assert_in_loop();
  if (!fd_) return errc(std::errc::bad_file_descriptor);
  std::error_code first;
  auto note = [&first](std::error_code ec) {
    if (ec && !first) first = ec;
  };
  std::size_t next = 0;
  while (next < datagrams.size()) {
    if (queued_datagrams() > 0) {
      // Behind the queue: everything left waits its turn.
      for (; next < datagrams.size(); ++next) {
        const OutgoingDatagram& d = datagrams[next];
        if (d.to && d.to->family() == AF_UNSPEC) {
          note(errc(std::errc::destination_address_required));
          continue;
        }
        note(enqueue(d.to, d.bytes));
      }
      break;
    }
    // Fill one sendmmsg with up to `batch` datagrams, skipping unaddressable ones.
    std::size_t count = 0;
    std::size_t index[kMaxBatch];
    while (next < datagrams.size() && count < send_headers_.size()) {
      const OutgoingDatagram& d = datagrams[next];
      if (d.to && d.to->family() == AF_UNSPEC) {
        note(errc(std::errc::destination_address_required));
        ++next;
        continue;
      }
      send_iov_[count] = {const_cast<std::byte*>(d.bytes.data()), d.bytes.size()};
      // Only what differs per datagram: msg_iov, msg_iovlen and the zero control fields were
      // set when the socket opened, and sendmmsg writes only msg_len.
      msghdr& h = send_headers_[count].msg_hdr;
      h.msg_name = d.to ? const_cast<sockaddr*>(d.to->sockaddr_ptr()) : nullptr;
      h.msg_namelen = d.to ? d.to->length() : 0;
      index[count++] = next++;
    }
    if (count == 0) break;
    int n = ::sendmmsg(fd_.get(), send_headers_.data(), static_cast<unsigned>(count), MSG_NOSIGNAL);
    ++stats_.send_calls;
    if (n > 0) {
      for (int i = 0; i < n; ++i) {
        ++stats_.sent;
        stats_.sent_bytes += send_headers_[static_cast<std::size_t>(i)].msg_len;
      }
      // The kernel stopped early: resume at the first datagram it did not take.
      next = index[n - 1] + 1;
      continue;
    }
    int err = errno;
    if (err == EINTR) {
      next = index[0];
      continue;
    }
    if (would_block(err)) {
      next = index[0];
      note(enqueue(datagrams[next].to, datagrams[next].bytes));
      ++next;
      continue;  // the queue is now non-empty: the rest queue behind it
    }
    // This datagram fails on its own (EMSGSIZE, ECONNREFUSED, ...): drop it, go on.
    ++stats_.send_errors;
    note({err, std::system_category()});
    next = index[0] + 1;
  }
  return first;
}

std::error_code DatagramSocket::enqueue(const Address* to, std::span<const std::byte> bytes) {
  std::size_t cost = std::max<std::size_t>(bytes.size(), 1);
  if (queued_bytes_ + cost > options_.max_queued_bytes) {
    ++stats_.dropped;
    stats_.dropped_bytes += bytes.size();
    return errc(std::errc::no_buffer_space);
  }
  // Reclaim the sent front of the entry array before it grows: no allocation once it has
  // reached the size the traffic needs.
  if (queue_head_ > 0 && queue_.size() == queue_.capacity()) {
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(queue_head_));
    queue_head_ = 0;
  }
  Queued& q = queue_.emplace_back();
  q.has_to = to != nullptr;
  q.to = to ? *to : Address();
  q.size = bytes.size();
  queue_bytes_.append(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  queued_bytes_ += cost;
  ++stats_.queued;
  update_interest();
  return {};
}

void DatagramSocket::flush() {
  std::size_t count = std::min(queued_datagrams(), send_headers_.size());
  const char* p = queue_bytes_.data();
  for (std::size_t i = 0; i < count; ++i) {
    Queued& q = queue_[queue_head_ + i];
    send_iov_[i] = {const_cast<char*>(p), q.size};
    p += q.size;
    msghdr& h = send_headers_[i].msg_hdr;
    h = msghdr{};
    h.msg_name = q.has_to ? const_cast<sockaddr*>(q.to.sockaddr_ptr()) : nullptr;
    h.msg_namelen = q.has_to ? q.to.length() : 0;
    h.msg_iov = &send_iov_[i];
    h.msg_iovlen = 1;
  }
  int n = ::sendmmsg(fd_.get(), send_headers_.data(), static_cast<unsigned>(count), MSG_NOSIGNAL);
  ++stats_.send_calls;
  std::size_t done = 0;
  std::error_code failure;
  if (n > 0) {
    done = static_cast<std::size_t>(n);
    for (std::size_t i = 0; i < done; ++i) {
      ++stats_.sent;
      stats_.sent_bytes += send_headers_[i].msg_len;
    }
  } else if (n < 0 && !would_block(errno) && errno != EINTR) {
    // The front datagram fails on its own: drop it and report it.
    failure = errno_code();
    ++stats_.send_errors;
    done = 1;
  }
  for (std::size_t i = 0; i < done; ++i) {
    const Queued& q = queue_[queue_head_];
    queue_bytes_.consume(q.size);
    queued_bytes_ -= std::max<std::size_t>(q.size, 1);
    ++queue_head_;
  }
  if (queue_head_ == queue_.size()) {
    queue_.clear();
    queue_head_ = 0;
  }
  update_interest();
  if (failure) report(failure);
}

void DatagramSocket::update_interest() {
  bool want = queued_datagrams() > 0;
  if (want == writable_armed_) return;
  // Should epoll_ctl fail (ENOMEM), the queue waits for the next readiness that arrives.
  if (!loop_.modify(io_id_, io::readable | (want ? io::writable : 0u))) writable_armed_ = want;
}

std::error_code DatagramSocket::join_group(const Address& group, unsigned interface_index) {
  assert_in_loop();
  return membership(group, interface_index, true);
}

std::error_code DatagramSocket::leave_group(const Address& group, unsigned interface_index) {
  assert_in_loop();
  return membership(group, interface_index, false);
}

std::error_code DatagramSocket::membership(const Address& group, unsigned interface_index,
                                           bool join) {
  if (!fd_) return errc(std::errc::bad_file_descriptor);
  if (group.family() != family_ || family_ == AF_UNIX)
    return errc(std::errc::address_family_not_supported);
  int rc;
  if (family_ == AF_INET) {
    ip_mreqn req{};
    req.imr_multiaddr = reinterpret_cast<const sockaddr_in*>(group.sockaddr_ptr())->sin_addr;
    req.imr_address.s_addr = htonl(INADDR_ANY);
    req.imr_ifindex = static_cast<int>(interface_index);
    rc = ::setsockopt(fd_.get(), IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &req,
                      sizeof req);
  } else {
    ipv6_mreq req{};
    req.ipv6mr_multiaddr = reinterpret_cast<const sockaddr_in6*>(group.sockaddr_ptr())->sin6_addr;
    req.ipv6mr_interface = interface_index;
    rc = ::setsockopt(fd_.get(), IPPROTO_IPV6, join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &req,
                      sizeof req);
  }
  return rc == 0 ? std::error_code{} : errno_code();
}

std::error_code DatagramSocket::set_multicast_interface(unsigned interface_index) {
  assert_in_loop();
  if (!fd_) return errc(std::errc::bad_file_descriptor);
  if (family_ == AF_INET) {
    ip_mreqn req{};
    req.imr_ifindex = static_cast<int>(interface_index);
    if (::setsockopt(fd_.get(), IPPROTO_IP, IP_MULTICAST_IF, &req, sizeof req) != 0)
      return errno_code();
    return {};
  }
  return ip_option(0, IPV6_MULTICAST_IF, static_cast<int>(interface_index));
}

std::error_code DatagramSocket::set_multicast_ttl(int ttl) {
  assert_in_loop();
  if (ttl < 0 || ttl > 255) return errc(std::errc::invalid_argument);
  return ip_option(IP_MULTICAST_TTL, IPV6_MULTICAST_HOPS, ttl);
}

std::error_code DatagramSocket::set_multicast_loop(bool on) {
  assert_in_loop();
  return ip_option(IP_MULTICAST_LOOP, IPV6_MULTICAST_LOOP, on ? 1 : 0);
}

std::error_code DatagramSocket::ip_option(int v4_name, int v6_name, int value) {
  if (!fd_) return errc(std::errc::bad_file_descriptor);
  if (family_ != AF_INET && family_ != AF_INET6)
    return errc(std::errc::address_family_not_supported);
  int rc = family_ == AF_INET
               ? ::setsockopt(fd_.get(), IPPROTO_IP, v4_name, &value, sizeof value)
               : ::setsockopt(fd_.get(), IPPROTO_IPV6, v6_name, &value, sizeof value);
  return rc == 0 ? std::error_code{} : errno_code();
}

}  // namespace reactor

// DatagramSocket: one non-blocking datagram socket (UDP over IPv4 or IPv6, or Unix SOCK_DGRAM)
// on one EventLoop, with batched receive (recvmmsg) and send (sendmmsg).
//
// Ownership. The user owns the DatagramSocket (not movable: the loop holds its address while it
// is registered). Its callbacks live in a DatagramHandlers that the user keeps alive longer than
// the socket; many sockets may share one. open() or bind() makes the socket (of the Address's
// family: the protocol is the socket's, the Address stays a plain socket address) and registers
// it; connect() sets a default peer; close() (or the destructor) deregisters and closes it,
// discarding queued output, and no callback runs after that. bind() to a Unix path does not
// remove a file already there (EADDRINUSE); the socket removes the file it bound when it closes.
//
// State. closed (constructed, or after close()) -- open()/bind() --> open -- connect() -->
// connected (connect() on a closed socket opens it first); any -- close() --> closed. A closed
// socket may be opened again (same options, same buffers); its stats() keep counting.
//
// Threads. Every method must be called on the socket's loop thread (debug builds assert it in
// open, bind, connect, close, the sends and the multicast calls).
//
// Callbacks (all optional; without on_datagrams received datagrams are read and dropped):
//   on_datagrams(socket, datagrams)  a batch arrived: `datagrams` and the bytes they point to
//                                    are valid only during the call (they are the socket's
//                                    own receive buffers).
//   on_error(socket, ec)             an asynchronous socket error, reported by a receive
//                                    (ICMP port unreachable on a connected UDP socket:
//                                    ECONNREFUSED; EHOSTUNREACH, ...) or by a send of queued
//                                    datagrams. Never fatal: the socket stays open and goes on.
// A callback may send on, close or destroy this or any other socket: after a callback that
// closed or destroyed its socket returns, the socket reads nothing more (the rest of that
// readiness is dropped) and touches nothing of itself. Callbacks never run inside a call you
// made (open, bind, connect, the sends, close): errors of those calls are returned.
//
// Receive. On readiness, recvmmsg reads up to `batch` datagrams into buffers the socket owns
// (batch x max_datagram bytes, allocated once, when the socket opens) and hands them to
// on_datagrams in one call, each with its bytes, its source address and a truncation flag: a
// datagram longer than max_datagram is cut to max_datagram bytes and reported truncated
// (MSG_TRUNC), never silently cut. At most reads_per_event batches per readiness (fairness, as
// the stream path); a batch shorter than `batch` means the socket is drained, and no further
// recvmmsg is made until it polls readable again. The source of a Unix datagram from an unbound
// sender is the unnamed Unix address (`unix:`).
//
// Send. send()/send_to() write directly with one sendto; send_batch() sends a span of datagrams
// with sendmmsg (up to `batch` per call). When the socket buffer is full (EAGAIN), the datagram
// is queued, in order, while the queue holds at most max_queued_bytes (payload bytes; a
// zero-length datagram counts as one); past that it is dropped and counted in stats() (a
// datagram sender never blocks nor grows without bound). While anything is queued, new sends
// queue behind it, and EPOLLOUT is armed; it is disarmed when the queue empties (the loop's
// interest changes only on those two transitions). One writability sends once (one sendmmsg).
// A send that fails otherwise (EMSGSIZE, ECONNREFUSED from an earlier ICMP error, ...) returns
// its error and drops that datagram only; a queued datagram that fails so is reported to
// on_error. MSG_NOSIGNAL everywhere. (EPOLLOUT waits for the peer's queue only on a connected
// Unix socket; an unconnected one sending to a full Unix receiver retries at each iteration.)
//
// Multicast (UDP). join_group()/leave_group() add and drop a membership of an IPv4 or IPv6
// group (IP_ADD_MEMBERSHIP / IPV6_JOIN_GROUP) on an interface, by index (if_nametoindex; 0: the
// kernel picks one by its routes); the group's port is ignored, the socket receives on the port
// it is bound to. The sending side: set_multicast_interface() (0: by route), set_multicast_ttl()
// (IPv4 TTL or IPv6 hop limit, 0..255; default 1, this network only) and set_multicast_loop()
// (default on: a sender's own host's members receive its datagrams; over `lo` they receive
// them whatever it says, as the device itself loops them back). All of these are
// setsockopt on the open socket: EBADF when closed, EAFNOSUPPORT when the group's family is not
// the socket's (AF_UNIX included), EINVAL for a group that is not multicast or a TTL outside
// 0..255, and the kernel's errors (EADDRINUSE: joined twice; EADDRNOTAVAIL: left without
// joining; ENODEV: no such interface).
//
// Allocation. The receive buffers, the batch arrays and the queue's storage are allocated when
// the socket opens or first queues; a socket in steady state (receiving, sending, queueing
// below a queue size it reached before) does not allocate per datagram.
//
// Errors are std::error_code, read from errno where the syscall failed. Options out of range
// (batch 0 or over 1024, max_datagram 0 or over 65536, reads_per_event < 1) make open() and
// bind() fail with EINVAL; an unspecified Address() makes them fail with EAFNOSUPPORT and the
// sends with EDESTADDRREQ; sending on a closed socket, EBADF.
#pragma once

#include <sys/socket.h>
#include <time.h>

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

#include "reactor/address.hpp"
#include "reactor/buffer.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/socket.hpp"

namespace reactor {

class DatagramSocket;

// One received datagram, valid only during on_datagrams.
struct Datagram {
  std::span<const std::byte> bytes;  // at most max_datagram bytes
  Address source;                    // the sender (for a connected socket: the peer)
  bool truncated = false;            // longer than max_datagram: `bytes` holds its start
  // DatagramOptions::receive_timestamps: when the kernel received it (SO_TIMESTAMPNS), on
  // CLOCK_REALTIME, not the loop's monotonic clock: compare it with clock_gettime(CLOCK_REALTIME)
  // (or a sender's wall-clock stamp), never with now(). Zero when the option is off.
  timespec timestamp{};
  std::string_view text() const noexcept {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
};

// One datagram to send_batch(). `to` nullptr: the connected peer. `to` is read during the call.
struct OutgoingDatagram {
  std::span<const std::byte> bytes;
  const Address* to = nullptr;
};

struct DatagramHandlers {
  Function<void(DatagramSocket&, std::span<const Datagram>)> on_datagrams;
  Function<void(DatagramSocket&, std::error_code)> on_error;
};

struct DatagramOptions {
  int batch = 32;                          // datagrams per recvmmsg / sendmmsg (1..1024)
  std::size_t max_datagram = 2048;         // receive buffer per datagram (1..65536)
  int reads_per_event = 4;                 // recvmmsg batches per readiness (fairness)
  std::size_t max_queued_bytes = 1 << 20;  // queued output past which datagrams are dropped
  bool receive_timestamps = false;         // SO_TIMESTAMPNS: Datagram::timestamp (CLOCK_REALTIME)
  // SO_REUSEPORT before bind(): several sockets (one per loop, say) bind one IP address and
  // port, and the kernel spreads the senders over them (by a hash of the source).
  bool reuse_port = false;
};

// Counters of one socket; loop thread only.
struct DatagramStats {
  std::uint64_t received = 0;        // datagrams handed to on_datagrams
  std::uint64_t received_bytes = 0;  // their bytes (as delivered, truncated ones cut)
  std::uint64_t truncated = 0;       // datagrams reported truncated
  std::uint64_t receive_calls = 0;   // recvmmsg calls
  std::uint64_t sent = 0;            // datagrams the kernel took (directly or from the queue)
  std::uint64_t sent_bytes = 0;
  std::uint64_t send_calls = 0;  // sendto and sendmmsg calls
  std::uint64_t queued = 0;      // datagrams that had to wait in the queue
  std::uint64_t dropped = 0;     // datagrams dropped because the queue was full
  std::uint64_t dropped_bytes = 0;
  std::uint64_t send_errors = 0;  // datagrams dropped because their send failed
  std::uint64_t errors = 0;       // reports to on_error
};

class DatagramSocket {
 public:
  // `handlers` must outlive the socket. Nothing is opened until open() or bind().
  DatagramSocket(EventLoop& loop, DatagramHandlers& handlers, const DatagramOptions& options = {});
  // close(); safe from inside this socket's own callback (see above).
  ~DatagramSocket();
  DatagramSocket(const DatagramSocket&) = delete;
  DatagramSocket& operator=(const DatagramSocket&) = delete;

  // An unbound socket of `family` (AF_INET, AF_INET6, AF_UNIX), registered: a sender (UDP picks
  // an ephemeral port at the first send; an unbound Unix sender is unnamed). EISCONN when open.
  std::error_code open(int family);
  // A socket of local's family bound to `local` (port 0: an ephemeral port, see
  // local_address()), registered. Errors: bind's (EADDRINUSE, EACCES, ...), EISCONN when open.
  std::error_code bind(const Address& local);
  // The default peer: send() goes there, and only its datagrams are received. Opens a socket of
  // peer's family first if none is open. Errors: connect's (for Unix, ECONNREFUSED when nobody
  // is bound there).
  std::error_code connect(const Address& peer);
  void close() noexcept;
  bool is_open() const noexcept { return static_cast<bool>(fd_); }

  // To the connected peer. Empty error: sent or queued. Errors: std::errc::no_buffer_space when
  // the queue was full and the datagram dropped; the send's error; EBADF when closed.
  std::error_code send(std::span<const std::byte> bytes);
  std::error_code send(std::string_view bytes) { return send(as_bytes(bytes)); }
  // To `to` (an unconnected socket, or another peer than the connected one where the protocol
  // allows it). Errors as send(), and EDESTADDRREQ for an unspecified Address().
  std::error_code send_to(const Address& to, std::span<const std::byte> bytes);
  std::error_code send_to(const Address& to, std::string_view bytes) {
    return send_to(to, as_bytes(bytes));
  }
  // Every datagram in order, with sendmmsg. Each datagram is sent, queued or dropped on its own;
  // returns the first error (as send_to's), empty when all were sent or queued.
  std::error_code send_batch(std::span<const OutgoingDatagram> datagrams);

  // Multicast (see above).
  std::error_code join_group(const Address& group, unsigned interface_index = 0);
  std::error_code leave_group(const Address& group, unsigned interface_index = 0);
  std::error_code set_multicast_interface(unsigned interface_index);
  std::error_code set_multicast_ttl(int ttl);
  std::error_code set_multicast_loop(bool on);

  std::size_t queued_bytes() const noexcept { return queued_bytes_; }
  std::size_t queued_datagrams() const noexcept { return queue_.size() - queue_head_; }
  const DatagramStats& stats() const noexcept { return stats_; }
  const DatagramOptions& options() const noexcept { return options_; }

  // getsockname, at each call: the bound address (the real port after port 0).
  Result<Address> local_address() const;
  // The connected peer; Address() when not connected.
  const Address& peer() const noexcept { return peer_; }
  int fd() const noexcept { return fd_.get(); }
  EventLoop& loop() const noexcept { return loop_; }

  void set_context(void* context) noexcept { context_ = context; }
  void* context() const noexcept { return context_; }
  template <class T>
  T* context_as() const noexcept {
    return static_cast<T*>(context_);
  }

 private:
  struct Queued {
    Address to;
    bool has_to = false;
    std::size_t size = 0;
  };
  static std::span<const std::byte> as_bytes(std::string_view s) noexcept {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
  }
  void assert_in_loop() const noexcept {
    assert(loop_.in_loop_thread() && "DatagramSocket method called off its loop's thread");
  }
  std::error_code start(Fd fd);
  void on_events(std::uint32_t events);
  // Returns at once when `closed` (on_events' stack flag) turns true in a callback.
  void receive(const bool& closed);
  void flush();
  std::error_code send_one(const Address* to, std::span<const std::byte> bytes);
  std::error_code enqueue(const Address* to, std::span<const std::byte> bytes);
  void update_interest();
  void report(std::error_code ec);
  void reset_receive_header(std::size_t i) noexcept;
  std::error_code membership(const Address& group, unsigned interface_index, bool join);
  // setsockopt at the IP or IPv6 level, by the socket's family: EBADF, EAFNOSUPPORT for Unix.
  std::error_code ip_option(int v4_name, int v6_name, int value);

  EventLoop& loop_;
  DatagramHandlers& handlers_;
  DatagramOptions options_;
  Fd fd_;
  IoId io_id_;
  int family_ = AF_UNSPEC;
  bool writable_armed_ = false;
  // Points to a flag on the stack of on_events() while it runs: close() sets it, so the
  // dispatch that called a callback which closed (or destroyed) the socket stops there.
  bool* closed_flag_ = nullptr;
  Address peer_;
  Address bound_;  // a Unix path to remove on close, else unspecified
  void* context_ = nullptr;

  // Receive side, sized once: batch x max_datagram bytes, and a header, an iovec, a source
  // address and a Datagram per slot.
  std::unique_ptr<std::byte[]> receive_buffer_;
  std::vector<mmsghdr> receive_headers_;
  std::vector<iovec> receive_iov_;
  std::vector<sockaddr_storage> sources_;
  std::vector<Datagram> datagrams_;
  std::vector<cmsghdr> control_;  // receive_timestamps only: one timestamp message per slot
  std::size_t control_slot_ = 0;  // cmsghdr units per slot

  // Send side: the batch arrays for sendmmsg, and the queue (payloads in order in one Buffer).
  std::vector<mmsghdr> send_headers_;
  std::vector<iovec> send_iov_;
  std::vector<Queued> queue_;
  std::size_t queue_head_ = 0;
  std::size_t queued_bytes_ = 0;
  Buffer queue_bytes_;

  DatagramStats stats_;
};

}  // namespace reactor

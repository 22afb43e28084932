// TrafficCounters: byte counters that connections add to as they go (a server's, summed over its
// connections; see Connection's constructor and TcpServer::stats()).
//
// Threads. Single writer (the loop thread of the connections that add to it), readable from
// any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace reactor {

struct TrafficCounters {
  std::atomic<std::uint64_t> bytes_in{0};
  std::atomic<std::uint64_t> bytes_out{0};
  void add_in(std::uint64_t n) noexcept { bump(bytes_in, n); }
  void add_out(std::uint64_t n) noexcept { bump(bytes_out, n); }

 private:
  // One writer: a plain load and store, no locked read-modify-write on the hot path.
  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

}  // namespace reactor

// reactor-load udp: verifying datagram echo over connected reactor::DatagramSockets, closed loop
// (--depth D: D datagrams in flight per socket) or open loop (--rate R: datagram k due at
// start + k/R on socket k mod N of its worker, latency from its due time, as rate.cpp).
//
// A datagram is --size bytes: its socket's sequence number (8 bytes, in send order from 0), a
// check word derived from the sequence number and the socket (8 bytes), then a payload that is
// the Pattern at an offset derived from both. So the report tells apart:
// - received: datagrams echoed for the first time, intact (their latency is recorded);
// - lost: not echoed within --timeout (from the send time; with --rate from the due time), or
//   still unanswered when its socket had sent a window more since (too old to track; the window
//   is 1024 x --depth, or with --rate twice what a socket sends in --timeout, within 4096..2^20
//   sequence numbers, 24 bytes each per socket);
// - duplicated: an echo of a sequence number already received;
// - reordered: received after one with a higher sequence number on the same socket;
// - late: echoed after it was counted lost (or too old to track); not counted received;
// - corrupt: the wrong length, a check word that does not match its sequence number, a sequence
//   number never sent, or a wrong payload byte. A datagram whose header is intact but whose
//   payload is wrong is corrupt, not lost (its sequence number is settled); counted as the
//   "wrong bytes" error kind;
// - in_flight: sent and neither received nor lost when the run ended.
// Every datagram sent ends as received, lost, corrupt (header intact) or in_flight.
// With --depth, a lost or corrupt datagram's place is refilled at once, so a loss never stalls
// the run.
//
// Exit status: 1 when a datagram came back corrupt, a socket reported an error (ICMP port
// unreachable: "connection refused", which also ends the run at once) or nothing was echoed;
// loss, duplication and reordering are what UDP may do, and are reported but do not fail the
// run. 0 otherwise, 2 for usage errors.
#include <sys/prctl.h>

#include <cmath>
#include <span>

#include <reactor/datagram_socket.hpp>

#include "core.hpp"

namespace load {
namespace {

constexpr std::size_t kHeader = 16;  // sequence number, check word

// The sequence numbers a socket tracks (a power of two): see the header comment.
std::uint64_t window(const Settings& settings) {
  const double wanted = settings.rate > 0
                            ? 2 * settings.rate / settings.connections * settings.timeout_s
                            : 1024.0 * settings.depth;
  std::uint64_t w = 4096;
  while (w < (1u << 20) && static_cast<double>(w) < wanted)
    w *= 2;
  return w;
}

std::uint64_t check_word(std::uint64_t seq, std::uint64_t seed) noexcept {
  // splitmix64's finaliser: every bit of the input changes about half the output's.
  std::uint64_t z = seq + seed * 0x9E3779B97F4A7C15ULL + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class UdpClient final : public Client {
 public:
  UdpClient(Worker& worker, std::uint64_t seed)
      : Client(worker, seed),
        size_(static_cast<std::size_t>(worker.run.settings().size)),
        depth_(worker.run.settings().rate > 0 ? 0 : worker.run.settings().depth),
        timeout_(std::chrono::duration_cast<Duration>(
            std::chrono::duration<double>(worker.run.settings().timeout_s))),
        socket_(worker.loop, handlers_, socket_options(size_)),
        ring_(window(worker.run.settings())),
        mask_(ring_.size() - 1),
        out_(size_) {
    handlers_.on_datagrams = [this](reactor::DatagramSocket&,
                                    std::span<const reactor::Datagram> datagrams) {
      on_datagrams(datagrams);
    };
    handlers_.on_error = [this](reactor::DatagramSocket&, std::error_code ec) {
      socket_error(ec, "receiving");
    };
  }

  void start() override {
    if (auto ec = socket_.connect(settings().target)) {
      socket_error(ec, "connecting", true);
      return;
    }
    // Expire what timed out a few times per timeout, refilling --depth's places.
    const Duration tick = std::clamp<Duration>(timeout_ / 4, 1ms, 100ms);
    sweep_ = worker_.loop.every(tick, [this] { expire(Clock::now()); });
    if (depth_ > 0) refill(Clock::now());
  }

  // --rate: the schedule hands this socket a datagram due at `due`.
  void send_due(TimePoint due) {
    if (socket_.is_open()) send_one(due);
  }

  void stop() override {
    if (sweep_) worker_.loop.cancel(sweep_);
    sweep_ = {};
    worker_.in_flight += in_flight_;
    socket_.close();
    Client::stop();
  }

  // Streams only: a UDP client has no connection.
  void on_data(reactor::Buffer&) override {}
  void on_close(reactor::CloseReason, std::error_code) override {}

 private:
  enum class Fate : std::uint8_t { in_flight, settled, lost };
  struct Entry {
    std::uint64_t seq = ~std::uint64_t{0};
    TimePoint time{};  // sent (--depth) or due (--rate)
    Fate fate = Fate::settled;
  };

  static reactor::DatagramOptions socket_options(std::size_t size) {
    reactor::DatagramOptions options;
    options.max_datagram = size;  // a longer echo arrives truncated: corrupt
    return options;
  }

  void on_connected() override {}
  void on_connect_failed(std::error_code) override {}

  Entry& entry(std::uint64_t seq) noexcept { return ring_[seq & mask_]; }

  void send_one(TimePoint stamp) {
    const std::uint64_t seq = next_seq_;
    const std::uint64_t check = check_word(seq, seed_);
    std::memcpy(out_.data(), &seq, sizeof seq);
    std::memcpy(out_.data() + 8, &check, sizeof check);
    std::memcpy(out_.data() + kHeader, pattern().at(seq + seed_), size_ - kHeader);
    if (auto ec = socket_.send(std::span<const std::byte>(out_))) {
      socket_error(ec, "sending");
      return;
    }
    worker_.sent.add(1);
    // The place of seq - window: still unanswered after a window of later sends, it is lost.
    Entry& e = entry(seq);
    if (e.fate == Fate::in_flight) lose(e);
    if (seq >= ring_.size()) oldest_ = std::max(oldest_, seq - ring_.size() + 1);
    e = {seq, stamp, Fate::in_flight};
    ++next_seq_;
    ++in_flight_;
  }

  // --depth: back to D in flight.
  void refill(TimePoint now) {
    while (socket_.is_open() && in_flight_ < static_cast<std::uint64_t>(depth_)) {
      const std::uint64_t before = next_seq_;
      send_one(now);
      if (next_seq_ == before) return;  // the send failed: counted; the sweep tries again
    }
  }

  void lose(Entry& e) {
    e.fate = Fate::lost;
    --in_flight_;
    ++worker_.lost;
  }

  void expire(TimePoint now) {
    while (oldest_ < next_seq_) {
      Entry& e = entry(oldest_);
      if (e.seq == oldest_ && e.fate == Fate::in_flight) {
        if (now - e.time < timeout_) break;
        lose(e);
      }
      ++oldest_;
    }
    if (depth_ > 0) refill(now);
  }

  void on_datagrams(std::span<const reactor::Datagram> datagrams) {
    if (!worker_.running) return;
    const TimePoint now = Clock::now();
    std::uint64_t received = 0;
    for (const reactor::Datagram& d : datagrams)
      received += verify(d, now) ? 1 : 0;
    worker_.messages.add(received);
    worker_.bytes.add(received * size_);
    if (depth_ > 0) refill(now);
  }

  // Settles one echo; true when it was received (first time, intact, in flight).
  bool verify(const reactor::Datagram& d, TimePoint now) {
    if (d.truncated || d.bytes.size() != size_) {
      return corrupt("a datagram of " + std::to_string(d.bytes.size()) + (d.truncated ? "+" : "") +
                     " bytes, expected " + std::to_string(size_));
    }
    std::uint64_t seq = 0, check = 0;
    std::memcpy(&seq, d.bytes.data(), sizeof seq);
    std::memcpy(&check, d.bytes.data() + 8, sizeof check);
    if (check != check_word(seq, seed_)) return corrupt("a header that matches no datagram sent");
    if (seq >= next_seq_) return corrupt("sequence number " + std::to_string(seq) + ", never sent");
    Entry& e = entry(seq);
    if (e.seq != seq) {  // older than the window: sent, and long settled
      ++worker_.late;
      return false;
    }
    const char* expected = pattern().at(seq + seed_);
    const auto* got = reinterpret_cast<const char*>(d.bytes.data()) + kHeader;
    if (std::memcmp(got, expected, size_ - kHeader) != 0) {
      std::size_t i = 0;
      while (got[i] == expected[i])
        ++i;
      char detail[160];
      std::snprintf(detail, sizeof detail, "datagram %llu byte %zu: expected 0x%02x, got 0x%02x",
                    static_cast<unsigned long long>(seq), kHeader + i,
                    static_cast<unsigned char>(expected[i]), static_cast<unsigned char>(got[i]));
      if (e.fate == Fate::in_flight) {  // settled as corrupt, not lost
        e.fate = Fate::settled;
        --in_flight_;
      }
      return corrupt(detail);
    }
    switch (e.fate) {
      case Fate::settled:
        ++worker_.duplicated;
        return false;
      case Fate::lost:
        e.fate = Fate::settled;  // a second copy is a duplicate
        ++worker_.late;
        return false;
      case Fate::in_flight:
        break;
    }
    e.fate = Fate::settled;
    --in_flight_;
    if (seq < highest_) ++worker_.reordered;
    highest_ = std::max(highest_, seq);
    worker_.latency.record(
        static_cast<std::uint64_t>(std::max(Duration::zero(), now - e.time).count()));
    return true;
  }

  bool corrupt(const std::string& detail) {
    worker_.error(ErrorKind::wrong_bytes, detail);
    return false;
  }

  // A send error or an ICMP error reported by a receive, counted by kind. Refused (nobody
  // listens there) or `fatal` (connect failed): this socket stops; refused also ends the run.
  void socket_error(std::error_code ec, const char* doing, bool fatal = false) {
    const std::string target = "udp:" + settings().target.to_string();
    worker_.error(kind_of(ec),
                  std::string(doing) + " " + target + ": " + lowercase_first(ec.message()));
    if (fatal || ec == std::errc::connection_refused) {
      if (ec == std::errc::connection_refused) {
        worker_.run.end_early("connection refused by " + target +
                              " (ICMP port unreachable): is a UDP echo server listening there?");
      }
      if (sweep_) worker_.loop.cancel(sweep_);
      sweep_ = {};
      worker_.in_flight += in_flight_;
      in_flight_ = 0;
      socket_.close();
      worker_.client_lost();
    }
  }

  std::size_t size_;
  int depth_;  // 0: --rate
  Duration timeout_;
  reactor::DatagramHandlers handlers_;  // before socket_: it must outlive it
  reactor::DatagramSocket socket_;
  std::vector<Entry> ring_;  // sequence number seq at ring_[seq & mask_]
  std::uint64_t mask_;
  std::vector<std::byte> out_;
  reactor::TimerId sweep_;
  std::uint64_t next_seq_ = 0;   // sent: 0..next_seq_-1
  std::uint64_t oldest_ = 0;     // every datagram before it is settled or lost
  std::uint64_t in_flight_ = 0;  // sent, neither settled nor lost
  std::uint64_t highest_ = 0;    // the highest sequence number received
};

// --rate: the timetable of one worker's sockets: datagram k of the worker is due at
// start + k/R (R: --rate divided by the workers) and goes to socket k mod N. One timer at a
// time; a late loop catches up, it never skips (see rate.cpp).
class UdpSchedule final : public Schedule {
 public:
  UdpSchedule(Worker& worker, double rate) : worker_(worker), rate_(rate) {}
  void add(UdpClient* client) { clients_.push_back(client); }

  void start() override {
    (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);  // see rate.cpp
    start_ = Clock::now();
    tick();
  }

  void stop() override {
    if (timer_) worker_.loop.cancel(timer_);
    timer_ = {};
    worker_.due = next_;
  }

 private:
  TimePoint due(std::uint64_t k) const noexcept {
    return start_ +
           Duration(static_cast<Duration::rep>(std::floor(static_cast<double>(k) * 1e9 / rate_)));
  }

  void tick() {
    timer_ = {};
    const TimePoint now = Clock::now();
    while (due(next_) <= now) {
      clients_[next_ % clients_.size()]->send_due(due(next_));
      ++next_;
    }
    timer_ = worker_.loop.after(due(next_) - now, [this] { tick(); });
  }

  Worker& worker_;
  double rate_;
  std::vector<UdpClient*> clients_;
  TimePoint start_{};
  std::uint64_t next_ = 0;
  reactor::TimerId timer_;
};

}  // namespace

void make_udp_clients(Worker& worker, std::uint64_t first, int count) {
  const Settings& settings = worker.run.settings();
  std::unique_ptr<UdpSchedule> schedule;
  if (settings.rate > 0)
    schedule = std::make_unique<UdpSchedule>(worker, settings.rate / settings.threads);
  for (int i = 0; i < count; ++i) {
    auto client = std::make_unique<UdpClient>(worker, (first + static_cast<std::uint64_t>(i)) * 37);
    if (schedule) schedule->add(client.get());
    worker.clients.push_back(std::move(client));
  }
  if (schedule) worker.schedule = std::move(schedule);
}

}  // namespace load

// reactor-load churn: connect, echo a few messages of random size, close or reset; again.
#include "core.hpp"

namespace load {
namespace {

// churn: messages per connection are 0..kChurnMessages; one in kChurnResetInFlight messages is
// followed at once by a reset, with the echo still on its way.
constexpr std::uint64_t kChurnMessages = 8;
constexpr std::uint64_t kChurnResetInFlight = 16;
// A connect that failed before anything was in flight (EMFILE, EADDRNOTAVAIL) is retried after
// this pause: at once would spin.
constexpr Duration kRetryPause = 10ms;

// splitmix64: small, fast, and the same sequence on every platform (unlike <random>'s
// distributions), so a --seed reproduces a churn run's choices.
class Random {
 public:
  explicit Random(std::uint64_t seed) noexcept : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0 (the modulo bias is irrelevant here).
  std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }

 private:
  std::uint64_t state_;
};

// churn: connect, echo a few messages of random size, close or reset at random; again.
class ChurnClient final : public StreamClient {
 public:
  ChurnClient(Worker& worker, std::uint64_t index)
      : StreamClient(worker, 0), random_(worker.run.settings().seed * 0x100000001b3ULL + index) {}

  void start() override {
    ending_ = false;
    if (auto ec = connect()) {
      worker_.error(kind_of(ec), "connecting: " + lowercase_first(ec.message()));
      later(kRetryPause, [this] { start(); });
    }
  }

  void on_data(reactor::Buffer& input) override {
    if (!receive(input)) return;
    if (!worker_.running) return;
    worker_.messages.add(1);
    --messages_left_;
    next_step();
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    // Ours: an abort (reason aborted), or a graceful close that completed (local_close; with
    // ec timed_out when the server never sent its EOF within the linger).
    const bool ours = reason == reactor::CloseReason::aborted ||
                      (ending_ && reason == reactor::CloseReason::local_close && !ec);
    if (!ours) unexpected_close(reason, ec);
    start();
  }

 private:
  void on_connected() override {
    worker_.connects.add(1);
    new_stream(random_.below(kPeriod));
    messages_left_ = random_.below(kChurnMessages + 1);
    next_step();
  }

  void on_connect_failed(std::error_code ec) override {
    if (connect_failed(ec) && worker_.running) start();
  }

  // Called with nothing in flight: the next message, or the end of this connection.
  void next_step() {
    if (messages_left_ == 0) {
      ending_ = true;
      if (random_.below(2) == 0) {
        worker_.closes.add(1);
        conn_->close();  // flush, FIN, wait for the server's EOF: on_close(local_close)
      } else {
        worker_.resets.add(1);
        conn_->abort();  // RST; on_close follows from the loop and reconnects
      }
      return;
    }
    // Sizes spread over the orders of magnitude: 1 B..64 KiB, as many tiny as large.
    const std::uint64_t bits = random_.below(17);
    const auto size = static_cast<std::size_t>(1 + random_.below(std::uint64_t{1} << bits));
    if (!send_message(std::min(size, kChunk))) return;  // failing already: on_close follows
    if (random_.below(kChurnResetInFlight) == 0) {
      ending_ = true;
      worker_.resets.add(1);
      conn_->abort();  // the echo is still on its way: the server's send meets a reset
    }
  }

  Random random_;
  std::uint64_t messages_left_ = 0;
  bool ending_ = false;  // this client closed or reset the connection
};

}  // namespace

std::unique_ptr<Client> make_churn_client(Worker& worker, std::uint64_t index) {
  return std::make_unique<ChurnClient>(worker, index);
}

}  // namespace load

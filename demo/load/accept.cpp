// reactor-load accept: connect, echo one byte, close with RST; again.
#include "core.hpp"

namespace load {
namespace {

// accept: connect, send one byte, receive it, close with RST; again.
class AcceptClient final : public Client {
 public:
  using Client::Client;

  void start() override {
    started_ = Clock::now();
    aborting_ = false;
    if (auto ec = connect()) {
      // Nothing in flight (EMFILE, ...): trying again at once would only spin.
      worker_.error(kind_of(ec), lowercase_first(ec.message()));
    }
  }

  void on_data(reactor::Buffer& input) override {
    const std::string_view got = input.view();
    const char expected = *pattern().at(seed_ + count_);
    if (got.size() != 1 || got[0] != expected) {
      if (got.size() > 1) {
        worker_.error(ErrorKind::wrong_bytes, "received more bytes than were sent");
      } else {
        wrong_bytes(count_, got);
      }
    } else if (worker_.running) {
      worker_.latency.record(static_cast<std::uint64_t>((Clock::now() - started_).count()));
      worker_.messages.add(1);
      worker_.bytes.add(1);
    }
    ++count_;
    input.consume(got.size());
    // RST instead of FIN: the side that closes first keeps TIME_WAIT for a minute, and
    // thousands of them per second would exhaust the loopback ports.
    aborting_ = true;
    conn_->abort();
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    if (!aborting_) {
      std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
      worker_.error(kind_of(reason, ec), detail + " before the echo");
    }
    start();
  }

 private:
  void on_connected() override {
    // Should the send fail, the connection is already failing: on_close reports it.
    (void)conn_->send(std::string_view(pattern().at(seed_ + count_), 1));
  }

  void on_connect_failed(std::error_code ec) override {
    if (connect_failed(ec) && worker_.running) start();
  }

  TimePoint started_{};
  std::uint64_t count_ = 0;  // connections made: picks each one's byte
  bool aborting_ = false;
};

}  // namespace

std::unique_ptr<Client> make_accept_client(Worker& worker, std::uint64_t seed) {
  return std::make_unique<AcceptClient>(worker, seed);
}

}  // namespace load

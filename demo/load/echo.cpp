// reactor-load echo: closed-loop echo load, --depth messages in flight per connection.
#include "core.hpp"

namespace load {
namespace {

// echo: one connection, `depth` messages of `size` bytes in flight, every byte verified. Also
// rate's --bulk connections (--bulk-size, depth 1).
class EchoClient final : public Client {
 public:
  EchoClient(Worker& worker, std::uint64_t seed, std::int64_t size, int depth)
      : Client(worker, seed),
        size_(static_cast<std::uint64_t>(size)),
        send_times_(static_cast<std::size_t>(depth)) {}

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void stop() override {
    // A connect still pending when the run ends never got its chance: count it.
    if (connector_.pending())
      worker_.error(ErrorKind::connect_timeout, "still connecting at the end");
    Client::stop();
  }

  void on_data(reactor::Buffer& input) override {
    const std::string_view got = input.view();
    if (!verify(got, recv_offset_, send_offset_)) return;
    recv_offset_ += got.size();
    input.consume(got.size());
    if (!worker_.running) return;
    worker_.bytes.add(got.size());
    const std::uint64_t size = size_;
    const TimePoint now = Clock::now();
    std::uint64_t done = 0;
    while (recv_offset_ >= (completed_ + 1) * size) {
      const TimePoint sent = send_times_[completed_ % send_times_.size()];
      worker_.latency.record(static_cast<std::uint64_t>((now - sent).count()));
      ++completed_;
      ++done;
    }
    worker_.messages.add(done);
    send_messages(done, now);
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();  // safe inside its own callback: destroyed after the dispatch round
    if (!worker_.running) return;
    if (reason != reactor::CloseReason::aborted) {  // aborted: we did it, after counting why
      std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
      worker_.error(kind_of(reason, ec), detail);
    }
    worker_.client_lost();
  }

 private:
  void on_connected() override { send_messages(send_times_.size(), Clock::now()); }

  void on_connect_failed(std::error_code ec) override {
    connect_failed(ec);
    worker_.client_lost();
  }

  // Sends `count` messages in one write: the replies that one read completed are answered
  // together, so the load generator spends one send per read rather than one per message and
  // stays cheaper than the server it measures.
  void send_messages(std::uint64_t count, TimePoint now) {
    for (std::uint64_t i = 0; i < count; ++i)
      send_times_[(sent_ + i) % send_times_.size()] = now;
    sent_ += count;
    auto left = count * size_;
    while (left > 0) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
      if (!conn_->send(std::string_view(pattern().at(send_offset_ + seed_), n))) return;
      send_offset_ += n;
      left -= n;
    }
  }

  std::uint64_t size_;                 // message size
  std::vector<TimePoint> send_times_;  // ring: message k was sent at send_times_[k % depth]
  std::uint64_t sent_ = 0;             // messages sent
  std::uint64_t completed_ = 0;        // messages fully echoed
  std::uint64_t send_offset_ = 0;      // stream bytes sent
  std::uint64_t recv_offset_ = 0;      // stream bytes received and verified
};

}  // namespace

std::unique_ptr<Client> make_echo_client(Worker& worker, std::uint64_t seed) {
  const Settings& settings = worker.run.settings();
  return std::make_unique<EchoClient>(worker, seed, settings.size, settings.depth);
}

std::unique_ptr<Client> make_bulk_client(Worker& worker, std::uint64_t seed) {
  return std::make_unique<EchoClient>(worker, seed, worker.run.settings().bulk_size, 1);
}

}  // namespace load

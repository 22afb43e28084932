// reactor-load slowread: clients that send without pause and never read.
#include "core.hpp"

namespace load {
namespace {

// slowread: chunks written per callback before yielding to the other clients.
constexpr int kFillChunks = 64;

// slowread: send without pause, never read.
class SlowReadClient final : public Client {
 public:
  using Client::Client;

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void stop() override {
    if (connector_.pending())
      worker_.error(ErrorKind::connect_timeout, "still connecting at the end");
    count_sent();
    Client::stop();
  }

  void on_data(reactor::Buffer&) override {}  // reading is paused: never called

  void on_drained() override { fill(); }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
    worker_.error(kind_of(reason, ec), detail);
    worker_.client_lost();
  }

 private:
  void on_connected() override {
    worker_.connects.add(1);
    conn_->pause_reading();  // never read: the server's replies pile up on its side
    fill();
  }

  void on_connect_failed(std::error_code ec) override {
    connect_failed(ec);
    worker_.client_lost();
  }

  // Writes until the socket takes no more (then the rest of a chunk waits in the connection's
  // queue, and on_drained comes back here), or until kFillChunks were written: then the others
  // get their turn and this one goes on at the next iteration.
  void fill() {
    if (!worker_.running) return;
    for (int i = 0; i < kFillChunks; ++i) {
      if (!conn_ || conn_->queued_bytes() > 0) break;
      if (!conn_->send(std::string_view(pattern().at(offset_ + seed_), kChunk))) break;
      offset_ += kChunk;
    }
    count_sent();
    if (conn_ && conn_->queued_bytes() == 0 && !timer_) later(Duration::zero(), [this] { fill(); });
  }

  // Adds what the kernel took since the last call (queued bytes count once written).
  void count_sent() {
    if (!conn_) return;
    const std::uint64_t sent = conn_->bytes_sent();
    worker_.bytes.add(sent - counted_);
    counted_ = sent;
  }

  std::uint64_t offset_ = 0;   // stream bytes handed to the connection
  std::uint64_t counted_ = 0;  // of those, written and counted in worker_.bytes
};

}  // namespace

std::unique_ptr<Client> make_slowread_client(Worker& worker, std::uint64_t seed) {
  return std::make_unique<SlowReadClient>(worker, seed);
}

}  // namespace load

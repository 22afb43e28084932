// reactor-load idle: hold connections idle (or pinging), then each echoes once.
#include "core.hpp"

namespace load {
namespace {

// idle: connect, stay silent (or ping now and then), echo once at the end of the hold.
class IdleClient final : public StreamClient {
 public:
  using StreamClient::StreamClient;

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void on_data(reactor::Buffer& input) override {
    if (!receive(input)) return;  // more to come, or aborted: on_close does the rest
    if (worker_.running) worker_.messages.add(1);
    if (final_sent_) {
      round_done(true);
    } else if (worker_.echo_phase) {
      send_final();  // the round began while a ping was in flight
    }
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    if (reason != reactor::CloseReason::aborted) unexpected_close(reason, ec);
    if (worker_.echo_phase) {
      round_done(false);
    } else if (settings().retry_s > 0) {
      later(seconds(settings().retry_s), [this] { start(); });
    } else {
      worker_.client_lost();
    }
  }

  void ping() override {
    if (conn_ && !busy()) (void)send_message(static_cast<std::size_t>(settings().size));
  }

  void echo_once() override {
    if (timer_) worker_.loop.cancel(timer_);  // a reconnect still waiting: too late now
    timer_ = {};
    connector_.cancel();
    if (!conn_) {
      round_done(false);
      return;
    }
    ++worker_.held;
    if (!busy()) send_final();
  }

 private:
  static Duration seconds(double s) {
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
  }

  void on_connected() override {
    worker_.connects.add(1);
    new_stream(seed_);
    settle();
  }

  void on_connect_failed(std::error_code ec) override {
    const bool again = connect_failed(ec) && settings().retry_s > 0 && worker_.running;
    if (again) later(seconds(settings().retry_s), [this] { start(); });
    settle();
    if (!again) worker_.client_lost();  // gone for good
  }

  // The first connect's outcome lets the worker start the next client.
  void settle() {
    if (settled_) return;
    settled_ = true;
    worker_.client_settled();
  }

  void send_final() {
    final_sent_ = true;
    if (!send_message(static_cast<std::size_t>(settings().size))) round_done(false);
  }

  void round_done(bool echoed) {
    if (done_ || !worker_.echo_phase) return;
    done_ = true;
    if (echoed) ++worker_.echoed;
    worker_.client_echoed();
  }

  bool settled_ = false;
  bool final_sent_ = false;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<Client> make_idle_client(Worker& worker, std::uint64_t seed) {
  return std::make_unique<IdleClient>(worker, seed);
}

}  // namespace load

// reactor-load rate: open-loop probes at a fixed offered rate, latency from each message's due
// time (the correction wrk2 makes for coordinated omission).
//
// Message k of the run is due at start + k/R and goes to probe connection k mod N, so each
// connection carries every N-th message; when its previous message is still in flight the new
// one is pipelined behind it (an open-loop client never waits for the server). Its latency is
// measured from when it was due, not from when it was sent: a server that stalls, or a client
// that sends late, shows in every message that waited, not only in the one in flight. The
// client's own lateness is counted apart (late_sends: sent more than kLateSend after due), so it
// is never silently blamed on the server.
//
// The schedule starts when every probe's connect has settled (message 0 is due then) and lasts
// --duration; it holds ceil(R x duration) messages. Without --spin the loop sleeps until the next
// message is due (with the thread's timer slack set to 1 ns: the default 50 us would make most
// sends late); with --spin it busy-polls and never sleeps.
#include <sys/prctl.h>

#include <cmath>

#include "core.hpp"

namespace load {
namespace {

class RateSchedule;

// One probe connection: sends the messages the schedule hands it, verifies every echoed byte,
// records each completed message's latency from its due time.
class RateClient final : public Client {
 public:
  RateClient(Worker& worker, RateSchedule& schedule, std::uint64_t index, std::uint64_t count)
      : Client(worker, index * 37), schedule_(schedule), index_(index), count_(count) {}

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void stop() override {
    if (connector_.pending())
      worker_.error(ErrorKind::connect_timeout, "still connecting at the end");
    Client::stop();
  }

  // This connection's next message is due (now or earlier): send it. The schedule starts once
  // every connect settled, so a probe is open or gone; one that is gone drops it (the report
  // then shows sent < due).
  void send_due() {
    if (state_ == State::open) send_one();
  }

  void on_data(reactor::Buffer& input) override;

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    state_ = State::gone;
    if (!worker_.running) return;
    if (reason != reactor::CloseReason::aborted) {  // aborted: we did it, after counting why
      std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
      worker_.error(kind_of(reason, ec), detail);
    }
    worker_.client_lost();
  }

 private:
  enum class State { connecting, open, gone };  // gone: failed, lost or stopped

  void on_connected() override;
  void on_connect_failed(std::error_code ec) override;
  // The due time of this connection's j-th message: message index_ + j * count_ of the run.
  TimePoint due(std::uint64_t j) const noexcept;
  void send_one();

  RateSchedule& schedule_;
  std::uint64_t index_;  // this connection's place among the probes
  std::uint64_t count_;  // probes in all (N)
  State state_ = State::connecting;
  std::uint64_t sent_ = 0;       // messages sent
  std::uint64_t completed_ = 0;  // messages fully echoed
  std::uint64_t send_offset_ = 0;
  std::uint64_t recv_offset_ = 0;
};

// The timetable: one timer at a time, set for the next message's due time; when it fires,
// every message due by then is handed to its connection (a late loop catches up, it never skips:
// skipping is the coordinated omission this mode exists to avoid).
class RateSchedule final : public Schedule {
 public:
  RateSchedule(Worker& worker, double rate)
      : worker_(worker),
        rate_(rate),
        length_(std::chrono::duration_cast<Duration>(
            std::chrono::duration<double>(worker.run.settings().duration_s))) {}

  void add(RateClient* probe) { probes_.push_back(probe); }

  void start() override {
    // Only this thread's sleeps: a timer here wakes within a microsecond or so, not 50 us.
    if (!worker_.run.settings().spin) (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  }

  // A probe's first connect completed or failed; the schedule starts with the last of them.
  void probe_settled() {
    if (++settled_ < probes_.size() || started_) return;
    started_ = true;
    start_ = Clock::now();
    worker_.run.schedule_started(start_);
    tick();
  }

  void stop() override {
    if (timer_) worker_.loop.cancel(timer_);
    timer_ = {};
    // Hand out what fell due since the last tick (the stop task may run before a timer due in
    // the same iteration), so that every message due before the end was offered.
    if (started_) send_due_until(Clock::now());
    worker_.due = next_;
  }

  // The due time of message k of the run: k/R seconds after the start, rounded down to the
  // nanosecond. k x 1e9 / R, not k x (1e9 / R): exact whenever k/R is a whole number of
  // nanoseconds, so that a schedule of R x duration messages has exactly that many.
  TimePoint due(std::uint64_t k) const noexcept {
    return start_ +
           Duration(static_cast<Duration::rep>(std::floor(static_cast<double>(k) * 1e9 / rate_)));
  }

 private:
  bool in_schedule(std::uint64_t k) const noexcept { return due(k) < start_ + length_; }

  void send_due_until(TimePoint now) {
    while (in_schedule(next_) && due(next_) <= now) {
      probes_[next_ % probes_.size()]->send_due();
      ++next_;
    }
  }

  void tick() {
    timer_ = {};
    send_due_until(Clock::now());
    if (!in_schedule(next_)) return;  // the whole schedule was offered
    timer_ = worker_.loop.after(due(next_) - Clock::now(), [this] { tick(); });
  }

  Worker& worker_;
  double rate_;  // messages per second
  Duration length_;
  std::vector<RateClient*> probes_;
  std::size_t settled_ = 0;
  bool started_ = false;
  TimePoint start_{};
  std::uint64_t next_ = 0;  // the next message to hand out: 0..next_-1 were
  reactor::TimerId timer_;
};

TimePoint RateClient::due(std::uint64_t j) const noexcept {
  return schedule_.due(index_ + j * count_);
}

void RateClient::send_one() {
  const auto size = static_cast<std::size_t>(settings().size);
  const TimePoint now = Clock::now();
  if (now - due(sent_) > kLateSend) worker_.late_sends.add(1);
  ++sent_;
  worker_.sent.add(1);
  const std::uint64_t offset = send_offset_;
  send_offset_ += size;
  // Should the send fail, the connection is failing already: on_close reports it.
  (void)conn_->send(std::string_view(pattern().at(offset + seed_), size));
}

void RateClient::on_connected() {
  state_ = State::open;
  schedule_.probe_settled();
}

void RateClient::on_connect_failed(std::error_code ec) {
  state_ = State::gone;
  connect_failed(ec);
  worker_.client_lost();
  schedule_.probe_settled();
}

void RateClient::on_data(reactor::Buffer& input) {
  const std::string_view got = input.view();
  if (!verify(got, recv_offset_, send_offset_)) return;
  recv_offset_ += got.size();
  input.consume(got.size());
  if (!worker_.running) return;
  worker_.bytes.add(got.size());
  const auto size = static_cast<std::uint64_t>(settings().size);
  const TimePoint now = Clock::now();
  std::uint64_t done = 0;
  while (recv_offset_ >= (completed_ + 1) * size) {
    // From when it was due, not when it was sent (wrk2's correction).
    const Duration latency = std::max(Duration::zero(), now - due(completed_));
    worker_.latency.record(static_cast<std::uint64_t>(latency.count()));
    ++completed_;
    ++done;
  }
  worker_.messages.add(done);
}

}  // namespace

void make_rate_clients(Worker& worker, int connections) {
  auto schedule = std::make_unique<RateSchedule>(worker, worker.run.settings().rate);
  const auto count = static_cast<std::uint64_t>(connections);
  for (std::uint64_t i = 0; i < count; ++i) {
    auto probe = std::make_unique<RateClient>(worker, *schedule, i, count);
    schedule->add(probe.get());
    worker.clients.push_back(std::move(probe));
  }
  worker.schedule = std::move(schedule);
}

}  // namespace load

// EndOfRound: the connections to flush once the loop's dispatch round is over, together, so that
// a connection read in one round gets one send() for all the replies that round produced, and
// every connection read in the round is answered before the loop waits again.
//
// It is a before-wait hook (EventLoop::on_before_wait): it runs after the round's I/O, timers
// and tasks, before the next wait, and what a flush defers (a close's destruction) keeps that
// wait from blocking. Loop thread only; destroy it on that thread, before the loop.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include <reactor/event_loop.hpp>
#include <reactor/function.hpp>

namespace demo {

template <class Key>
class EndOfRound {
 public:
  // `flush` is called once per key queued this round, in the order queued. Key names a
  // connection in a way that survives its close (an index and a generation, say): a connection
  // may close between its queue() and the flush.
  EndOfRound(reactor::EventLoop& loop, reactor::Function<void(Key)> flush)
      : loop_(loop), flush_(std::move(flush)), hook_(loop.on_before_wait([this] { run(); })) {}
  ~EndOfRound() { loop_.remove_hook(hook_); }
  EndOfRound(const EndOfRound&) = delete;
  EndOfRound& operator=(const EndOfRound&) = delete;

  // The caller queues a connection at most once per round (a flag in its state).
  void queue(Key key) { keys_.push_back(key); }

 private:
  void run() {
    // By index: a flush may close a connection, and its callbacks may queue another.
    for (std::size_t i = 0; i < keys_.size(); ++i)
      flush_(keys_[i]);
    keys_.clear();
  }

  reactor::EventLoop& loop_;
  reactor::Function<void(Key)> flush_;
  std::vector<Key> keys_;  // keeps its capacity: no allocation per round
  reactor::HookId hook_;
};

}  // namespace demo

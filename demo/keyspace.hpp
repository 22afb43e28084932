// Keyspace: the string keys of one shard of the demo key-value server, with their expiry times.
// Plain data, no sockets and no clock of its own: every call that may find an expired key takes
// `now`, so tests drive time by hand.
//
// Contract:
// - One owner thread (the shard's loop); not thread-safe.
// - Expiry is lazy and swept: a key whose time has come is erased when a call looks it up
//   (get, find, exists, erase, ttl, expire), and sweep() erases expired keys nobody asks for.
//   size() counts keys not yet erased, expired or not, as redis-server's DBSIZE does.
// - Allocation: a new key allocates its node and strings; overwriting a value reuses the
//   string's capacity when it fits. Setting an expiry pushes (time, key) onto a heap that may
//   hold stale entries for keys since deleted or re-timed; they are dropped when they may
//   outnumber the others, so the heap stays within a small factor of the keys with an expiry.
// - Views and pointers returned stay valid until the next non-const call.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <reactor/timer_queue.hpp>

namespace demo::kv {

using TimePoint = reactor::TimePoint;
inline constexpr TimePoint kNoExpiry = TimePoint::max();

class Keyspace {
 public:
  // The value of `key`, or nullptr when it does not exist or has expired (then it is erased).
  std::string* find(std::string_view key, TimePoint now);
  // Sets `key` to `value`. `expire_at`: kNoExpiry clears any expiry; `keep_ttl` keeps the old
  // one (SET KEEPTTL, INCR) and ignores `expire_at`. Returns the stored value.
  std::string& set(std::string_view key, std::string_view value, TimePoint expire_at,
                   bool keep_ttl = false);
  // True when it existed (and had not expired).
  bool erase(std::string_view key, TimePoint now);
  bool exists(std::string_view key, TimePoint now) { return find(key, now) != nullptr; }
  // Sets the expiry of an existing key; false when there is none. A time <= now erases it
  // (and still returns true, as EXPIRE with a negative time does).
  bool expire(std::string_view key, TimePoint at, TimePoint now);
  // The remaining time of `key`: -2 ms when it does not exist, -1 ms when it has no expiry.
  std::chrono::milliseconds ttl(std::string_view key, TimePoint now);

  std::size_t size() const noexcept { return map_.size(); }
  std::size_t volatile_keys() const noexcept { return volatile_; }  // keys with an expiry
  void clear();

  // Erases up to `limit` keys whose expiry is <= now, earliest first. Returns how many it erased.
  std::size_t sweep(TimePoint now, std::size_t limit);
  std::size_t heap_size() const noexcept { return heap_.size(); }  // tests: stale entries bound

 private:
  struct Entry {
    std::string value;
    TimePoint expire_at = kNoExpiry;
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  using Map = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;
  struct Due {
    TimePoint at;
    std::string key;
  };

  Map::iterator lookup(std::string_view key, TimePoint now);
  void set_expiry(Map::iterator it, TimePoint at);
  void erase(Map::iterator it);
  void rebuild_heap_if_stale();

  Map map_;
  std::size_t volatile_ = 0;
  std::vector<Due> heap_;  // min-heap on `at`; entries whose key no longer has that time are stale
  std::size_t heap_after_rebuild_ = 0;
};

}  // namespace demo::kv

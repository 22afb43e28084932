#include "demo/keyspace.hpp"

#include <algorithm>

namespace demo::kv {
namespace {

// std::push_heap makes a max-heap: "later" as "less" puts the earliest time on top.
bool later(const auto& a, const auto& b) {
  return a.at > b.at;
}

}  // namespace

Keyspace::Map::iterator Keyspace::lookup(std::string_view key, TimePoint now) {
  auto it = map_.find(key);
  if (it != map_.end() && it->second.expire_at <= now) {
    erase(it);
    return map_.end();
  }
  return it;
}

std::string* Keyspace::find(std::string_view key, TimePoint now) {
  auto it = lookup(key, now);
  return it == map_.end() ? nullptr : &it->second.value;
}

std::string& Keyspace::set(std::string_view key, std::string_view value, TimePoint expire_at,
                           bool keep_ttl) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    it = map_.emplace(std::string(key), Entry{}).first;
  }
  it->second.value.assign(value);
  if (!keep_ttl) set_expiry(it, expire_at);
  return it->second.value;
}

bool Keyspace::erase(std::string_view key, TimePoint now) {
  auto it = lookup(key, now);
  if (it == map_.end()) return false;
  erase(it);
  return true;
}

bool Keyspace::expire(std::string_view key, TimePoint at, TimePoint now) {
  auto it = lookup(key, now);
  if (it == map_.end()) return false;
  if (at <= now) {
    erase(it);
  } else {
    set_expiry(it, at);
  }
  return true;
}

std::chrono::milliseconds Keyspace::ttl(std::string_view key, TimePoint now) {
  auto it = lookup(key, now);
  if (it == map_.end()) return std::chrono::milliseconds(-2);
  if (it->second.expire_at == kNoExpiry) return std::chrono::milliseconds(-1);
  return std::chrono::duration_cast<std::chrono::milliseconds>(it->second.expire_at - now);
}

void Keyspace::clear() {
  map_.clear();
  heap_.clear();
  volatile_ = 0;
  heap_after_rebuild_ = 0;
}

void Keyspace::set_expiry(Map::iterator it, TimePoint at) {
  Entry& entry = it->second;
  if (entry.expire_at == at) return;
  if (entry.expire_at == kNoExpiry) ++volatile_;
  if (at == kNoExpiry) --volatile_;
  entry.expire_at = at;
  if (at == kNoExpiry) return;  // the old heap entry is stale now; sweep drops it
  heap_.push_back({at, it->first});
  std::push_heap(heap_.begin(), heap_.end(), later<Due, Due>);
  rebuild_heap_if_stale();
}

void Keyspace::erase(Map::iterator it) {
  if (it->second.expire_at != kNoExpiry) --volatile_;
  map_.erase(it);
}

// A client that re-times or deletes keys over and over leaves stale entries behind. Dropping
// them when they may outnumber the live ones costs one lookup per entry, paid for by the pushes
// that made them, and keeps the heap within about twice the entries that are not stale.
void Keyspace::rebuild_heap_if_stale() {
  if (heap_.size() <= 2 * std::max(volatile_, heap_after_rebuild_) + 1024) return;
  std::erase_if(heap_, [this](const Due& due) {
    auto it = map_.find(due.key);
    return it == map_.end() || it->second.expire_at != due.at;
  });
  std::make_heap(heap_.begin(), heap_.end(), later<Due, Due>);
  heap_after_rebuild_ = heap_.size();
}

std::size_t Keyspace::sweep(TimePoint now, std::size_t limit) {
  std::size_t erased = 0;
  // Stale entries cost a pop each; bounding pops too keeps one sweep short.
  for (std::size_t pops = 0; !heap_.empty() && heap_.front().at <= now && pops < 4 * limit;
       ++pops) {
    std::pop_heap(heap_.begin(), heap_.end(), later<Due, Due>);
    Due due = std::move(heap_.back());
    heap_.pop_back();
    auto it = map_.find(due.key);
    if (it != map_.end() && it->second.expire_at == due.at) {
      erase(it);
      if (++erased == limit) break;
    }
  }
  return erased;
}

}  // namespace demo::kv

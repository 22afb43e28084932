// Counts the faults libfiu injects into a process, for the fault soak (tests/test_faults.cpp,
// bench/soak.sh faults). libfiu 1.1 keeps no count of its own.
//
// Preloaded beside fiu-run's libraries (LD_PRELOAD), this defines fiu_fail(), which every
// wrapper of fiu_posix_preload.so calls to ask whether to fail: the call comes here first,
// passes to libfiu's, and each "fail" answer is counted by failure point name. At exit the
// counts go to the file named by FIU_COUNT_FILE, one `NAME COUNT` line per point that failed
// and a `total COUNT` line first. A process killed by a signal writes nothing.
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace {

// The names are the preload's string literals: a pointer names a point.
struct Point {
  std::atomic<const char*> name{nullptr};
  std::atomic<unsigned long> failed{0};
};
std::array<Point, 128> points;
std::atomic<unsigned long> total{0};

void count(const char* name) {
  total.fetch_add(1, std::memory_order_relaxed);
  for (Point& p : points) {
    const char* seen = p.name.load(std::memory_order_acquire);
    if (seen == nullptr && p.name.compare_exchange_strong(seen, name, std::memory_order_acq_rel)) {
      seen = name;
    }
    if (seen == name) {
      p.failed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
}

using FiuFail = int (*)(const char*);

}  // namespace

extern "C" int fiu_fail(const char* name) {
  static const FiuFail real = reinterpret_cast<FiuFail>(::dlsym(RTLD_NEXT, "fiu_fail"));
  const int failed = real ? real(name) : 0;
  if (failed) count(name);
  return failed;
}

__attribute__((destructor)) static void write_counts() {
  const char* path = std::getenv("FIU_COUNT_FILE");
  if (!path) return;
  std::FILE* f = std::fopen(path, "w");
  if (!f) return;
  std::fprintf(f, "total %lu\n", total.load());
  for (const Point& p : points) {
    const char* name = p.name.load();
    if (name) std::fprintf(f, "%s %lu\n", name, p.failed.load());
  }
  std::fclose(f);
}

// Counted (and failable) global operator new, for tests of "does not allocate" and of what an
// allocation failure leaves behind.
//
// Include this header in exactly one translation unit of a test executable: it replaces every
// form of the global operator new and delete (replacements must not be inline, and a program has
// one), so the library's allocations come here too. Only the calling thread is counted, and only
// inside a Counting scope, so gtest's own allocations outside that window (and other threads')
// are not. Under ASan the replacements still allocate with malloc and free, which ASan checks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace reactor::test {

struct AllocationCounts {
  std::size_t calls = 0;    // operator new calls on this thread while counting
  std::size_t largest = 0;  // the largest of them, in bytes
  int fail_after = -1;      // >= 0: that many more succeed, then each throws bad_alloc (once)
};

inline thread_local bool counting_allocations = false;
inline thread_local AllocationCounts allocation_counts;

// Counts this thread's allocations from construction to destruction.
class Counting {
 public:
  Counting() noexcept {
    allocation_counts = {};
    counting_allocations = true;
  }
  ~Counting() { counting_allocations = false; }
  Counting(const Counting&) = delete;
  Counting& operator=(const Counting&) = delete;
  std::size_t calls() const noexcept { return allocation_counts.calls; }
  std::size_t largest() const noexcept { return allocation_counts.largest; }
  // Lets `n` more allocations succeed, then fails the next one with std::bad_alloc.
  void fail_after(int n) noexcept { allocation_counts.fail_after = n; }
};

namespace detail {

inline void* counted_alloc(std::size_t n, std::size_t align, bool nothrow) {
  if (counting_allocations) {
    ++allocation_counts.calls;
    if (n > allocation_counts.largest) allocation_counts.largest = n;
    if (allocation_counts.fail_after == 0) {
      allocation_counts.fail_after = -1;
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (allocation_counts.fail_after > 0) --allocation_counts.fail_after;
  }
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n);
  } else {
    n = (n + align - 1) / align * align;  // aligned_alloc wants a multiple of the alignment
    p = std::aligned_alloc(align, n);
  }
  if (!p && !nothrow) throw std::bad_alloc();
  return p;
}

}  // namespace detail
}  // namespace reactor::test

// NOLINTBEGIN: the replaceable global allocation functions, each form.
void* operator new(std::size_t n) {
  return reactor::test::detail::counted_alloc(n, 0, false);
}
void* operator new[](std::size_t n) {
  return reactor::test::detail::counted_alloc(n, 0, false);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return reactor::test::detail::counted_alloc(n, 0, true);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return reactor::test::detail::counted_alloc(n, 0, true);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a) {
  return reactor::test::detail::counted_alloc(n, static_cast<std::size_t>(a), false);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return reactor::test::detail::counted_alloc(n, static_cast<std::size_t>(a), false);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return reactor::test::detail::counted_alloc(n, static_cast<std::size_t>(a), true);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return reactor::test::detail::counted_alloc(n, static_cast<std::size_t>(a), true);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}
// NOLINTEND

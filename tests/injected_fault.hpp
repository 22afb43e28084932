// Injected syscall failures, for the calls the libfiu preload cannot reach (accept4, epoll_*).
//
// The seam is symbol interposition: a test executable that defines a libc function takes every
// call libreactor.so makes to it (the library calls libc through the PLT). Include this header
// in exactly one translation unit of a test executable, then define the interposer there with
// REACTOR_INJECTABLE (below); each one passes through to the real function unless its
// InjectedFault is armed. No cost to the library: nothing in reactor/ knows about it.
#pragma once

#include <dlfcn.h>

#include <atomic>
#include <cerrno>

namespace reactor::test {

// Fails the next `times` calls (-1: every call until disarmed) with `err`.
struct InjectedFault {
  std::atomic<int> err{0};
  std::atomic<int> remaining{0};
  std::atomic<int> injected{0};  // calls failed so far

  void arm(int error, int times = 1) noexcept {
    injected.store(0);
    err.store(error);
    remaining.store(times);
  }
  void disarm() noexcept { remaining.store(0); }
  // The errno to fail this call with, or 0 to pass through.
  int take() noexcept {
    int r = remaining.load();
    while (r != 0) {
      if (r < 0 || remaining.compare_exchange_weak(r, r - 1)) {
        injected.fetch_add(1);
        return err.load();
      }
    }
    return 0;
  }
};

template <class Fn>
Fn real_function(const char* name) noexcept {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

}  // namespace reactor::test

// Defines the libc function NAME (returning int, or TYPE) with the parameter list PARAMS, failing
// with FAULT's errno (returning -1) when armed and otherwise forwarding ARGS to the real one:
//   reactor::test::InjectedFault accept_fault;
//   REACTOR_INJECTABLE(accept_fault, accept4, (int fd, sockaddr* a, socklen_t* l, int f),
//                      (fd, a, l, f))
//   REACTOR_INJECTABLE_RETURNING(read_fault, ssize_t, recv, (int fd, void* b, size_t n, int f),
//                                (fd, b, n, f))
#define REACTOR_INJECTABLE_RETURNING(FAULT, TYPE, NAME, PARAMS, ARGS)   \
  extern "C" TYPE NAME PARAMS {                                         \
    if (int injected_errno = (FAULT).take()) {                          \
      errno = injected_errno;                                           \
      return -1;                                                        \
    }                                                                   \
    using Real = TYPE(*) PARAMS;                                        \
    static const Real real = reactor::test::real_function<Real>(#NAME); \
    return real ARGS;                                                   \
  }
#define REACTOR_INJECTABLE(FAULT, NAME, PARAMS, ARGS) \
  REACTOR_INJECTABLE_RETURNING(FAULT, int, NAME, PARAMS, ARGS)

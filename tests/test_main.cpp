// The main() of every test executable.
//
// Before any thread starts: raise the soft fd limit to the hard limit (a thousand loopback
// connections take two thousand fds) and block the signals that signalfd tests deliver, since
// a signal reaches a signalfd only when every thread blocks it.
#include <csignal>
#include <cstdio>

#include <gtest/gtest.h>

#include "reactor/event_loop.hpp"
#include "reactor/socket.hpp"

#ifdef REACTOR_COVERAGE
// gcov writes its counts from an exit hook, which abort() skips: a death test's child (an
// assert's failing side, the loop's abort on a wait error) would leave no trace in the
// coverage report. In coverage builds only, write them before dying.
extern "C" void __gcov_dump();
extern "C" void dump_coverage_then_abort(int) {
  __gcov_dump();
  std::signal(SIGABRT, SIG_DFL);
  std::raise(SIGABRT);
}
#endif

int main(int argc, char** argv) {
#ifdef REACTOR_COVERAGE
  std::signal(SIGABRT, dump_coverage_then_abort);
#endif
  if (auto ec = reactor::raise_fd_limit()) {
    std::fprintf(stderr, "warning: cannot raise the fd limit: %s\n", ec.message().c_str());
  }
  if (auto ec = reactor::block_signals({SIGINT, SIGTERM, SIGUSR1, SIGUSR2})) {
    std::fprintf(stderr, "cannot block signals: %s\n", ec.message().c_str());
    return 1;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

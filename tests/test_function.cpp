#include "reactor/function.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "counting_new.hpp"

namespace reactor {
namespace {

// Counts live copies, so a test can check each captured object is destroyed exactly once.
struct Counted {
  int* live;
  explicit Counted(int* l) : live(l) { ++*live; }
  Counted(Counted&& other) noexcept : live(other.live) { ++*live; }
  Counted(const Counted& other) : live(other.live) { ++*live; }
  Counted& operator=(const Counted&) = delete;
  ~Counted() { --*live; }
};

// A callable too large for the inline storage.
struct Big {
  Counted counted;
  std::array<void*, 8> padding{};
  int operator()() const { return 7; }
};

TEST(Function, DefaultIsEmpty) {
  Function<void()> f;
  EXPECT_FALSE(f);
  Function<void()> g = nullptr;
  EXPECT_FALSE(g);
}

TEST(Function, LambdaCapturingThreePointersIsInline) {
  int a = 1, b = 2, c = 3;
  int* pa = &a;
  int* pb = &b;
  int* pc = &c;
  Function<int()> f = [pa, pb, pc] { return *pa + *pb + *pc; };
  EXPECT_TRUE(f);
  EXPECT_TRUE(f.is_inline());
  EXPECT_EQ(f(), 6);
}

// "Function stores callables of up to kInlineSize bytes (four pointers) inside itself, so the
// common callback, a lambda capturing a pointer or two, never allocates. Larger callables go to
// the heap." Counted with a replaced operator new: four pointers, moved twice, called and
// destroyed, allocate nothing; five allocate once (when stored), and moving them does not.
TEST(Function, FourPointersAreInlineAndNeverAllocateFiveGoToTheHeapOnce) {
  int a = 1, b = 2, c = 3, d = 4, e = 5;
  int *pa = &a, *pb = &b, *pc = &c, *pd = &d, *pe = &e;
  std::size_t inline_allocations = 0;
  int inline_result = 0;
  {
    test::Counting counting;
    Function<int()> f = [pa, pb, pc, pd] { return *pa + *pb + *pc + *pd; };
    Function<int()> g = std::move(f);
    Function<int()> h;
    h = std::move(g);
    inline_result = h();
    h = nullptr;
    inline_allocations = counting.calls();
  }
  EXPECT_EQ(inline_allocations, 0u);
  EXPECT_EQ(inline_result, 10);

  std::size_t heap_allocations = 0;
  std::size_t moves_allocations = 0;
  int heap_result = 0;
  bool is_inline = true;
  {
    test::Counting counting;
    Function<int()> f = [pa, pb, pc, pd, pe] { return *pa + *pb + *pc + *pd + *pe; };
    heap_allocations = counting.calls();
    is_inline = f.is_inline();
    Function<int()> g = std::move(f);
    Function<int()> h;
    h = std::move(g);
    heap_result = h();
    moves_allocations = counting.calls() - heap_allocations;
  }
  EXPECT_FALSE(is_inline);
  EXPECT_EQ(heap_allocations, 1u);
  EXPECT_EQ(moves_allocations, 0u) << "moving a heap-stored callable moves its pointer";
  EXPECT_EQ(heap_result, 15);
}

// Inline storage needs the callable to fit in alignment as well as size, and to move without
// throwing (Function's move is noexcept): other small callables go to the heap, and work.
struct alignas(2 * alignof(std::max_align_t)) OverAligned {
  int operator()() const {
    return reinterpret_cast<std::uintptr_t>(this) % alignof(OverAligned) == 0 ? 1 : 0;
  }
};
struct MayThrowOnMove {
  MayThrowOnMove() = default;
  MayThrowOnMove(MayThrowOnMove&&) noexcept(false) {}
  int operator()() const { return 2; }
};

TEST(Function, OverAlignedOrThrowingMoveCallablesGoToTheHeap) {
  Function<int()> aligned = OverAligned{};
  EXPECT_FALSE(aligned.is_inline());
  EXPECT_EQ(aligned(), 1) << "the heap copy is not aligned as its type needs";
  Function<int()> throwing = MayThrowOnMove{};
  EXPECT_FALSE(throwing.is_inline());
  EXPECT_EQ(throwing(), 2);
  Function<int()> empty;
  EXPECT_TRUE(empty.is_inline()) << "an empty Function holds nothing on the heap";
}

// Like std::function: a Function<void(...)> discards the callable's result.
TEST(Function, VoidSignatureDiscardsTheCallablesResult) {
  int calls = 0;
  Function<void()> f = [&calls] { return ++calls; };
  f();
  f();
  EXPECT_EQ(calls, 2);
}

// "Calling an empty Function is a programmer error (asserted in debug builds)."
TEST(FunctionDeathTest, CallingAnEmptyFunctionIsAssertedInDebugBuilds) {
#ifdef NDEBUG
  GTEST_SKIP() << "the assertion is compiled out (NDEBUG)";
#else
  Function<void()> empty;
  EXPECT_DEATH(empty(), "calling an empty reactor::Function");
  Function<void()> moved_from = [] {};
  Function<void()> taker = std::move(moved_from);
  EXPECT_DEATH(moved_from(),
               "calling an empty reactor::Function");  // NOLINT(bugprone-use-after-move)
#endif
}

TEST(Function, LargeCaptureGoesToHeapAndWorks) {
  std::array<long, 16> values{};
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<long>(i);
  Function<long()> f = [values] {
    long sum = 0;
    for (long v : values)
      sum += v;
    return sum;
  };
  EXPECT_FALSE(f.is_inline());
  EXPECT_EQ(f(), 120);
  Function<long()> g = std::move(f);
  EXPECT_FALSE(g.is_inline());
  EXPECT_EQ(g(), 120);
}

TEST(Function, MoveOnlyCaptureWorks) {
  auto p = std::make_unique<int>(42);
  Function<int()> f = [p = std::move(p)] { return *p; };
  EXPECT_TRUE(f.is_inline());
  EXPECT_EQ(f(), 42);
  Function<int()> g = std::move(f);
  EXPECT_EQ(g(), 42);
}

TEST(Function, MovedFromIsEmpty) {
  int x = 5;
  Function<int()> inline_fn = [&x] { return x; };
  Function<int()> a = std::move(inline_fn);
  EXPECT_FALSE(inline_fn);  // NOLINT(bugprone-use-after-move): the state is specified
  EXPECT_TRUE(a);

  Function<int()> heap_fn = [big = std::array<int, 32>{}, &x] { return x + big[0]; };
  Function<int()> b;
  b = std::move(heap_fn);
  EXPECT_FALSE(heap_fn);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b(), 5);
}

TEST(Function, InlineCaptureDestroyedExactlyOnce) {
  int live = 0;
  {
    Function<int()> f = [c = Counted(&live)] { return *c.live; };
    EXPECT_TRUE(f.is_inline());
    EXPECT_EQ(live, 1);
    Function<int()> g = std::move(f);
    EXPECT_EQ(live, 1);
    Function<int()> h;
    h = std::move(g);
    EXPECT_EQ(live, 1);
    EXPECT_EQ(h(), 1);
  }
  EXPECT_EQ(live, 0);
}

TEST(Function, HeapCaptureDestroyedExactlyOnce) {
  int live = 0;
  {
    Function<int()> f = Big{Counted(&live)};
    EXPECT_FALSE(f.is_inline());
    EXPECT_EQ(live, 1);
    Function<int()> g = std::move(f);
    EXPECT_EQ(live, 1);
    Function<int()> h;
    h = std::move(g);
    EXPECT_EQ(live, 1);
    EXPECT_EQ(h(), 7);
  }
  EXPECT_EQ(live, 0);
}

TEST(Function, MoveAssignmentOverNonEmptyDestroysOldTarget) {
  int old_live = 0;
  int new_live = 0;
  {
    Function<int()> inline_target = [c = Counted(&old_live)] { return 1; };
    Function<int()> heap_target = Big{Counted(&old_live)};
    EXPECT_EQ(old_live, 2);

    inline_target = Big{Counted(&new_live)};  // inline replaced by heap
    EXPECT_EQ(old_live, 1);
    EXPECT_EQ(new_live, 1);
    heap_target = [c = Counted(&new_live)] { return 2; };  // heap replaced by inline
    EXPECT_EQ(old_live, 0);
    EXPECT_EQ(new_live, 2);
    EXPECT_EQ(inline_target(), 7);
    EXPECT_EQ(heap_target(), 2);

    heap_target = nullptr;
    EXPECT_EQ(new_live, 1);
    EXPECT_FALSE(heap_target);
  }
  EXPECT_EQ(old_live, 0);
  EXPECT_EQ(new_live, 0);
}

TEST(Function, SelfMoveAssignmentKeepsTarget) {
  int live = 0;
  {
    Function<int()> f = [c = Counted(&live)] { return 3; };
    Function<int()>& alias = f;
    f = std::move(alias);
    EXPECT_EQ(live, 1);
    EXPECT_EQ(f(), 3);
  }
  EXPECT_EQ(live, 0);
}

TEST(Function, ReturnsValues) {
  Function<std::string(int)> f = [](int n) {
    return std::string(static_cast<std::size_t>(n), 'x');
  };
  EXPECT_EQ(f(3), "xxx");
  Function<std::unique_ptr<int>()> g = [] { return std::make_unique<int>(9); };
  EXPECT_EQ(*g(), 9);
}

TEST(Function, ForwardsReferenceArguments) {
  Function<void(int&)> increment = [](int& n) { ++n; };
  int n = 1;
  increment(n);
  EXPECT_EQ(n, 2);

  // An rvalue reference parameter must reach the callable without a copy.
  Function<std::unique_ptr<int>(std::unique_ptr<int> &&)> take = [](std::unique_ptr<int>&& p) {
    return std::move(p);
  };
  auto p = std::make_unique<int>(4);
  auto q = take(std::move(p));
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(*q, 4);

  const std::string s = "abc";
  Function<std::size_t(const std::string&)> length = [&s](const std::string& arg) {
    EXPECT_EQ(&arg, &s);  // the same object, not a copy
    return arg.size();
  };
  EXPECT_EQ(length(s), 3u);
}

TEST(Function, ByValueMoveOnlyArgument) {
  Function<int(std::unique_ptr<int>)> f = [](std::unique_ptr<int> p) { return *p; };
  EXPECT_EQ(f(std::make_unique<int>(11)), 11);
}

}  // namespace
}  // namespace reactor

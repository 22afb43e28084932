#include "reactor/function.hpp"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <string>
#include <utility>

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

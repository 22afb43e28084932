// Result<T>: a value or the std::error_code that explains why there is none.
//
// Errors cross the library's API as std::error_code, read from errno once, where the
// syscall failed. Result<T> carries that code for calls that also produce a value.
// Accessing value() of a failed Result is a programmer error (asserted in debug builds).
#pragma once

#include <cassert>
#include <cerrno>
#include <system_error>
#include <utility>
#include <variant>

namespace reactor {

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value)
      : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(std::error_code error) : state_(std::in_place_index<1>, error) {  // NOLINT
    assert(error && "a failed Result needs a non-zero error_code");
  }

  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // The error, or an empty error_code when ok().
  std::error_code error() const noexcept { return ok() ? std::error_code{} : std::get<1>(state_); }

 private:
  std::variant<T, std::error_code> state_;
};

// The current errno as an error_code; call it right after the failed syscall.
inline std::error_code errno_code() noexcept {
  return {errno, std::system_category()};
}

}  // namespace reactor

// Function<R(Args...)>: a move-only callable for the loop's callbacks.
//
// std::function cannot hold move-only captures (a unique_ptr, a Connection handle) and
// allocates for anything larger than two pointers; std::move_only_function is C++23.
// Function stores callables of up to kInlineSize bytes (four pointers) inside itself, so the
// common callback, a lambda capturing a pointer or two, never allocates. Larger callables go
// to the heap. Calling an empty Function is a programmer error (asserted in debug builds).
// Not thread-safe: like any object, one thread uses it at a time.
#pragma once

#include <cassert>
#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace reactor {

template <class Signature>
class Function;

template <class R, class... Args>
class Function<R(Args...)> {
 public:
  static constexpr std::size_t kInlineSize = 4 * sizeof(void*);

  Function() noexcept = default;
  Function(std::nullptr_t) noexcept {}  // NOLINT: implicit, like std::function

  template <class F, class D = std::decay_t<F>,
            class = std::enable_if_t<!std::is_same_v<D, Function> &&
                                     std::is_invocable_r_v<R, D&, Args...>>>
  Function(F&& f) {  // NOLINT: implicit, like std::function
    if constexpr (fits_inline<D>) {
      ::new (static_cast<void*>(storage_)) D(std::forward<F>(f));
      ops_ = &inline_ops<D>;
    } else {
      *reinterpret_cast<D**>(storage_) = new D(std::forward<F>(f));
      ops_ = &heap_ops<D>;
    }
    call_ = ops_->call;
  }

  Function(Function&& other) noexcept { take(other); }
  Function& operator=(Function&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  Function& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }
  Function(const Function&) = delete;
  Function& operator=(const Function&) = delete;
  ~Function() { reset(); }

  explicit operator bool() const noexcept { return ops_ != nullptr; }

  R operator()(Args... args) {
    assert(call_ && "calling an empty reactor::Function");
    return call_(storage_, std::forward<Args>(args)...);
  }

  // True when the callable lives inside this object (no heap allocation was made).
  bool is_inline() const noexcept { return ops_ == nullptr || ops_->inline_stored; }

 private:
  struct Ops {
    R (*call)(void*, Args&&...);
    void (*move)(void* from, void* to) noexcept;  // move-constructs into `to`, destroys `from`
    void (*destroy)(void*) noexcept;
    bool inline_stored;
  };

  // Discards the callable's result when R is void, as std::function does.
  template <class D>
  static R invoke(D& f, Args&&... args) {
    if constexpr (std::is_void_v<R>) {
      f(std::forward<Args>(args)...);
    } else {
      return f(std::forward<Args>(args)...);
    }
  }

  template <class D>
  static constexpr bool fits_inline =
      sizeof(D) <= kInlineSize &&
      alignof(D) <= alignof(std::max_align_t) && std::is_nothrow_move_constructible_v<D>;

  template <class D>
  static constexpr Ops inline_ops = {
      [](void* s, Args&&... args) -> R {
        return invoke(*std::launder(static_cast<D*>(s)), std::forward<Args>(args)...);
      },
      [](void* from, void* to) noexcept {
        D* f = std::launder(static_cast<D*>(from));
        ::new (to) D(std::move(*f));
        f->~D();
      },
      [](void* s) noexcept { std::launder(static_cast<D*>(s))->~D(); },
      true,
  };

  template <class D>
  static constexpr Ops heap_ops = {
      [](void* s, Args&&... args) -> R {
        return invoke(**static_cast<D**>(s), std::forward<Args>(args)...);
      },
      [](void* from, void* to) noexcept { *static_cast<D**>(to) = *static_cast<D**>(from); },
      [](void* s) noexcept { delete *static_cast<D**>(s); },
      false,
  };

  void take(Function& other) noexcept {
    if (other.ops_) {
      other.ops_->move(other.storage_, storage_);
      ops_ = other.ops_;
      call_ = other.call_;
      other.ops_ = nullptr;
      other.call_ = nullptr;
    }
  }
  void reset() noexcept {
    if (ops_) {
      const Ops* ops = ops_;
      ops_ = nullptr;
      call_ = nullptr;
      ops->destroy(storage_);
    }
  }

  alignas(std::max_align_t) unsigned char storage_[kInlineSize];
  const Ops* ops_ = nullptr;
  // A copy of ops_->call: a call is one indirect jump, not a load of the table and then one.
  // Free in size: the object is padded to max_align_t anyway.
  R (*call_)(void*, Args&&...) = nullptr;
};

}  // namespace reactor

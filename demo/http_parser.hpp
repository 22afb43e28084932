// HTTP/1.1 request parsing and the fixed responses of the demo HTTP server: plain functions over
// bytes, no sockets, so the tests feed them tables of byte strings.
//
// Parsing contract (parse_request):
// - Input is the connection's unconsumed input bytes, starting at a request boundary. The parser
//   keeps no state between calls: after kNeedMore, call again with the same bytes plus whatever
//   arrived. Each call looks at no more than kMaxHeadBytes of input, so re-parsing a request that
//   trickles in costs at most that much per read.
// - kComplete fills a Request whose string_views point into `input`: valid while those bytes are
//   (until the caller consumes them or its buffer reallocates). Nothing is allocated: headers go
//   into a fixed array of kMaxHeaders entries. After kNeedMore or kError the Request's fields are
//   unspecified. A Request is ~2 KiB: keep one per loop (or on the stack), not per connection.
// - The caller then drops Request::consumed bytes (the head and the part of a Content-Length body
//   already buffered) and discards the next Request::body_remaining bytes as they arrive, without
//   buffering them. The response may be sent at once: the body is never looked at.
// - kError carries the status to answer (400, 411, 431, 501 or 505); the caller answers it with
//   append_error() and closes the connection after the reply is written. Errors are found as soon
//   as the bytes show them (a bad request line answers before the headers arrive), and the answer
//   for a byte string does not depend on how it was split across reads.
//
// Choices, where the RFCs leave room (RFC 9112 section numbers):
// - Line ends: CRLF, or a bare LF (2.2 allows it; curl, nginx and most servers accept it). A CR
//   anywhere else is a 400.
// - Empty lines before the request line are skipped (2.2: after a body, clients may send an extra
//   CRLF) and count in Request::consumed.
// - The request line is exactly `method SP target SP HTTP/D.D`: single spaces, the method a token,
//   the target any visible bytes (no check of its form: the demo answers every path alike).
//   HTTP/1.x with x >= 2 is served as HTTP/1.1 (2.3); any other major version is a 505.
// - Header lines: `token ":" OWS value OWS`. Whitespace before the colon (5.1), a line starting
//   with whitespace (obs-fold, 5.2) and control bytes in a value are a 400. Values are trimmed.
// - Limits: the head (request line, headers, blank line; leading empty lines included) must end
//   within kMaxHeadBytes (8 KiB) and hold at most kMaxHeaders headers, else 431.
// - Content-Length: digits only, at most 18 of them; repeated with the same value is allowed,
//   differing values are a 400 (6.3).
// - Transfer-Encoding: refused, not decoded. A request whose last coding is `chunked` gets 411
//   Length Required (send it with a Content-Length); any other coding gets 501. Either way the
//   connection closes, since the body's end cannot be found.
// - Connection: comma-separated tokens, case-insensitive, over every Connection header. HTTP/1.1
//   keeps the connection unless `close` is listed; HTTP/1.0 closes it unless `keep-alive` is
//   listed and `close` is not (9.3).
// - Host is not required: there is one site, so the request is answered the same without it.
//
// Responses (append_*): append to a caller-owned std::string, which the caller reuses for every
// batch of pipelined responses (no allocation once it has grown). Every response is HTTP/1.1 and
// has Date and Content-Length; error responses carry `Connection: close`.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace demo::http {

inline constexpr std::size_t kMaxHeadBytes = 8 * 1024;
inline constexpr std::size_t kMaxHeaders = 64;

struct Header {
  std::string_view name;   // as sent (compare case-insensitively)
  std::string_view value;  // without surrounding whitespace
};

struct Request {
  std::string_view method;  // case-sensitive token: "GET", "HEAD", ...
  std::string_view target;  // "/", "/path?query", as sent
  int version_minor = 1;    // HTTP/1.x
  bool keep_alive = true;   // the connection stays open after the response
  std::uint64_t content_length = 0;
  std::size_t head_bytes = 0;        // leading empty lines + request line + headers + blank line
  std::size_t consumed = 0;          // head_bytes + body bytes present in the input
  std::uint64_t body_remaining = 0;  // body bytes not yet received: discard them as they come
  std::array<Header, kMaxHeaders> header_storage;
  std::size_t header_count = 0;

  std::span<const Header> headers() const noexcept { return {header_storage.data(), header_count}; }
  // The value of the first header named `name` (case-insensitive), or an empty view.
  std::string_view header(std::string_view name) const noexcept;
};

enum class ParseStatus { kNeedMore, kComplete, kError };

struct ParseResult {
  ParseStatus status = ParseStatus::kNeedMore;
  int error_status = 0;  // kError: 400, 411, 431, 501 or 505
};

ParseResult parse_request(std::string_view input, Request& request) noexcept;

// True when `a` and `b` are equal ignoring ASCII case.
bool equals_ignore_case(std::string_view a, std::string_view b) noexcept;

// The value for a Date header ("Sun, 06 Nov 1994 08:49:37 GMT", IMF-fixdate), formatted again
// only when the second changes, not per response. One per loop thread; not thread-safe.
class DateCache {
 public:
  static constexpr std::size_t kLength = 29;

  // The date for `now`; the view stays valid (and its bytes may change) until the next call.
  std::string_view update(std::chrono::system_clock::time_point now) noexcept;
  std::string_view value() const noexcept { return {text_.data(), kLength}; }
  std::uint64_t formats() const noexcept { return formats_; }  // times the text was rebuilt

  // Formats `unix_seconds` as IMF-fixdate into out[0..kLength).
  static void format(std::int64_t unix_seconds, char* out) noexcept;

 private:
  std::array<char, kLength> text_{};
  std::int64_t second_ = INT64_MIN;
  std::uint64_t formats_ = 0;
};

// How a response speaks of the connection.
enum class ConnectionHeader {
  kNone,       // HTTP/1.1 keep-alive: the default, nothing to say
  kKeepAlive,  // HTTP/1.0 client that asked for keep-alive: confirm it
  kClose,      // the server closes after this response
};

// The header that matches the request's keep-alive decision.
ConnectionHeader connection_header_for(const Request& request) noexcept;

// "OK", "Bad Request", ...; "" for statuses this file does not write.
std::string_view reason_phrase(int status) noexcept;

// 200 with Content-Type and Content-Length of `body`; the body itself only if `include_body`
// (false answers HEAD: same headers, no body).
void append_ok(std::string& out, std::string_view date, std::string_view content_type,
               std::string_view body, bool include_body, ConnectionHeader connection);

// 405 with `Allow: GET, HEAD` and a short text body. The connection may stay open.
void append_method_not_allowed(std::string& out, std::string_view date,
                               ConnectionHeader connection);

// An error from parse_request (400, 411, 431, 501, 505) with a short text body and
// `Connection: close`.
void append_error(std::string& out, std::string_view date, int status);

}  // namespace demo::http

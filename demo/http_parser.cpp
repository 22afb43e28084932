#include "demo/http_parser.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace demo::http {
namespace {

// tchar (RFC 9110 5.6.2): the bytes of methods and header names.
constexpr std::array<bool, 256> make_tchar_table() {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c)
    t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c)
    t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c)
    t[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~"))
    t[static_cast<unsigned char>(c)] = true;
  return t;
}
constexpr std::array<bool, 256> kTchar = make_tchar_table();

bool is_tchar(char c) {
  return kTchar[static_cast<unsigned char>(c)];
}
// Visible bytes, obs-text included: what a request target may hold.
bool is_target_byte(char c) {
  auto u = static_cast<unsigned char>(c);
  return u > 0x20 && u != 0x7f;
}
// field-vchar, SP or HTAB: what a header value may hold.
bool is_value_byte(char c) {
  return is_target_byte(c) || c == ' ' || c == '\t';
}
bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back()))
    s.remove_suffix(1);
  return s;
}

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// One line of the head. `text` excludes the line end; an incomplete line (no LF yet within the
// head limit) has its possible CR-to-be kept out of `text` too, so validators see the same bytes
// a complete line would start with.
struct Line {
  std::string_view text;
  std::size_t next = 0;  // offset after the LF
  bool complete = false;
};

Line next_line(std::string_view in, std::size_t pos) {
  std::size_t window = std::min(in.size(), kMaxHeadBytes);
  Line line;
  const void* lf = pos < window ? std::memchr(in.data() + pos, '\n', window - pos) : nullptr;
  std::size_t end = window;
  if (lf != nullptr) {
    end = static_cast<std::size_t>(static_cast<const char*>(lf) - in.data());
    line.next = end + 1;
    line.complete = true;
  }
  line.text = pos < end ? in.substr(pos, end - pos) : std::string_view();
  if (!line.text.empty() && line.text.back() == '\r') line.text.remove_suffix(1);
  return line;
}

enum class Check { kOk, kBad, kBadVersion };

// `method SP target SP HTTP/D.D`. For an incomplete line, kOk means "a valid line may still
// start with these bytes".
Check check_request_line(std::string_view t, bool complete, Request& request) {
  std::size_t i = 0;
  while (i < t.size() && is_tchar(t[i]))
    ++i;
  if (i == t.size()) return complete ? Check::kBad : Check::kOk;
  if (i == 0 || t[i] != ' ') return Check::kBad;
  std::size_t target_start = i + 1;
  std::size_t j = target_start;
  while (j < t.size() && is_target_byte(t[j]))
    ++j;
  if (j == t.size()) return complete ? Check::kBad : Check::kOk;
  if (j == target_start || t[j] != ' ') return Check::kBad;

  std::string_view version = t.substr(j + 1);
  static constexpr std::string_view kPattern = "HTTP/D.D";
  if (version.size() > kPattern.size()) return Check::kBad;
  for (std::size_t k = 0; k < version.size(); ++k) {
    bool ok =
        kPattern[k] == 'D' ? (version[k] >= '0' && version[k] <= '9') : version[k] == kPattern[k];
    if (!ok) return Check::kBad;
  }
  if (!complete) return Check::kOk;
  if (version.size() != kPattern.size()) return Check::kBad;
  if (version[5] != '1') return Check::kBadVersion;
  request.method = t.substr(0, i);
  request.target = t.substr(target_start, j - target_start);
  request.version_minor = version[7] - '0';
  return Check::kOk;
}

// `token ":" OWS value OWS`, non-empty. Fills `header` when complete.
Check check_header_line(std::string_view t, bool complete, Header& header) {
  if (!t.empty() && is_ows(t.front())) return Check::kBad;  // obs-fold, or space before a name
  std::size_t i = 0;
  while (i < t.size() && is_tchar(t[i]))
    ++i;
  if (i == t.size()) return complete ? Check::kBad : Check::kOk;
  if (i == 0 || t[i] != ':') return Check::kBad;
  std::string_view value = t.substr(i + 1);
  for (char c : value) {
    if (!is_value_byte(c)) return Check::kBad;
  }
  header = {t.substr(0, i), trim_ows(value)};
  return Check::kOk;
}

bool parse_content_length(std::string_view v, std::uint64_t& out) {
  // 18 digits keep the value below 2^63: no overflow to check.
  if (v.empty() || v.size() > 18) return false;
  std::uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  out = n;
  return true;
}

// Calls f(token) for each comma-separated, trimmed, non-empty element of a list header.
template <typename F>
void for_each_token(std::string_view list, F f) {
  while (!list.empty()) {
    std::size_t comma = list.find(',');
    std::string_view item = trim_ows(list.substr(0, comma));
    if (!item.empty()) f(item);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

ParseResult error(int status) {
  return {ParseStatus::kError, status};
}

}  // namespace

bool equals_ignore_case(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view Request::header(std::string_view name) const noexcept {
  for (const Header& h : headers()) {
    if (equals_ignore_case(h.name, name)) return h.value;
  }
  return {};
}

ParseResult parse_request(std::string_view in, Request& request) noexcept {
  const ParseResult need_more{};
  // Every line is validated as soon as it is complete, and the incomplete last line as far as
  // it goes, before the size limit is checked: so the answer for a byte string is the same
  // however it was split, and garbage is refused without waiting for 8 KiB of it.
  auto incomplete = [&](Check check) {
    if (check != Check::kOk) return error(400);
    return in.size() >= kMaxHeadBytes ? error(431) : need_more;
  };

  std::size_t pos = 0;
  Line line = next_line(in, pos);
  while (line.complete && line.text.empty()) {  // empty lines before the request line
    pos = line.next;
    line = next_line(in, pos);
  }
  if (!line.complete) {
    return incomplete(check_request_line(line.text, false, request));
  }
  switch (check_request_line(line.text, true, request)) {
    case Check::kOk:
      break;
    case Check::kBad:
      return error(400);
    case Check::kBadVersion:
      return error(505);
  }

  request.header_count = 0;
  request.content_length = 0;
  bool has_content_length = false;
  bool close_token = false;
  bool keep_alive_token = false;
  for (;;) {
    pos = line.next;
    line = next_line(in, pos);
    Header header;
    if (!line.complete) return incomplete(check_header_line(line.text, false, header));
    if (line.text.empty()) break;
    if (check_header_line(line.text, true, header) != Check::kOk) return error(400);
    if (request.header_count == kMaxHeaders) return error(431);
    request.header_storage[request.header_count++] = header;

    if (equals_ignore_case(header.name, "content-length")) {
      std::uint64_t n = 0;
      if (!parse_content_length(header.value, n)) return error(400);
      if (has_content_length && n != request.content_length) return error(400);
      has_content_length = true;
      request.content_length = n;
    } else if (equals_ignore_case(header.name, "transfer-encoding")) {
      std::string_view last;
      for_each_token(header.value, [&](std::string_view t) { last = t; });
      return error(equals_ignore_case(last, "chunked") ? 411 : 501);
    } else if (equals_ignore_case(header.name, "connection")) {
      for_each_token(header.value, [&](std::string_view t) {
        if (equals_ignore_case(t, "close")) close_token = true;
        if (equals_ignore_case(t, "keep-alive")) keep_alive_token = true;
      });
    }
  }

  request.keep_alive = request.version_minor >= 1 ? !close_token : keep_alive_token && !close_token;
  request.head_bytes = line.next;
  std::uint64_t buffered_body =
      std::min<std::uint64_t>(in.size() - request.head_bytes, request.content_length);
  request.consumed = request.head_bytes + static_cast<std::size_t>(buffered_body);
  request.body_remaining = request.content_length - buffered_body;
  return {ParseStatus::kComplete, 0};
}

// Days since 1970-01-01 to a civil date (proleptic Gregorian), after Howard Hinnant's
// "chrono-Compatible Low-Level Date Algorithms": no table, no locale, no gmtime_r.
void DateCache::format(std::int64_t unix_seconds, char* out) noexcept {
  static constexpr std::string_view kDays = "ThuFriSatSunMonTueWed";  // 1970-01-01 was a Thursday
  static constexpr std::string_view kMonths = "JanFebMarAprMayJunJulAugSepOctNovDec";
  std::int64_t days = unix_seconds / 86400;
  std::int64_t secs = unix_seconds % 86400;
  if (secs < 0) {
    secs += 86400;
    --days;
  }
  std::int64_t weekday = ((days % 7) + 7) % 7;
  std::int64_t z = days + 719468;
  std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  std::int64_t doe = z - era * 146097;
  std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  std::int64_t mp = (5 * doy + 2) / 153;
  std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  std::int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  year = std::clamp<std::int64_t>(year, 0, 9999);  // IMF-fixdate has four year digits

  auto two = [](char* p, std::int64_t v) {
    p[0] = static_cast<char>('0' + v / 10);
    p[1] = static_cast<char>('0' + v % 10);
  };
  std::memcpy(out, kDays.data() + weekday * 3, 3);
  out[3] = ',';
  out[4] = ' ';
  two(out + 5, day);
  out[7] = ' ';
  std::memcpy(out + 8, kMonths.data() + (month - 1) * 3, 3);
  out[11] = ' ';
  two(out + 12, year / 100);
  two(out + 14, year % 100);
  out[16] = ' ';
  two(out + 17, secs / 3600);
  out[19] = ':';
  two(out + 20, secs / 60 % 60);
  out[22] = ':';
  two(out + 23, secs % 60);
  std::memcpy(out + 25, " GMT", 4);
}

std::string_view DateCache::update(std::chrono::system_clock::time_point now) noexcept {
  std::int64_t second = std::chrono::floor<std::chrono::seconds>(now.time_since_epoch()).count();
  if (second != second_) {
    format(second, text_.data());
    second_ = second;
    ++formats_;
  }
  return value();
}

ConnectionHeader connection_header_for(const Request& request) noexcept {
  if (!request.keep_alive) return ConnectionHeader::kClose;
  return request.version_minor == 0 ? ConnectionHeader::kKeepAlive : ConnectionHeader::kNone;
}

std::string_view reason_phrase(int status) noexcept {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 405:
      return "Method Not Allowed";
    case 411:
      return "Length Required";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

namespace {

void append_number(std::string& out, std::uint64_t n) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.append(digits, end);
}

// Status line, Date, Connection, `extra` (whole header lines), Content-Type, Content-Length,
// blank line.
void append_head(std::string& out, int status, std::string_view date, ConnectionHeader connection,
                 std::string_view extra, std::string_view content_type,
                 std::size_t content_length) {
  out += "HTTP/1.1 ";
  append_number(out, static_cast<std::uint64_t>(status));
  out += ' ';
  out += reason_phrase(status);
  out += "\r\nDate: ";
  out += date;
  out += "\r\n";
  if (connection == ConnectionHeader::kClose) out += "Connection: close\r\n";
  if (connection == ConnectionHeader::kKeepAlive) out += "Connection: keep-alive\r\n";
  out += extra;
  out += "Content-Type: ";
  out += content_type;
  out += "\r\nContent-Length: ";
  append_number(out, content_length);
  out += "\r\n\r\n";
}

// The body of error responses: "405 Method Not Allowed\n".
void append_status_body(std::string& out, int status) {
  append_number(out, static_cast<std::uint64_t>(status));
  out += ' ';
  out += reason_phrase(status);
  out += '\n';
}

std::size_t status_body_size(int status) {
  return 3 + 1 + reason_phrase(status).size() + 1;
}

}  // namespace

void append_ok(std::string& out, std::string_view date, std::string_view content_type,
               std::string_view body, bool include_body, ConnectionHeader connection) {
  append_head(out, 200, date, connection, {}, content_type, body.size());
  if (include_body) out += body;
}

void append_method_not_allowed(std::string& out, std::string_view date,
                               ConnectionHeader connection) {
  append_head(out, 405, date, connection, "Allow: GET, HEAD\r\n", "text/plain",
              status_body_size(405));
  append_status_body(out, 405);
}

void append_error(std::string& out, std::string_view date, int status) {
  append_head(out, status, date, ConnectionHeader::kClose, {}, "text/plain",
              status_body_size(status));
  append_status_body(out, status);
}

}  // namespace demo::http

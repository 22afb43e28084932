// Command-line helpers shared by the demo programs (the servers and reactor-load).
//
// - add_number(): `--name VALUE` with a range check whose error names the flag and the value
//   (`invalid value for --threads: abc (expected an integer from 1 to 1024)`), instead of
//   CLI11's generic conversion messages.
// - parse_command_line(): parses and maps every outcome onto the demos' contract: `--help`
//   prints usage to stdout (exit 0); a usage error prints one line naming what is wrong to
//   stderr, then a hint (exit 2): `unknown option: --x`, `missing value: --threads`,
//   `invalid value for ...`, `unexpected argument: foo`.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

#include <CLI/CLI.hpp>

namespace demo {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;  // the run failed: port in use, refused, wrong bytes
inline constexpr int kExitUsage = 2;    // the command line is wrong

// Parses `text` as a T in [min, max]: plain decimal for integers, decimal or exponent form for
// floating point. nullopt when it is not one.
template <class T>
std::optional<T> parse_number(const std::string& text, T min, T max) {
  static_assert(std::is_arithmetic_v<T>);
  if (text.empty()) return std::nullopt;
  T value{};
  if constexpr (std::is_integral_v<T>) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  } else {
    char* end = nullptr;
    value = static_cast<T>(std::strtod(text.c_str(), &end));
    if (end != text.c_str() + text.size() || !(value == value)) return std::nullopt;  // NaN
  }
  if (value < min || value > max) return std::nullopt;
  return value;
}

// A number as --help and error messages print it: 5, 0.5, 1e+06.
template <class T>
std::string format_number(T value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// `--name VALUE`: stores the value in `value` (whose current value is the default shown by
// --help). `type_name` is the placeholder in the usage (N, SEC, BYTES, ...).
template <class T>
CLI::Option* add_number(CLI::App& app, const std::string& name, T& value, T min, T max,
                        const std::string& help, const std::string& type_name = "N") {
  const std::string expected = std::string(std::is_integral_v<T> ? "an integer" : "a number") +
                               " from " + format_number(min) + " to " + format_number(max);
  auto* option = app.add_option_function<std::string>(
      name,
      [&value, min, max](const std::string& text) {
        if (auto parsed = parse_number(text, min, max)) value = *parsed;
      },
      help);
  option->type_name(type_name);
  option->default_str(format_number(value));
  // Runs before the function above: CLI11 reports the returned text as "--name: TEXT".
  option->check([min, max, expected](const std::string& text) -> std::string {
    if (parse_number(text, min, max)) return {};
    return text + " (expected " + expected + ")";
  });
  return option;
}

// Parses argv into `app`. Returns nullopt when the program should go on, or the exit code it
// should return now (0 after --help, kExitUsage after a usage error, both already printed).
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv);

// Prints `message` as the first line on stderr and a hint pointing at --help; returns kExitUsage.
int usage_error(const CLI::App& app, const std::string& message);

}  // namespace demo

#include "cli.hpp"

#include <cstdio>
#include <string_view>

namespace demo {

namespace {

// CLI11 prefixes an option's errors with its name: "--threads: 1 required INT missing".
std::string option_name(std::string_view what) {
  const auto colon = what.find(':');
  return std::string(what.substr(0, colon));
}

}  // namespace

int usage_error(const CLI::App& app, const std::string& message) {
  std::fprintf(stderr, "%s\nrun '%s --help' for usage\n", message.c_str(), app.get_name().c_str());
  std::fflush(stderr);
  return kExitUsage;
}

std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // Leftover words are collected, not thrown, so that the error can name the first of them.
  app.allow_extras();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);  // the help of the subcommand given, if any
    std::fflush(stdout);
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    std::fflush(stdout);
    return kExitOk;
  } catch (const CLI::ArgumentMismatch& e) {
    const std::string what = e.what();
    if (what.find("missing") != std::string::npos) {
      return usage_error(app, "missing value: " + option_name(what));
    }
    return usage_error(app, "wrong number of values: " + what);
  } catch (const CLI::ValidationError& e) {
    return usage_error(app, std::string("invalid value for ") + e.what());  // "--x: TEXT (...)"
  } catch (const CLI::ConversionError& e) {
    return usage_error(app, std::string("invalid value: ") + e.what());
  } catch (const CLI::RequiredError& e) {
    // "--target is required" (an option) or "A subcommand is required"
    std::string what = e.what();
    const std::string suffix = " is required";
    if (what.size() > suffix.size() &&
        what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0 && what[0] == '-') {
      return usage_error(app, "missing option: " + what.substr(0, what.size() - suffix.size()));
    }
    return usage_error(app, what);
  } catch (const CLI::ParseError& e) {
    return usage_error(app, e.what());
  }
  for (const std::string& word : app.remaining(true)) {
    if (word.size() > 1 && word[0] == '-') return usage_error(app, "unknown option: " + word);
    return usage_error(app, "unexpected argument: " + word);
  }
  return std::nullopt;
}

}  // namespace demo

#pragma once
// Logging facade over spdlog. spdlog stays behind this header because LibTorch ships
// its own (newer, incompatible) fmt headers: only src/util/log.cpp, built without torch
// on its include path, sees spdlog.
#include <sstream>
#include <string>

namespace llmctl::log {

void init(bool verbose);  // stderr, "[HH:MM:SS] level message"
void debug(const std::string& msg);
void info(const std::string& msg);
void warn(const std::string& msg);
void error(const std::string& msg);

}  // namespace llmctl::log

namespace llmctl {
// Concatenates anything streamable: cat("read ", n, " lines") -> "read 12 lines".
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream ss;
  (ss << ... << args);
  return ss.str();
}
}  // namespace llmctl

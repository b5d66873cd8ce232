#include "llmctl/util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace llmctl::log {

void init(bool verbose) {
  if (!spdlog::get("llmctl")) {
    auto logger = spdlog::stderr_color_mt("llmctl");
    logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
    spdlog::set_default_logger(logger);
  }
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
}

void debug(const std::string& msg) { spdlog::debug(msg); }
void info(const std::string& msg) { spdlog::info(msg); }
void warn(const std::string& msg) { spdlog::warn(msg); }
void error(const std::string& msg) { spdlog::error(msg); }

}  // namespace llmctl::log

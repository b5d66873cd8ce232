#pragma once
// Small helpers shared by the unit tests.
#include <cstdlib>
#include <filesystem>
#include <string>

#include "llmctl/util/fs.h"

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "llmctl-test-XXXXXX").string();
    path = mkdtemp(tmpl.data()) ? tmpl : throw std::runtime_error("mkdtemp failed");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

inline std::string source_dir() {
  const char* s = std::getenv("LLMCTL_SOURCE_DIR");
  return s ? s : ".";
}

// Expects `fn` to throw llmctl::Error whose message contains `needle`.
#define EXPECT_ERROR_MENTIONS(stmt, needle)                                          \
  do {                                                                               \
    try {                                                                            \
      stmt;                                                                          \
      ADD_FAILURE() << "expected llmctl::Error mentioning '" << (needle) << "'";    \
    } catch (const llmctl::Error& e) {                                               \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                                \
  } while (0)

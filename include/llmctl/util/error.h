#pragma once
// One exception type for every user-facing failure: the CLI prints its message as one
// line on stderr and exits non-zero. Messages name the file, flag or field at fault.
#include <stdexcept>
#include <string>

namespace llmctl {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace llmctl

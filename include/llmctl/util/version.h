#pragma once
#include <string>

namespace llmctl {
// "0.1.0 (torch 2.11.0, CUDA kernels: yes)"
std::string version_string();
}  // namespace llmctl

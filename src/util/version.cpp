#include "llmctl/util/version.h"

#include <torch/version.h>

#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/build_config.h"


namespace llmctl {

std::string version_string() {
  return std::string("llmctl ") + LLMCTL_VERSION + " (LibTorch " + TORCH_VERSION +
         ", CUDA kernels: " + (kernels::built_with_cuda() ? "built" : "not built") + ")";
}

}  // namespace llmctl

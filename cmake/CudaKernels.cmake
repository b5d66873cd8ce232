# CUDA kernels are built when the LibTorch found was built with CUDA (the PyPI wheel is)
# and nvcc is available. Without them everything still works on CPU.
set(LLMCTL_HAVE_CUDA OFF)
if(LLMCTL_WITH_CUDA AND CAFFE2_USE_CUDA)
  # torch's config already put -gencode flags for TORCH_CUDA_ARCH_LIST into
  # CMAKE_CUDA_FLAGS; keep CMake from adding its own.
  set(CMAKE_CUDA_ARCHITECTURES OFF)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(LLMCTL_HAVE_CUDA ON)
  endif()
endif()
message(STATUS "llmctl CUDA kernels: ${LLMCTL_HAVE_CUDA}")

# Locate LibTorch inside the PyPI torch wheel installed in the project venv (or any python
# given with -DLLMCTL_PYTHON=...). torch.utils.cmake_prefix_path points at its CMake config.
if(NOT Torch_DIR)
  set(LLMCTL_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH "Python with torch")
  if(NOT EXISTS "${LLMCTL_PYTHON}")
    find_program(_py python3)
    set(LLMCTL_PYTHON "${_py}" CACHE FILEPATH "Python with torch" FORCE)
  endif()
  execute_process(
    COMMAND "${LLMCTL_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _rc ERROR_QUIET)
  if(_rc EQUAL 0 AND _torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
    message(STATUS "LibTorch from ${LLMCTL_PYTHON}: ${_torch_prefix}")
  else()
    message(STATUS "No torch in ${LLMCTL_PYTHON}; falling back to a system LibTorch")
  endif()
endif()

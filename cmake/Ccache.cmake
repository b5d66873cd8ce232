# Use ccache when present. The sloppiness settings let ccache hit on sources that use
# the torch precompiled header (whose mtime changes on every rebuild of the PCH).
find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(_ccache_env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime)
  foreach(lang C CXX CUDA)
    set(CMAKE_${lang}_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env ${_ccache_env} ${CCACHE_PROGRAM}
        CACHE STRING "" )
  endforeach()
  message(STATUS "ccache: ${CCACHE_PROGRAM}")
endif()

# Run as a script (cmake -P): writes OUT, a C++ source defining
#   const char* llmctl::NAMESPACE::FUNCTION()
# that returns the text of IN, so the binary carries the file (a web page) with it.
file(READ "${IN}" _text)
string(FIND "${_text}" ")llmctl_text\"" _clash)
if(NOT _clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )llmctl_text\"")
endif()
file(WRITE "${OUT}.tmp"
"// Generated from ${IN} by cmake/EmbedText.cmake. Do not edit.
namespace llmctl::${NAMESPACE} {
const char* ${FUNCTION}() {
  return R\"llmctl_text(${_text})llmctl_text\";
}
}  // namespace llmctl::${NAMESPACE}
")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")

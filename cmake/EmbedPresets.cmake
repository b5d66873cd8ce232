# Run as a script (cmake -P): writes OUT, a C++ source that returns every configs/*.json
# as (name, text), so the binary carries its presets wherever it is installed.
file(GLOB _configs "${CONFIG_DIR}/*.json")
list(SORT _configs)
set(_body "")
foreach(_f IN LISTS _configs)
  get_filename_component(_name "${_f}" NAME_WE)
  file(READ "${_f}" _text)
  string(APPEND _body "      {\"${_name}\", R\"llmctl_json(${_text})llmctl_json\"},\n")
endforeach()
file(WRITE "${OUT}.tmp"
"// Generated from configs/*.json by cmake/EmbedPresets.cmake. Do not edit.
#include <string>
#include <utility>
#include <vector>
namespace llmctl {
const std::vector<std::pair<std::string, std::string>>& embedded_presets() {
  static const std::vector<std::pair<std::string, std::string>> presets = {
${_body}  };
  return presets;
}
}  // namespace llmctl
")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")

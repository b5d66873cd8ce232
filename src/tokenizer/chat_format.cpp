#include "llmctl/tokenizer/chat_format.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

const ChatFormatInfo& chat_format_info(ChatFormat f) {
  static const ChatFormatInfo chatml{"chatml", kImEnd, "\n"};
  static const ChatFormatInfo llama2{"llama2", "</s>", ""};
  return f == ChatFormat::Llama2 ? llama2 : chatml;
}

ChatFormat detect_chat_format(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return ChatFormat::ChatML;
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("chat_template")) return ChatFormat::ChatML;
  std::string tmpl;
  const auto& t = j["chat_template"];
  if (t.is_string()) {
    tmpl = t.get<std::string>();
  } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        tmpl = e["template"].get<std::string>();
  }
  if (tmpl.find("<|im_start|>") != std::string::npos) return ChatFormat::ChatML;
  if (tmpl.find("[INST]") != std::string::npos) return ChatFormat::Llama2;
  return ChatFormat::ChatML;
}

namespace {

// The answer follows " [/INST]" directly: the template has no separate generation prompt.
std::string render_llama2(const std::vector<Message>& messages) {
  std::string out, system;
  for (const auto& m : messages) {
    if (m.role == "system") {
      system = m.content;
    } else if (m.role == "user") {
      out += "<s>[INST] ";
      if (!system.empty()) out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
      system.clear();
      out += m.content + " [/INST]";
    } else {  // assistant
      out += " " + m.content + " </s>";
    }
  }
  return out;
}

}  // namespace

std::string render_chat(const std::vector<Message>& messages, ChatFormat f, bool add_generation_prompt) {
  return f == ChatFormat::Llama2 ? render_llama2(messages)
                                 : Tokenizer::render_chatml(messages, add_generation_prompt);
}

}  // namespace llmctl

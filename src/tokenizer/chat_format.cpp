#include "llmctl/tokenizer/chat_format.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

const ChatFormatInfo& chat_format_info(ChatFormat f) {
  static const ChatFormatInfo chatml{"chatml", kImEnd, "\n", ""};
  static const ChatFormatInfo llama2{"llama2", "</s>", "", ""};
  static const ChatFormatInfo llama3{"llama3", "<|eot_id|>", "", "<|begin_of_text|>"};
  switch (f) {
    case ChatFormat::Llama2: return llama2;
    case ChatFormat::Llama3: return llama3;
    default: return chatml;
  }
}

ChatFormat chat_format_of_template(const std::string& tmpl) {
  if (tmpl.find("<|start_header_id|>") != std::string::npos) return ChatFormat::Llama3;
  if (tmpl.find("<|im_start|>") != std::string::npos) return ChatFormat::ChatML;
  if (tmpl.find("[INST]") != std::string::npos) return ChatFormat::Llama2;
  return ChatFormat::ChatML;
}

bool is_known_chat_template(const std::string& tmpl) {
  for (const char* marker : {"<|start_header_id|>", "<|im_start|>", "[INST]"})
    if (tmpl.find(marker) != std::string::npos) return true;
  return false;
}

std::string default_system_prompt(const std::string& tmpl) {
  // ChatML templates write it as a literal: '<|im_start|>system\nYou are ...<|im_end|>\n'
  // (in the template source the newline is the two characters backslash, n).
  static const std::string open = "<|im_start|>system\\n";
  for (std::size_t at = tmpl.find(open); at != std::string::npos; at = tmpl.find(open, at + 1)) {
    const std::size_t begin = at + open.size();
    const std::size_t end = tmpl.find("<|im_end|>", begin);
    if (end == std::string::npos) break;
    const std::string text = tmpl.substr(begin, end - begin);
    // A literal has no template syntax or string concatenation in it.
    if (text.empty() || text.find_first_of("{}'\"+") != std::string::npos) continue;
    return text;
  }
  return {};
}

ChatFormat detect_chat_format(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return ChatFormat::ChatML;
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("chat_template")) return ChatFormat::ChatML;
  return chat_format_of_template(chat_template_of(j));
}

std::string chat_template_of(const nlohmann::json& j) {
  std::string tmpl;
  if (!j.is_object() || !j.contains("chat_template")) return tmpl;
  const auto& t = j["chat_template"];
  if (t.is_string()) {
    tmpl = t.get<std::string>();
  } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        tmpl = e["template"].get<std::string>();
  }
  return tmpl;
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

// Llama 3 trims each message's content (its template applies `| trim`).
std::string render_llama3(const std::vector<Message>& messages, bool add_generation_prompt) {
  auto trim = [](const std::string& s) {
    const auto b = s.find_first_not_of(" \t\n\r");
    return b == std::string::npos ? std::string() : s.substr(b, s.find_last_not_of(" \t\n\r") - b + 1);
  };
  std::string out;
  for (const auto& m : messages)
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

std::string render_chat(const std::vector<Message>& messages, ChatFormat f, bool add_generation_prompt,
                        bool start_of_conversation) {
  std::string out = start_of_conversation ? chat_format_info(f).conversation_start : "";
  switch (f) {
    case ChatFormat::Llama2: return out + render_llama2(messages);
    case ChatFormat::Llama3: return out + render_llama3(messages, add_generation_prompt);
    default: return out + Tokenizer::render_chatml(messages, add_generation_prompt);
  }
}

ChatTemplate ChatTemplate::from_template(const std::string& chat_template) {
  ChatTemplate t;
  t.format = chat_format_of_template(chat_template);
  t.default_system = default_system_prompt(chat_template);
  t.recognised = chat_template.empty() || is_known_chat_template(chat_template);
  return t;
}

std::string ChatTemplate::render(const std::vector<Message>& messages, bool add_generation_prompt,
                                 bool start_of_conversation) const {
  if (start_of_conversation && !default_system.empty() && (messages.empty() || messages.front().role != "system")) {
    std::vector<Message> with_system{{"system", default_system}};
    with_system.insert(with_system.end(), messages.begin(), messages.end());
    return render_chat(with_system, format, add_generation_prompt, true);
  }
  return render_chat(messages, format, add_generation_prompt, start_of_conversation);
}

}  // namespace llmctl

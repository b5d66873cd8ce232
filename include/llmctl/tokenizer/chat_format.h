#pragma once
// How a conversation becomes a prompt. ChatML is llmctl's own format (and minimind's, Qwen's):
//   <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
// A model whose chat_template (tokenizer_config.json, or a GGUF's tokenizer.chat_template)
// belongs to another known family gets that family's format instead:
//   Llama 2 / Mistral ([INST]):  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
//   Llama 3:  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//             <|start_header_id|>assistant<|end_header_id|>\n\n
// Templates are recognised, not executed: llmctl has no Jinja interpreter, so a family not
// listed here falls back to ChatML (with a warning from callers that know the template).
// Each message renders on its own, so a conversation can grow turn by turn as token ids.
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "llmctl/data/jsonl.h"

namespace llmctl {

enum class ChatFormat { ChatML, Llama2, Llama3 };

struct ChatFormatInfo {
  const char* name;
  const char* end_token;  // the special token the model emits to end its turn
  const char* after_end;  // what the template writes after it, before the next turn
  const char* conversation_start;  // written once before the first message (Llama 3's BOS)
};
const ChatFormatInfo& chat_format_info(ChatFormat f);

// From DIR/tokenizer_config.json's chat_template (a string, or a list of {name, template}).
ChatFormat detect_chat_format(const std::string& dir);
// The chat_template of a parsed tokenizer_config.json: a string, or the "default" entry of a
// list of {name, template}; "" when absent.
std::string chat_template_of(const nlohmann::json& tokenizer_config);
// From the template text: "<|start_header_id|>" -> Llama3, "[INST]" -> Llama2; ChatML
// otherwise (empty, ChatML itself, or a family not known here).
ChatFormat chat_format_of_template(const std::string& chat_template);
// True when the template is one llmctl renders exactly (ChatML, Llama 2, Llama 3 families).
bool is_known_chat_template(const std::string& chat_template);
// The system prompt a template inserts when the conversation has none (Qwen2.5's "You are
// Qwen, created by Alibaba Cloud. ..."): a literal system turn in the template; "" if none.
std::string default_system_prompt(const std::string& chat_template);

// The prompt text of `messages` (a system message folds into the next user turn for Llama2);
// add_generation_prompt opens the assistant's turn; start_of_conversation writes the
// format's conversation_start first.
std::string render_chat(const std::vector<Message>& messages, ChatFormat f, bool add_generation_prompt,
                        bool start_of_conversation = true);

// A model's chat template as llmctl renders it: the family plus the default system prompt.
struct ChatTemplate {
  ChatFormat format = ChatFormat::ChatML;
  std::string default_system;  // inserted when a conversation starts without a system turn
  bool recognised = true;      // false: an unknown family, rendered as ChatML

  static ChatTemplate from_template(const std::string& chat_template);
  const ChatFormatInfo& info() const { return chat_format_info(format); }
  std::string render(const std::vector<Message>& messages, bool add_generation_prompt,
                     bool start_of_conversation = true) const;
};

}  // namespace llmctl

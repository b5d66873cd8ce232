#pragma once
// How a conversation becomes a prompt. ChatML is llmctl's own format (and minimind's, Qwen's):
//   <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
// A model directory whose tokenizer_config.json carries another known family's
// chat_template gets that family's format instead:
//   Llama 2 / Mistral ([INST]):  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
// Each message renders on its own, so a conversation can grow turn by turn as token ids.
#include <string>
#include <vector>

#include "llmctl/data/jsonl.h"

namespace llmctl {

enum class ChatFormat { ChatML, Llama2 };

struct ChatFormatInfo {
  const char* name;
  const char* end_token;  // the special token the model emits to end its turn
  const char* after_end;  // what the template writes after it, before the next turn
};
const ChatFormatInfo& chat_format_info(ChatFormat f);

// From DIR/tokenizer_config.json's chat_template (a string, or a list of {name, template}):
// "[INST]" -> Llama2; ChatML otherwise (absent, ChatML itself, or a family not known here).
ChatFormat detect_chat_format(const std::string& dir);

// The prompt text of `messages` (a system message folds into the next user turn for Llama2);
// add_generation_prompt opens the assistant's turn.
std::string render_chat(const std::vector<Message>& messages, ChatFormat f, bool add_generation_prompt);

}  // namespace llmctl

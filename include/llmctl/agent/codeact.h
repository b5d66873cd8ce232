#pragma once
// The CodeAct loop (Wang et al. 2024, "Executable Code Actions Elicit Better LLM Agents"):
// the model acts by writing Python; every code block in its answer runs in a persistent
// sandboxed interpreter and what it printed goes back as the next message, until the model
// answers without code or the turn budget is spent.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "llmctl/agent/sandbox.h"
#include "llmctl/data/jsonl.h"  // Message

namespace llmctl::agent {

// The code the model wants run, in order: ```python / ```py / ``` fenced blocks and
// <execute>...</execute> blocks (M3ToolEval's convention). A fence left open at the end of
// the answer (the model ran out of tokens) counts too.
std::vector<std::string> extract_code_blocks(const std::string& answer);

// The system prompt: how to act, plus the tools as Python stubs (signature + docstring).
std::string codeact_system_prompt(const std::string& tool_stubs);

// Where replies come from: an in-process engine or an OpenAI-compatible server.
class ChatBackend {
 public:
  virtual ~ChatBackend() = default;
  // The assistant's next message; text deltas go to on_delta as they are produced.
  virtual std::string complete(const std::vector<Message>& messages,
                               const std::function<void(const std::string&)>& on_delta) = 0;
  virtual std::string name() const = 0;  // the model, for transcripts
};

struct TurnRecord {
  int turn = 0;
  std::string assistant;            // the model's whole message
  std::vector<std::string> code;    // the blocks run, in order
  std::string output;               // what went back to the model ("" when no code)
  std::string status = "answer";    // answer | ok | error | timeout | crashed | interrupted
  bool restarted = false;           // the interpreter lost its state in this turn
  double model_s = 0, exec_s = 0;
};

struct TaskResult {
  std::string final_text;  // the last message without code (or the last message at max turns)
  std::string finish;      // "answer" | "max_turns" | "interrupted"
  std::vector<TurnRecord> turns;
  double seconds = 0;
};

struct AgentHooks {
  std::function<void(const std::string&)> on_delta;    // model text as it streams
  std::function<void(const TurnRecord&)> on_turn;      // after each turn (code run, if any)
};

class Agent {
 public:
  // `interrupt` (Ctrl-C), when set after a reply or an execution, ends the task there.
  Agent(ChatBackend& backend, Sandbox& sandbox, std::string system_prompt, int max_turns,
        const std::atomic<bool>* interrupt = nullptr);
  // One user task, run to its answer; the conversation (and the interpreter) carry on.
  TaskResult run(const std::string& task, const AgentHooks& hooks = {});
  // Forgets the conversation and the interpreter's state.
  void reset();
  const std::vector<Message>& messages() const { return messages_; }

 private:
  ChatBackend& backend_;
  Sandbox& sandbox_;
  std::string system_prompt_;
  int max_turns_;
  const std::atomic<bool>* interrupt_;
  std::vector<Message> messages_;
};

// The text sent back to the model after running `blocks` (outputs in order, stopping at
// the first block that failed).
std::string observation(const std::vector<ExecResult>& results, std::size_t blocks);

}  // namespace llmctl::agent

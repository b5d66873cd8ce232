#include "llmctl/agent/codeact.h"

#include <algorithm>
#include <cctype>
#include <chrono>

#include "llmctl/util/clock.h"

namespace llmctl::agent {

namespace {



std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool is_python_tag(const std::string& lang) {
  const auto l = lower(lang);
  return l.empty() || l == "python" || l == "py" || l == "python3" || l == "ipython";
}

std::vector<std::string> fenced_blocks(const std::string& answer) {
  std::vector<std::string> blocks;
  std::string code;
  bool inside = false, python = false;
  std::size_t pos = 0;
  while (pos < answer.size()) {
    const auto nl = std::min(answer.find('\n', pos), answer.size());
    const std::string line = answer.substr(pos, nl - pos);
    const std::string t = trim(line);
    if (!inside && t.rfind("```", 0) == 0) {
      inside = true;
      python = is_python_tag(trim(t.substr(3)));
      code.clear();
    } else if (inside && t.rfind("```", 0) == 0 && trim(t.substr(3)).empty()) {
      inside = false;
      if (python && !trim(code).empty()) blocks.push_back(code);
    } else if (inside) {
      code += line + "\n";
    }
    pos = nl + 1;
  }
  if (inside && python && !trim(code).empty()) blocks.push_back(code);  // cut off mid-block
  return blocks;
}

std::vector<std::string> execute_tags(const std::string& answer) {
  std::vector<std::string> blocks;
  const std::string open = "<execute>", close = "</execute>";
  std::size_t pos = 0;
  while ((pos = answer.find(open, pos)) != std::string::npos) {
    pos += open.size();
    const auto end = answer.find(close, pos);
    std::string code = answer.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    // The tags may wrap a fenced block.
    const auto inner = fenced_blocks(code);
    if (!inner.empty()) blocks.insert(blocks.end(), inner.begin(), inner.end());
    else if (!trim(code).empty()) blocks.push_back(code);
    if (end == std::string::npos) break;
    pos = end + close.size();
  }
  return blocks;
}

}  // namespace

std::vector<std::string> extract_code_blocks(const std::string& answer) {
  if (answer.find("<execute>") != std::string::npos) return execute_tags(answer);
  return fenced_blocks(answer);
}

std::string codeact_system_prompt(const std::string& tool_stubs) {
  std::string p =
      "You are a helpful assistant that solves tasks by writing and running Python code.\n"
      "Answer each message either with Python code to run (a step) or with plain text (a "
      "question to the user, or the final answer). To run code, put it in a ```python fenced block. The code runs in a persistent Python "
      "interpreter: variables, imports and functions stay defined between blocks and turns. "
      "Use print() to see values. After each message with code you will get its output "
      "(stdout and stderr) in the next message. There is no network access; files can be "
      "written in the current directory.\n"
      "When you know the result, reply without any code block and end your reply with "
      "\"Answer: <the final answer>\".";
  if (!tool_stubs.empty())
    p += "\n\nThese functions are already defined in the interpreter; call them directly:\n```python\n" + tool_stubs +
         "```";
  return p;
}

std::string observation(const std::vector<ExecResult>& results, std::size_t blocks) {
  std::string out;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    if (results.size() > 1) out += "Block " + std::to_string(i + 1) + ":\n";
    out += r.output.empty() ? "<code ran, no output>\n" : r.output;
    if (!out.empty() && out.back() != '\n') out += '\n';
  }
  if (results.size() < blocks)
    out += "(the remaining " + std::to_string(blocks - results.size()) + " block(s) were not run after the error)\n";
  return "Execution output:\n```\n" + out + "```";
}

Agent::Agent(ChatBackend& backend, Sandbox& sandbox, std::string system_prompt, int max_turns,
             const std::atomic<bool>* interrupt)
    : backend_(backend), sandbox_(sandbox), system_prompt_(std::move(system_prompt)), max_turns_(max_turns),
      interrupt_(interrupt) {
  reset();
}

void Agent::reset() {
  messages_.clear();
  if (!system_prompt_.empty()) messages_.push_back({"system", system_prompt_});
}

TaskResult Agent::run(const std::string& task, const AgentHooks& hooks) {
  TaskResult result;
  const auto t0 = Clock::now();
  messages_.push_back({"user", task});
  result.finish = "max_turns";
  for (int turn = 1; turn <= max_turns_; ++turn) {
    TurnRecord rec;
    rec.turn = turn;
    const auto tm = Clock::now();
    rec.assistant = backend_.complete(messages_, hooks.on_delta ? hooks.on_delta : [](const std::string&) {});
    rec.model_s = seconds_since(tm);
    messages_.push_back({"assistant", rec.assistant});
    const auto stopped = [&] { return interrupt_ && interrupt_->load(); };
    rec.code = extract_code_blocks(rec.assistant);
    result.final_text = rec.assistant;
    if (stopped()) {  // a reply cut short by the user: its code is not run
      rec.code.clear();
      rec.status = "interrupted";
      result.finish = "interrupted";
      result.turns.push_back(rec);
      if (hooks.on_turn) hooks.on_turn(rec);
      break;
    }
    if (rec.code.empty()) {
      result.finish = "answer";
      result.turns.push_back(rec);
      if (hooks.on_turn) hooks.on_turn(rec);
      break;
    }
    const auto te = Clock::now();
    std::vector<ExecResult> runs;
    for (const auto& code : rec.code) {
      runs.push_back(sandbox_.run(code));
      rec.restarted = rec.restarted || runs.back().restarted;
      if (runs.back().status != ExecResult::Status::Ok) break;
    }
    rec.exec_s = seconds_since(te);
    rec.status = status_name(runs.back().status);
    rec.output = observation(runs, rec.code.size());
    messages_.push_back({"user", rec.output});
    result.turns.push_back(rec);
    if (hooks.on_turn) hooks.on_turn(rec);
    if (stopped()) {
      result.finish = "interrupted";
      break;
    }
  }
  result.seconds = seconds_since(t0);
  return result;
}

}  // namespace llmctl::agent

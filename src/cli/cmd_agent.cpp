// llmctl agent: a CodeAct REPL. The model (in-process or behind an OpenAI-compatible
// endpoint) acts by writing Python; each code block runs in a sandboxed persistent
// interpreter and its output goes back to the model until it answers without code.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>

#include "common.h"
#include "llmctl/agent/backends.h"
#include "llmctl/agent/codeact.h"
#include "llmctl/agent/sandbox.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl::cli {

namespace {

using json = nlohmann::json;
using agent::TaskResult;
using agent::TurnRecord;

json turn_json(const TurnRecord& t) {
  return {{"turn", t.turn},       {"assistant", t.assistant}, {"code", t.code},       {"output", t.output},
          {"status", t.status},   {"restarted", t.restarted}, {"model_s", t.model_s}, {"exec_s", t.exec_s}};
}

// The text after the last "Answer:" in the final message (the prompt asks for it), else
// the whole message: what exact-match scoring compares.
std::string final_answer(const std::string& text) {
  const auto at = text.rfind("Answer:");
  std::string a = at == std::string::npos ? text : text.substr(at + 7);
  const auto b = a.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return a.substr(b, a.find_last_not_of(" \t\r\n") - b + 1);
}

json task_json(const TaskResult& r) {
  json turns = json::array();
  for (const auto& t : r.turns) turns.push_back(turn_json(t));
  return {{"final", r.final_text}, {"answer", final_answer(r.final_text)}, {"finish", r.finish},
          {"turns", turns},        {"seconds", r.seconds}};
}

std::string now_iso() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Appends one JSON object per line and flushes it at once, so a killed agent keeps every
// turn it finished.
class Transcript {
 public:
  explicit Transcript(const std::string& path) {
    if (path.empty()) return;
    f_ = std::fopen(path.c_str(), "a");
    if (!f_) throw Error("--transcript " + path + ": cannot open for appending");
  }
  ~Transcript() {
    if (f_) std::fclose(f_);
  }
  void write(json j) {
    if (!f_) return;
    j["time"] = now_iso();
    const auto line = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    std::fwrite(line.data(), 1, line.size(), f_);
    std::fflush(f_);
  }

 private:
  std::FILE* f_ = nullptr;
};

struct Opts {
  std::string model, endpoint, model_name, api_key, tools, prompt, transcript;
  int max_turns = 10;
  bool json = false;
  agent::SandboxConfig sandbox;
  SamplingFlags sampling;
  EngineFlags engine;
};

void run_agent(const Opts& o) {
  o.sampling.get();  // flag errors before the (slow) model load
  // Ctrl-C stops the current reply or execution, not the session (and so the work dir
  // is still removed at exit).
  install_sigint_handler();
  auto sandbox_cfg = o.sandbox;
  sandbox_cfg.interrupt = &ctrl_c();
  agent::Sandbox sandbox(sandbox_cfg);
  if (!sandbox.sandboxed())
    std::fprintf(stderr, "llmctl agent: WARNING: --unsafe-no-sandbox: model-written code runs without isolation "
                         "(network, your files); only rlimits and timeouts apply\n");
  std::string stubs;
  if (!o.tools.empty()) stubs = sandbox.load_tools(read_file(o.tools));

  std::unique_ptr<Engine> engine;
  std::unique_ptr<agent::ChatBackend> backend;
  if (!o.model.empty()) {
    engine = std::make_unique<Engine>(o.model, o.engine.get());
    const auto name = std::filesystem::path(o.model).filename().string();
    backend = std::make_unique<agent::EngineBackend>(*engine, o.sampling.get(&engine->model_config().generation), name,
                                                     &ctrl_c());
  } else {
    backend = std::make_unique<agent::OpenAIBackend>(o.endpoint, o.model_name, o.api_key, o.sampling.get(), &ctrl_c());
  }
  agent::Agent agent(*backend, sandbox, agent::codeact_system_prompt(stubs), o.max_turns, &ctrl_c());
  Transcript transcript(o.transcript);
  const bool tty = isatty(STDIN_FILENO);
  if (!o.json)
    std::fprintf(stderr, "llmctl agent: model %s; code runs in a %s\n", backend->name().c_str(), sandbox.describe().c_str());

  int task_no = 0;
  std::size_t seen = 0;  // messages already in the transcript (the system prompt comes with the first turn)
  auto run_task = [&](const std::string& task) {
    ++task_no;
    ctrl_c() = false;
    transcript.write({{"event", "task"}, {"task", task_no}, {"model", backend->name()}, {"user", task}});
    agent::AgentHooks hooks;
    if (!o.json) {
      hooks.on_delta = [](const std::string& d) {
        std::fwrite(d.data(), 1, d.size(), stdout);
        std::fflush(stdout);
      };
    }
    hooks.on_turn = [&](const TurnRecord& t) {
      json rec = turn_json(t);
      rec["event"] = "turn";
      rec["task"] = task_no;
      json msgs = json::array();  // what this turn added to the conversation
      const auto& all = agent.messages();
      for (std::size_t i = seen; i < all.size(); ++i) msgs.push_back({{"role", all[i].role}, {"content", all[i].content}});
      seen = all.size();
      rec["messages"] = msgs;
      transcript.write(rec);
      if (!o.json && !t.code.empty()) {
        std::printf("\n\033[2m--- ran %zu block(s): %s, %.2f s%s ---\n%s\033[0m\n", t.code.size(), t.status.c_str(), t.exec_s,
                    t.restarted ? ", interpreter restarted" : "", t.output.c_str());
        std::fflush(stdout);
      }
    };
    const auto r = agent.run(task, hooks);
    transcript.write({{"event", "final"}, {"task", task_no}, {"final", r.final_text}, {"answer", final_answer(r.final_text)},
                      {"finish", r.finish}, {"turns", r.turns.size()}, {"seconds", r.seconds}});
    if (o.json) {
      std::cout << task_json(r).dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
    } else {
      if (r.finish == "max_turns") std::printf("\n[stopped after --max-turns %d]", o.max_turns);
      if (r.finish == "interrupted") std::printf("\n[stopped]");
      std::printf("\n");
      std::fflush(stdout);
    }
  };

  if (!o.prompt.empty()) {
    run_task(o.prompt);
    return;
  }
  if (tty)
    std::fprintf(stderr, "Type a task. Ctrl-C stops a reply or a running block; /reset forgets the conversation "
                         "and the interpreter; /exit leaves.\n");
  std::string line;
  while (read_repl_line(line, tty)) {
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      agent.reset();
      sandbox.restart();
      seen = 0;
      transcript.write({{"event", "reset"}});
      if (tty) std::fprintf(stderr, "(conversation and interpreter reset)\n");
      continue;
    }
    run_task(line);
  }
}

}  // namespace

void add_agent(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("agent", "CodeAct agent: the model solves tasks by running Python in a sandbox");
  sub->footer(
      "Each code block in the model's answer runs in a persistent Python interpreter under bubblewrap\n"
      "(no network, read-only system, private work dir, rlimits, non-root); the output goes back to the\n"
      "model until it answers without code. REPL commands: /reset, /exit; Ctrl-C stops a reply or a running block.");
  auto* model = sub->add_option("--model", o->model, "Run this model in-process (directory or .gguf)")->check(CLI::ExistingPath);
  auto* endpoint = sub->add_option("--endpoint", o->endpoint,
                                   "Use an OpenAI-compatible server instead (http://host:port: llmctl serve, vLLM, LMDeploy)");
  model->excludes(endpoint);
  sub->add_option("--model-name", o->model_name, "The model name sent to --endpoint (default: its first model)")->needs(endpoint);
  sub->add_option("--api-key", o->api_key, "Bearer token for --endpoint")->needs(endpoint);
  sub->add_option("--tools", o->tools, "Python file whose functions are loaded into the interpreter and described to the model")
      ->check(CLI::ExistingFile);
  sub->add_option("--prompt", o->prompt, "Solve this one task and exit");
  sub->add_option("--max-turns", o->max_turns, "Most model replies per task")->capture_default_str()->check(CLI::Range(1, 1000));
  sub->add_option("--transcript", o->transcript, "Append every turn (messages, code, outputs, timings) to this JSONL file");
  sub->add_flag("--json", o->json, "Print one JSON object per task (final answer, turns, timings) instead of streaming");
  auto* g = sub->add_option_group("Sandbox");
  g->add_option("--workdir", o->sandbox.workdir, "Writable work dir the code sees (default: a fresh temp dir, removed at exit)");
  g->add_option("--timeout", o->sandbox.timeout_s, "Wall-clock seconds per code execution; the interpreter is restarted after")
      ->capture_default_str()->check(CLI::PositiveNumber);
  g->add_option("--cpu-limit", o->sandbox.cpu_s, "CPU seconds per code execution")->capture_default_str()->check(CLI::PositiveNumber);
  g->add_option("--memory-mb", o->sandbox.memory_mb, "Address-space limit of the interpreter (MB)")
      ->capture_default_str()->check(CLI::Range(64L, 1L << 20));
  g->add_option("--output-limit", o->sandbox.output_limit, "Bytes of output per execution the model sees (the rest is cut)")
      ->capture_default_str()->check(CLI::Range(std::size_t{64}, std::size_t{1} << 24));
  g->add_option("--python", o->sandbox.python, "Python interpreter to run the code with")->capture_default_str();
  g->add_flag("--unsafe-no-sandbox", o->sandbox.unsafe_no_sandbox,
              "Run code without bubblewrap (only rlimits and timeouts): for machines without it, at your own risk");
  o->sampling.add_to(sub);
  o->engine.add_to(sub);
  sub->callback([o] {
    if (o->model.empty() && o->endpoint.empty()) throw Error("give --model DIR or --endpoint URL");
    run_agent(*o);
  });
}

}  // namespace llmctl::cli

// llmctl chat: a multi-turn REPL (or one answer with --prompt) on the inference engine.
// The conversation is kept as token ids: each turn appends the new user message to what
// the model already saw (its own answer tokens included), so the prefix cache serves the
// whole history and only the new message is computed (LMDeploy's stateful chat).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"

namespace llmctl::cli {

namespace {

struct Turn {
  RequestOutput out;
  bool interrupted = false;
};

class ChatSession {
 public:
  ChatSession(Engine& engine, ChatTemplate tmpl, SamplingParams params, bool raw, bool stream)
      : engine_(engine), tok_(engine.tokenizer_ptr()), tmpl_(std::move(tmpl)), params_(std::move(params)), raw_(raw),
        stream_(stream) {}

  void set_system(const std::string& s) {
    system_ = s;
    reset();
  }
  void reset() { history_.clear(); }

  // Plain completion of given token ids (scripts, tokenizer-less model dirs).
  Turn complete(const std::vector<int>& ids) { return run(ids); }

  Turn ask(const std::string& user) {
    const auto prompt = raw_ ? tok_->encode(user) : next_prompt(user);
    Turn t = run(prompt);
    if (!raw_) remember(prompt, t.out);
    return t;
  }

 private:
  // The new turn in the model's chat format, appended to the conversation's tokens.
  std::vector<int> next_prompt(const std::string& user) {
    std::vector<int> ids = history_;
    std::vector<Message> turn;
    if (ids.empty() && !system_.empty()) turn.push_back({"system", system_});
    turn.push_back({"user", user});
    const auto more = tok_->encode(tmpl_.render(turn, true, /*start_of_conversation=*/history_.empty()));
    ids.insert(ids.end(), more.begin(), more.end());
    return ids;
  }

  // The history keeps the answer's own tokens (what the model saw), closed with the
  // format's end of turn (ChatML: <|im_end|>\n), so the next turn's prompt extends this one
  // token for token and hits the prefix cache. Only an answer cut by a stop string is
  // re-tokenised from the text shown, since its tokens carry the stop string.
  void remember(const std::vector<int>& prompt, const RequestOutput& out) {
    const auto& fmt = tmpl_.info();
    history_ = prompt;
    const int end = tok_->piece_to_id(fmt.end_token);
    auto ids = out.output_token_ids;
    const bool ended_by_model = !ids.empty() && ids.back() == end;
    if (out.finish_reason == "stop" && !ended_by_model) {
      const auto closing = tok_->encode(out.text + fmt.end_token + fmt.after_end);
      history_.insert(history_.end(), closing.begin(), closing.end());
      return;
    }
    if (!ended_by_model) ids.push_back(end);
    history_.insert(history_.end(), ids.begin(), ids.end());
    const auto after = tok_->encode(fmt.after_end);
    history_.insert(history_.end(), after.begin(), after.end());
  }

  // Runs one request to its end (or Ctrl-C), streaming each text delta as it comes; the
  // returned output carries the whole text.
  Turn run(const std::vector<int>& prompt) {
    Turn t;
    const auto id = engine_.add_request(prompt, params_);
    std::string text;
    auto take = [&](RequestOutput o) {
      text += o.text;
      if (stream_ && !o.text.empty()) {
        std::fwrite(o.text.data(), 1, o.text.size(), stdout);
        std::fflush(stdout);
      }
      if (o.finished) t.out = std::move(o);
    };
    ctrl_c() = false;
    while (!t.out.finished) {
      if (ctrl_c()) {
        take(engine_.cancel(id));
        t.interrupted = true;
        break;
      }
      for (auto& o : engine_.step())
        if (o.id == id) take(std::move(o));
    }
    t.out.text = std::move(text);
    return t;
  }

  Engine& engine_;
  const Tokenizer* tok_;  // null for tokenizer-less model dirs (--prompt-ids only)
  ChatTemplate tmpl_;
  SamplingParams params_;
  bool raw_, stream_;
  std::string system_;
  std::vector<int> history_;
};

nlohmann::json turn_json(const Turn& t) {
  const auto& o = t.out;
  const int n_out = static_cast<int>(o.output_token_ids.size());
  const double decode_s = o.total_s - o.ttft_s;
  return {{"text", o.text},
          {"prompt_token_ids", o.prompt_token_ids},
          {"output_token_ids", o.output_token_ids},
          {"finish_reason", o.finish_reason},
          {"timings",
           {{"prompt_tokens", o.prompt_token_ids.size()},
            {"cached_prompt_tokens", o.num_cached_prompt_tokens},
            {"output_tokens", n_out},
            {"ttft_s", o.ttft_s},
            {"total_s", o.total_s},
            {"decode_tokens_per_s", n_out > 1 && decode_s > 0 ? (n_out - 1) / decode_s : 0.0}}}};
}

}  // namespace

void add_chat(CLI::App& app) {
  struct Opts {
    std::string model, prompt, prompt_ids, system;
    bool raw = false, json = false;
    SamplingFlags sampling;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("chat", "Chat with a model (multi-turn REPL), or answer one --prompt");
  sub->footer(
      "REPL commands: /reset (forget the conversation), /system TEXT (new system prompt, resets), /exit.\n"
      "Ctrl-C stops the current answer; Ctrl-D or /exit leaves.");
  sub->add_option("--model", o->model, "Model directory or .gguf file")->required()->check(CLI::ExistingPath);
  sub->add_option("--prompt", o->prompt, "Answer this once and exit");
  auto* ids = sub->add_option("--prompt-ids", o->prompt_ids,
                              "Complete these comma-separated token ids once and exit (no template, no tokenizer needed)");
  ids->excludes(sub->get_option("--prompt"));
  sub->add_option("--system", o->system, "System prompt");
  sub->add_flag("--raw", o->raw, "Plain completion without the chat template (for pretrained models)");
  sub->add_flag("--json", o->json, "Print one JSON object per answer: text, token ids, finish reason, timings");
  o->sampling.add_to(sub);
  o->engine.add_to(sub);
  sub->callback([o] {
    o->sampling.get();  // flag errors before the (slow) model load
    install_sigint_handler();  // from the start: Ctrl-C while loading must not kill the REPL
    Engine engine(o->model, o->engine.get());
    // Sampling flags left unset take the model's generation_config.json defaults.
    const auto params = o->sampling.get(&engine.model_config().generation);
    ChatSession chat(engine, engine.chat_template(), params, o->raw, !o->json);
    if (!o->prompt_ids.empty()) {
      auto t = chat.complete(parse_id_list(o->prompt_ids, "--prompt-ids"));
      if (o->json)
        print_json(turn_json(t));
      else
        std::printf("%s\n", nlohmann::json(t.out.output_token_ids).dump().c_str());
      return;
    }
    if (!engine.has_tokenizer()) throw Error("--model " + o->model + " has no tokenizer.model (use --prompt-ids)");
    if (!o->system.empty()) chat.set_system(o->system);

    if (!o->prompt.empty()) {
      auto t = chat.ask(o->prompt);
      if (o->json)
        print_json(turn_json(t));
      else
        std::printf("\n");
      return;
    }
    const bool tty = isatty(STDIN_FILENO);
    if (tty)
      std::fprintf(stderr, "llmctl chat: %s (KV cache %s). /reset, /system TEXT, /exit; Ctrl-C stops an answer.\n",
                   o->model.c_str(),
                   engine.config().kv_dtype == "auto" ? engine.config().dtype.c_str()
                                                      : engine.config().kv_dtype.c_str());
    std::string line;
    while (read_repl_line(line, tty)) {
      if (line.empty()) continue;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        chat.reset();
        if (tty) std::fprintf(stderr, "(conversation reset)\n");
        continue;
      }
      if (line.rfind("/system", 0) == 0) {
        chat.set_system(line.size() > 8 ? line.substr(8) : "");
        if (tty) std::fprintf(stderr, "(system prompt set, conversation reset)\n");
        continue;
      }
      auto t = chat.ask(line);
      if (o->json) {
        std::cout << turn_json(t).dump() << std::endl;
      } else {
        std::printf(t.interrupted ? " [stopped]\n" : "\n");
        std::fflush(stdout);
      }
    }
  });
}

}  // namespace llmctl::cli

// llmctl eval: perplexity over jsonl/text files, or per-token scores of one text.
#include <torch/torch.h>

#include <cmath>

#include "common.h"
#include "llmctl/eval/evaluate.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/util/error.h"

namespace llmctl::cli {

namespace {

void print_scores(const TokenScores& s, bool json) {
  if (json) {
    nlohmann::json lps = nlohmann::json::array();
    for (double v : s.logprobs) lps.push_back(std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v));
    nlohmann::json j = {{"ids", s.ids}, {"logprobs", lps}, {"argmax", s.argmax}};
    if (!s.pieces.empty()) j["pieces"] = s.pieces;
    print_json(j);
    return;
  }
  std::printf("%6s %8s %-16s %10s %8s\n", "pos", "id", "piece", "logprob", "argmax");
  for (std::size_t i = 0; i < s.ids.size(); ++i)
    std::printf("%6zu %8d %-16s %10.4f %8d\n", i, s.ids[i], s.pieces.empty() ? "" : s.pieces[i].c_str(),
                s.logprobs[i], s.argmax[i]);
}

void print_exact_match(const ExactMatchResult& r, int show, bool json) {
  if (json) {
    nlohmann::json items = nlohmann::json::array();
    for (const auto& it : r.results)
      items.push_back({{"prompt", it.prompt}, {"expected", it.expected}, {"answer", it.answer}, {"correct", it.correct}});
    print_json({{"exact_match", r.score()}, {"correct", r.correct}, {"items", r.items},
                {"malformed_lines", r.malformed}, {"seconds", r.seconds}, {"results", items}});
    return;
  }
  for (int i = 0; i < show && i < static_cast<int>(r.results.size()); ++i) {
    const auto& it = r.results[i];
    std::printf("  %s Q: %s\n    A: %s%s\n", it.correct ? "ok " : "BAD", it.prompt.c_str(), it.answer.c_str(),
                it.correct ? "" : (" (expected " + it.expected + ")").c_str());
  }
  std::printf("exact match %lld/%lld = %.1f%%\n", static_cast<long long>(r.correct), static_cast<long long>(r.items),
              100 * r.score());
}

}  // namespace

void add_eval(CLI::App& app) {
  struct Opts {
    std::string model, text, ids;
    std::vector<std::string> data, exact;
    std::int64_t max_items = 0;
    int max_new_tokens = 32, show = 5;
    PerplexityOptions ppl;
    RuntimeFlags rt;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("eval", "Perplexity on held-out data (--data) or per-token log-probs of a text (--text)");
  sub->add_option("--model", o->model, "Model directory or .gguf file")->required();
  auto* data = sub->add_option("--data", o->data, "jsonl or text files to compute perplexity on")->check(CLI::ExistingFile);
  auto* text = sub->add_option("--text", o->text, "Score this text: token ids, log-probs, argmax ids");
  auto* ids = sub->add_option("--ids", o->ids, "Score these comma-separated token ids (no tokenizer needed)");
  auto* exact = sub->add_option("--exact-match", o->exact,
                                 "SFT jsonl: answer each conversation's last turn greedily and score exact matches")
                    ->check(CLI::ExistingFile);
  sub->add_option("--max-items", o->max_items, "--exact-match: score at most this many records (0: all)")
      ->capture_default_str();
  sub->add_option("--max-new-tokens", o->max_new_tokens, "--exact-match: longest answer generated")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  sub->add_option("--show", o->show, "--exact-match: print this many question/answer pairs")->capture_default_str();
  exact->excludes(data);
  exact->excludes(text);
  exact->excludes(ids);
  data->excludes(text);
  data->excludes(ids);
  text->excludes(ids);
  sub->add_option("--seq-len", o->ppl.seq_len, "Window length in tokens (non-overlapping windows)")->capture_default_str();
  sub->add_option("--batch-size", o->ppl.batch_size, "Windows per forward pass")->capture_default_str();
  sub->add_option("--max-tokens", o->ppl.max_tokens, "Stop at the first window boundary at or after this many tokens (0: all)")->capture_default_str();
  o->rt.add_to(sub);
  sub->add_flag("--json", o->json, "Print results as JSON");
  sub->callback([o, data, text, ids, exact] {
    if (!*data && !*text && !*ids && !*exact) throw Error("eval: give --data, --text, --ids or --exact-match");
    o->rt.apply();
    if (*exact) {
      EngineConfig ec;
      ec.device = o->rt.device;
      ec.dtype = o->rt.dtype;
      Engine engine(o->model, ec);
      auto r = exact_match(engine, o->exact, o->max_items, o->max_new_tokens, !o->json);
      print_exact_match(r, o->show, o->json);
      return;
    }
    auto model = load_model(o->model, torch::Device(o->rt.device), parse_dtype(o->rt.dtype));
    if (*ids) {
      auto v = parse_id_list(o->ids, "--ids");
      for (int id : v)
        if (id < 0 || id >= model->config().vocab_size)
          throw Error("--ids: token id " + std::to_string(id) + " is outside the vocabulary (size " +
                      std::to_string(model->config().vocab_size) + ")");
      print_scores(score_ids(model, v), o->json);
      return;
    }
    auto tok = load_tokenizer(o->model);
    if (*data) {
      o->ppl.progress = true;
      auto r = perplexity(model, tok, o->data, o->ppl);
      if (o->json)
        print_json({{"perplexity", r.perplexity()}, {"mean_nll", r.mean_nll()}, {"tokens", r.predicted},
                    {"windows", r.windows}, {"documents", r.documents}, {"malformed_lines", r.malformed},
                    {"seq_len", o->ppl.seq_len}, {"seconds", r.seconds},
                    {"tokens_per_s", r.predicted / std::max(r.seconds, 1e-9)}});
      else
        std::printf("perplexity %.4f (mean NLL %.4f over %lld tokens, %lld windows of %lld, %.1f s)\n",
                    r.perplexity(), r.mean_nll(), static_cast<long long>(r.predicted),
                    static_cast<long long>(r.windows), static_cast<long long>(o->ppl.seq_len), r.seconds);
      return;
    }
    print_scores(score_text(model, tok, o->text), o->json);
  });
}

}  // namespace llmctl::cli

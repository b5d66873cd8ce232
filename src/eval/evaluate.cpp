#include "llmctl/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include "llmctl/data/dataset.h"
#include "llmctl/data/jsonl.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"
#include "llmctl/util/progress.h"

namespace llmctl {

double PerplexityResult::perplexity() const { return predicted ? std::exp(mean_nll()) : NAN; }

namespace {

// Sum of -log p(target) over a batch of windows [B, T]: inputs are tokens 0..T-2,
// targets 1..T-1. Log-softmax is taken in fp32 whatever the model dtype.
double batch_nll(CausalLM& model, const torch::Tensor& windows) {
  auto device = model->parameters().front().device();
  auto w = windows.to(device);
  auto logits = model->forward(w.narrow(1, 0, w.size(1) - 1)).to(torch::kFloat32);
  auto targets = w.narrow(1, 1, w.size(1) - 1);
  auto lp = torch::log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
  return -lp.sum().item<double>();
}

}  // namespace

PerplexityResult perplexity(CausalLM& model, const Tokenizer& tok, const std::vector<std::string>& files,
                            const PerplexityOptions& opt) {
  if (opt.seq_len < 2) throw Error("--seq-len must be at least 2");
  if (opt.batch_size < 1) throw Error("--batch-size must be at least 1");
  if (opt.seq_len > model->config().max_position_embeddings)
    throw Error("--seq-len " + std::to_string(opt.seq_len) + " exceeds the model's max_position_embeddings (" +
                std::to_string(model->config().max_position_embeddings) + ")");
  c10::InferenceMode inference;  // no autograd bookkeeping at all
  model->eval();
  auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  DocumentStream stream(files);
  Progress bar("eval", stream.total_bytes(), "B", opt.progress);

  std::vector<std::int64_t> buf;  // token stream not yet cut into windows
  std::vector<std::int64_t> batch;
  auto flush = [&](std::int64_t n_windows) {
    if (n_windows == 0) return;
    auto t = torch::from_blob(batch.data(), {n_windows, opt.seq_len}, torch::kInt64);
    r.nll_sum += batch_nll(model, t);
    r.predicted += n_windows * (opt.seq_len - 1);
    r.windows += n_windows;
    batch.clear();
    char extra[64];
    std::snprintf(extra, sizeof extra, "ppl %.3f", r.perplexity());
    bar.set(stream.bytes_read(), extra);
  };
  auto done = [&] { return opt.max_tokens > 0 && r.predicted + r.windows >= opt.max_tokens; };

  std::string text;
  while (!done() && stream.next(text)) {
    auto ids = tok.encode(text, /*parse_special=*/false);
    buf.push_back(tok.bos_id());
    buf.insert(buf.end(), ids.begin(), ids.end());
    buf.push_back(tok.eos_id());
    std::size_t used = 0;
    while (buf.size() - used >= static_cast<std::size_t>(opt.seq_len) && !done()) {
      batch.insert(batch.end(), buf.begin() + used, buf.begin() + used + opt.seq_len);
      used += opt.seq_len;
      if (static_cast<std::int64_t>(batch.size()) == opt.batch_size * opt.seq_len) flush(opt.batch_size);
    }
    buf.erase(buf.begin(), buf.begin() + used);
  }
  flush(static_cast<std::int64_t>(batch.size()) / opt.seq_len);
  // The tail shorter than a window is scored as one shorter window.
  if (!done() && buf.size() >= 2) {
    auto t = torch::from_blob(buf.data(), {1, static_cast<std::int64_t>(buf.size())}, torch::kInt64);
    r.nll_sum += batch_nll(model, t);
    r.predicted += static_cast<std::int64_t>(buf.size()) - 1;
    r.windows += 1;
  }
  r.documents = static_cast<std::int64_t>(stream.documents());
  r.malformed = static_cast<std::int64_t>(stream.malformed());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char extra[64];
  std::snprintf(extra, sizeof extra, "ppl %.3f", r.perplexity());
  bar.set(stream.bytes_read());
  bar.finish(extra);
  if (r.predicted == 0) throw Error("--data: no text to evaluate (need at least 2 tokens)");
  return r;
}

TokenScores score_ids(CausalLM& model, const std::vector<int>& ids) {
  TokenScores s;
  s.ids = ids;
  if (ids.empty()) return s;
  c10::InferenceMode inference;  // no autograd bookkeeping at all
  model->eval();
  auto device = model->parameters().front().device();
  std::vector<std::int64_t> v(ids.begin(), ids.end());
  auto input = torch::tensor(v, torch::kInt64).unsqueeze(0).to(device);
  auto lp = torch::log_softmax(model->forward(input).to(torch::kFloat32), -1)[0].cpu();  // [T, V]
  auto am = lp.argmax(-1);
  s.logprobs.push_back(std::numeric_limits<double>::quiet_NaN());
  for (std::size_t i = 1; i < ids.size(); ++i) s.logprobs.push_back(lp[i - 1][ids[i]].item<double>());
  for (std::size_t i = 0; i < ids.size(); ++i) s.argmax.push_back(static_cast<int>(am[i].item<std::int64_t>()));
  return s;
}

TokenScores score_text(CausalLM& model, const Tokenizer& tok, const std::string& text) {
  auto ids = tok.encode(text);
  const auto ctx = static_cast<std::size_t>(model->config().max_position_embeddings);
  TokenScores all;
  for (std::size_t start = 0; start < ids.size(); start += ctx) {
    std::vector<int> part(ids.begin() + start, ids.begin() + std::min(ids.size(), start + ctx));
    auto s = score_ids(model, part);
    all.ids.insert(all.ids.end(), s.ids.begin(), s.ids.end());
    all.logprobs.insert(all.logprobs.end(), s.logprobs.begin(), s.logprobs.end());
    all.argmax.insert(all.argmax.end(), s.argmax.begin(), s.argmax.end());
  }
  for (int id : all.ids) all.pieces.push_back(tok.id_to_piece(id));
  return all;
}

namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}
}  // namespace

ExactMatchResult exact_match(Engine& engine, const std::vector<std::string>& files, std::int64_t max_items,
                             int max_new_tokens, bool progress) {
  if (!engine.has_tokenizer()) throw Error("--exact-match needs a tokenizer in the model directory");
  const Tokenizer& tok = engine.tokenizer();
  ExactMatchResult r;
  const auto t0 = std::chrono::steady_clock::now();
  Progress bar("exact-match", static_cast<std::uint64_t>(max_items), "items", progress);
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = max_new_tokens;
  std::map<std::int64_t, std::size_t> pending;  // request id -> its item in r.results
  std::map<std::int64_t, std::string> answers;
  auto step = [&] {
    for (auto& o : engine.step()) {
      answers[o.id] += o.text;
      if (!o.finished) continue;
      auto& item = r.results[pending.at(o.id)];
      item.answer = answers[o.id];
      item.correct = trim(item.answer) == trim(item.expected);
      r.correct += item.correct;
      ++r.items;
      pending.erase(o.id);
      answers.erase(o.id);
      bar.set(static_cast<std::uint64_t>(r.items), cat(r.correct, " correct"));
    }
  };
  // Keep about two batches of questions queued, so memory stays bounded on any file size.
  const int window = 2 * engine.config().max_num_seqs;
  ConversationStream convs(files);
  std::vector<Message> conv;
  std::int64_t skipped = 0, submitted = 0;
  while ((max_items == 0 || submitted < max_items) && convs.next(conv)) {
    if (conv.size() < 2 || conv.back().role != "assistant") {
      log::warn(cat(convs.where(), ": needs a question and, last, the assistant's answer; skipped"));
      ++skipped;
      continue;
    }
    ExactMatchItem item;
    item.expected = conv.back().content;
    conv.pop_back();
    item.prompt = conv.back().content;
    pending[engine.add_request(render_generation_prompt(tok, conv), greedy)] = r.results.size();
    r.results.push_back(std::move(item));
    ++submitted;
    while (engine.num_unfinished() >= window) step();
  }
  while (engine.has_unfinished()) step();
  r.malformed = skipped + static_cast<std::int64_t>(convs.malformed());
  bar.finish();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace llmctl

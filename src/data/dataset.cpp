#include "llmctl/data/dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <thread>

#include "llmctl/data/jsonl.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/log.h"
#include "llmctl/util/progress.h"
#include "llmctl/util/threads.h"

namespace llmctl {
namespace {

constexpr char kMagic[8] = {'L', 'L', 'M', 'C', 'T', 'K', '0', '1'};

std::uint64_t fnv1a(std::uint64_t h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
std::uint64_t fnv1a(std::uint64_t h, const std::string& s) { return fnv1a(h, s.data(), s.size()); }

std::string cache_key(const std::vector<std::string>& files, const Tokenizer& tok, SampleMode mode,
                      std::int64_t seq_len) {
  std::uint64_t h = 1469598103934665603ull;
  h = fnv1a(h, std::string(kMagic, 8) + (mode == SampleMode::Pretrain ? "pretrain" : "sft") + std::to_string(seq_len));
  // Whichever tokenizer files there are; a tokenizer built from a vocabulary (a GGUF's) has
  // none, so its vocabulary and merges stand in.
  bool any_file = false;
  for (const char* f : {"/tokenizer.json", "/tokenizer.model"})
    if (!tok.source_dir().empty() && path_exists(tok.source_dir() + f)) {
      h = fnv1a(h, read_file(tok.source_dir() + f));
      any_file = true;
    }
  if (!any_file) {
    for (const auto& e : tok.vocabulary()) h = fnv1a(h, e.piece + '\n');
    for (const auto& m : tok.merges()) h = fnv1a(h, m + '\n');
  }
  if (mode == SampleMode::Sft) h = fnv1a(h, "chat_template:" + tok.chat_template());
  for (const auto& f : files) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) throw Error("cannot open data file " + f);
    h = fnv1a(h, std::filesystem::absolute(f).string() + ":" + std::to_string(st.st_size) + ":" +
                     std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

template <typename T>
void put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
void put_vec(std::string& out, const std::vector<T>& v) {
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void save_cache(const std::string& path, const TokenizedData& d) {
  std::string out(kMagic, 8);
  put(out, static_cast<std::uint64_t>(d.tokens.size()));
  put(out, static_cast<std::uint64_t>(d.begin.size()));
  put(out, d.documents);
  put(out, d.malformed);
  put(out, d.truncated);
  put_vec(out, d.tokens);
  put_vec(out, d.mask);
  put_vec(out, d.begin);
  put_vec(out, d.length);
  write_file_atomic(path, out);
}

bool load_cache(const std::string& path, TokenizedData& d) {
  if (!path_exists(path)) return false;
  auto m = MappedFile::open(path);
  const std::uint8_t* p = m->data();
  std::size_t left = m->size();
  auto take = [&](void* dst, std::size_t n) {
    if (n > left) throw Error(path + ": truncated token cache (delete it to rebuild)");
    std::memcpy(dst, p, n);
    p += n;
    left -= n;
  };
  char magic[8];
  take(magic, 8);
  if (std::memcmp(magic, kMagic, 8) != 0) throw Error(path + ": not an llmctl token cache (delete it to rebuild)");
  std::uint64_t nt = 0, ns = 0;
  take(&nt, 8);
  take(&ns, 8);
  take(&d.documents, 8);
  take(&d.malformed, 8);
  take(&d.truncated, 8);
  if (nt * 5 + ns * 12 != left) throw Error(path + ": token cache has the wrong size (delete it to rebuild)");
  d.tokens.resize(nt);
  d.mask.resize(nt);
  d.begin.resize(ns);
  d.length.resize(ns);
  take(d.tokens.data(), nt * 4);
  take(d.mask.data(), nt);
  take(d.begin.data(), ns * 8);
  take(d.length.data(), ns * 4);
  return true;
}

// One unit of tokenization work: a pretrain text or an sft conversation.
struct Item {
  std::string text;
  std::vector<Message> conv;
};

// Reads up to `n` items; false at end of input.
class ItemReader {
 public:
  ItemReader(const std::vector<std::string>& files, SampleMode mode) : mode_(mode), text_(files), convs_(files) {}
  bool read(std::vector<Item>& out, std::size_t n) {
    out.clear();
    while (out.size() < n) {
      Item it;
      if (!(mode_ == SampleMode::Pretrain ? text_.next(it.text) : convs_.next(it.conv))) break;
      out.push_back(std::move(it));
    }
    return !out.empty();
  }
  std::uint64_t bytes() const { return pretrain() ? text_.bytes_read() : convs_.bytes_read(); }
  std::uint64_t total_bytes() const { return text_.total_bytes(); }
  std::uint64_t malformed() const { return pretrain() ? text_.malformed() : convs_.malformed(); }
  std::uint64_t documents() const { return pretrain() ? text_.documents() : convs_.documents(); }

 private:
  bool pretrain() const { return mode_ == SampleMode::Pretrain; }
  SampleMode mode_;
  DocumentStream text_;  // pretrain; also gives total_bytes
  ConversationStream convs_;
};


// A conversation in the model's own chat format (tokenizer's chat_template; ChatML for
// llmctl's and minimind's tokenizers), encoded piece by piece so the loss-mask boundaries
// are exact: each assistant turn's content and the token that ends it are learned (mask 1);
// headers, system/user turns and what the template writes after the end token are not.
// Special-token text is parsed (as minimind's apply_chat_template + tokenizer(text) does);
// pieces split at special tokens, so inference, which encodes the whole rendered prompt,
// sees the same ids.
template <typename Id>
void render_conversation(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<Message>& conv,
                         bool add_generation_prompt, std::size_t max_tokens, std::vector<Id>& ids,
                         std::vector<std::uint8_t>* mask) {
  const std::string after_end = tmpl.info().after_end;
  std::string done;  // the rendered text encoded so far
  auto add = [&](const std::string& text, std::uint8_t m) {
    auto part = tok.encode(text);
    ids.insert(ids.end(), part.begin(), part.end());
    if (mask) mask->insert(mask->end(), part.size(), m);
  };
  // Every format llmctl renders grows by appending; a rendering that rewrote earlier text
  // would make the mask wrong, so it is an error rather than a silent mismatch.
  auto extend_to = [&](const std::string& text) {
    if (text.compare(0, done.size(), done) != 0)
      throw Error("chat template " + std::string(tmpl.info().name) + ": a longer conversation does not extend the shorter one");
    std::string rest = text.substr(done.size());
    done = text;
    return rest;
  };
  std::vector<Message> prefix;
  for (const auto& msg : conv) {
    if (ids.size() >= max_tokens) return;
    if (msg.role != "assistant") {
      prefix.push_back(msg);
      continue;
    }
    add(extend_to(tmpl.render(prefix, true)), 0);  // up to and including the assistant header
    prefix.push_back(msg);
    std::string answer = extend_to(tmpl.render(prefix, false));
    const bool tail = !after_end.empty() && answer.size() >= after_end.size() &&
                      answer.compare(answer.size() - after_end.size(), after_end.size(), after_end) == 0;
    if (tail) answer.resize(answer.size() - after_end.size());
    add(answer, 1);
    if (tail) add(after_end, 0);
  }
  if (add_generation_prompt) add(extend_to(tmpl.render(prefix, true)), 0);
}

// render_sft_sample with the template already read (once per dataset, not per sample).
void render_sft_ids(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<Message>& conv,
                    std::size_t max_tokens, std::vector<std::int32_t>& ids, std::vector<std::uint8_t>& mask) {
  ids.clear();
  mask.clear();
  render_conversation(tok, tmpl, conv, false, max_tokens, ids, &mask);
  if (ids.size() > max_tokens) {
    ids.resize(max_tokens);
    mask.resize(max_tokens);
  }
}

void check_chat_tokens(const Tokenizer& tok, const ChatTemplate& tmpl) {
  const auto& fmt = tmpl.info();
  if (tok.piece_to_id(fmt.end_token) < 0)
    throw Error("the tokenizer has no " + std::string(fmt.end_token) + " token, which ends a turn in its chat format (" +
                fmt.name + "): SFT would teach the model to spell it out instead of stopping");
}

}  // namespace

std::vector<int> render_generation_prompt(const Tokenizer& tok, const std::vector<Message>& conv) {
  std::vector<int> ids;
  render_conversation(tok, ChatTemplate::from_template(tok.chat_template()), conv, true, SIZE_MAX, ids, nullptr);
  return ids;
}

void render_sft_sample(const Tokenizer& tok, const std::vector<Message>& conv, std::size_t max_tokens,
                       std::vector<std::int32_t>& ids, std::vector<std::uint8_t>& mask) {
  render_sft_ids(tok, ChatTemplate::from_template(tok.chat_template()), conv, max_tokens, ids, mask);
}

TokenizedData load_or_tokenize(const std::vector<std::string>& files, const Tokenizer& tok, SampleMode mode,
                               std::int64_t seq_len, const std::string& cache_dir, int threads, bool progress) {
  if (files.empty()) throw Error("--data: no input files given");
  if (seq_len < 2) throw Error("--seq-len must be at least 2");
  const auto tmpl = ChatTemplate::from_template(tok.chat_template());
  if (mode == SampleMode::Sft) check_chat_tokens(tok, tmpl);
  const std::string key = cache_key(files, tok, mode, seq_len);
  const std::string cache = cache_dir + "/tokens-" + key + ".bin";
  TokenizedData d;
  if (load_cache(cache, d)) {
    log::info(cat("using token cache ", cache, " (", d.tokens.size(), " tokens, ", d.size(), " samples)"));
    return d;
  }
  const auto window = static_cast<std::size_t>(seq_len + 1);
  const int nthreads = resolve_threads(threads);
  ItemReader reader(files, mode);
  Progress bar("tokenizing", reader.total_bytes(), "B", progress);
  std::vector<Item> items;
  std::vector<std::vector<std::int32_t>> ids;
  std::vector<std::vector<std::uint8_t>> masks;
  while (reader.read(items, 4096)) {
    ids.assign(items.size(), {});
    masks.assign(items.size(), {});
    std::vector<std::thread> pool;
    for (int t = 0; t < nthreads; ++t)
      pool.emplace_back([&, t] {
        for (std::size_t i = t; i < items.size(); i += nthreads) {
          if (mode == SampleMode::Pretrain) {
            auto v = tok.encode(items[i].text, false);
            ids[i].reserve(v.size() + 2);
            if (tok.bos_id() >= 0) ids[i].push_back(tok.bos_id());  // (Qwen's tokenizers have no BOS)
            ids[i].insert(ids[i].end(), v.begin(), v.end());
            if (tok.eos_id() >= 0) ids[i].push_back(tok.eos_id());
          } else {
            render_sft_ids(tok, tmpl, items[i].conv, window + 1, ids[i], masks[i]);
          }
        }
      });
    for (auto& th : pool) th.join();
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (mode == SampleMode::Pretrain) {
        d.tokens.insert(d.tokens.end(), ids[i].begin(), ids[i].end());
        continue;
      }
      if (ids[i].size() > window) {  // rendered one past the window to know it was cut
        ++d.truncated;
        ids[i].resize(window);
        masks[i].resize(window);
      }
      // A conversation with nothing to learn (e.g. cut before the answer) is skipped.
      if (masks[i].size() < 2 || std::count(masks[i].begin() + 1, masks[i].end(), 1) == 0) continue;
      d.begin.push_back(d.tokens.size());
      d.length.push_back(static_cast<std::uint32_t>(ids[i].size()));
      d.tokens.insert(d.tokens.end(), ids[i].begin(), ids[i].end());
      d.mask.insert(d.mask.end(), masks[i].begin(), masks[i].end());
    }
    bar.set(reader.bytes(), format_count(static_cast<double>(d.tokens.size())) + " tokens");
  }
  bar.finish(format_count(static_cast<double>(d.tokens.size())) + " tokens");
  if (mode == SampleMode::Pretrain) {
    // Pack: windows of seq_len + 1 tokens starting every seq_len tokens, so each token
    // is a target exactly once; the tail shorter than a window is dropped.
    d.mask.assign(d.tokens.size(), 1);
    for (std::uint64_t b = 0; b + window <= d.tokens.size(); b += window - 1) {
      d.begin.push_back(b);
      d.length.push_back(static_cast<std::uint32_t>(window));
    }
  }
  d.documents = reader.documents();
  d.malformed = reader.malformed();
  if (d.size() == 0)
    throw Error("--data: no training samples (" + std::to_string(d.documents) + " documents, " +
                std::to_string(d.tokens.size()) + " tokens; pretrain needs at least seq_len + 1 tokens)");
  std::filesystem::create_directories(cache_dir);
  save_cache(cache, d);
  log::info(cat("tokenized ", d.documents, " documents into ", d.size(), " samples (", d.tokens.size(),
                " tokens); cached in ", cache));
  return d;
}

std::vector<std::uint64_t> epoch_order(std::uint64_t n_samples, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::uint64_t> order(n_samples);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003ull + epoch);
  // Fisher-Yates with our own draws: std::shuffle's algorithm is implementation-defined.
  for (std::uint64_t i = n_samples; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  return order;
}

}  // namespace llmctl

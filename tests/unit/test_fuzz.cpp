// Seeded mutation fuzzing of the parsers that read untrusted files: every mutated input
// must either load or fail with llmctl::Error; a crash, hang or other exception fails.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "llmctl/data/jsonl.h"
#include "llmctl/io/gguf.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/io/safetensors.h"
#include "llmctl/serve/api.h"
#include "llmctl/tokenizer/pretokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

// Flips, inserts, deletes or truncates a few bytes; biased towards the first `hot` bytes
// (the header), where the parsing happens.
std::string mutate(std::string s, std::mt19937& rng, std::size_t hot) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    std::size_t range = (rng() % 4 != 0) ? std::min(hot, s.size()) : s.size();
    std::size_t at = rng() % range;
    switch (rng() % 5) {
      case 0: s[at] = static_cast<char>(rng()); break;
      case 1: s[at] ^= static_cast<char>(1u << (rng() % 8)); break;
      case 2: s.insert(at, 1, "{}[]\",:0123456789-e"[rng() % 19]); break;
      case 3: s.erase(at, 1 + rng() % 8); break;
      case 4: s.resize(at); break;
    }
  }
  return s;
}

template <typename Fn>
void expect_loads_or_clean_error(Fn fn, const std::string& what, int i) {
  try {
    fn();
  } catch (const Error&) {
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << " mutation " << i << ": unexpected exception " << e.what();
  }
}

}  // namespace

TEST(Fuzz, SafetensorsReader) {
  TempDir dir;
  torch::manual_seed(0);
  std::string good_path = dir.path + "/good.safetensors";
  save_safetensors(good_path, {{"a", torch::randn({4, 3})}, {"b", torch::randn({5}).to(torch::kBFloat16)},
                               {"c", torch::randint(0, 9, {2, 2}, torch::kInt64)}});
  const std::string good = read_file(good_path);
  std::uint64_t header = 0;
  std::memcpy(&header, good.data(), 8);
  std::mt19937 rng(1234);
  const std::string p = dir.path + "/m.safetensors";
  for (int i = 0; i < 3000; ++i) {
    write_file_atomic(p, mutate(good, rng, 8 + header));
    expect_loads_or_clean_error(
        [&] {
          SafetensorsFile f(p);
          for (const auto& e : f.entries()) (void)f.tensor(e.name).sum().item<double>();  // touch the bytes
        },
        "safetensors", i);
  }
}

TEST(Fuzz, GgufReader) {
  TempDir dir;
  const std::string good_path = dir.path + "/good.gguf";
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 2);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_string_array("tokenizer.ggml.tokens", {"<s>", "a", "bc"});
  w.add_f32_array("tokenizer.ggml.scores", {0.0f, -1.0f, -2.0f});
  w.add("nested", GgufValue::array(GgufType::Array, {GgufValue::i32_array({1, 2})}));
  std::mt19937 bytes_rng(5);
  auto random_bytes = [&](std::size_t n) {
    std::vector<std::uint8_t> b(n);
    for (auto& c : b) c = static_cast<std::uint8_t>(bytes_rng() & 0x3b);  // keeps fp16 scales finite
    return b;
  };
  w.add_tensor("q8", {2, 32}, GgmlType::Q8_0, random_bytes(68));
  w.add_tensor("k4", {1, 256}, GgmlType::Q4_K, random_bytes(144));
  w.add_tensor("h", {3}, GgmlType::F16, random_bytes(6));
  w.write(good_path);
  const std::string good = read_file(good_path);
  const std::size_t header = GgufFile(good_path).data_offset();
  std::mt19937 rng(4321);
  const std::string p = dir.path + "/m.gguf";
  for (int i = 0; i < 3000; ++i) {
    write_file_atomic(p, mutate(good, rng, header));
    expect_loads_or_clean_error(
        [&] {
          GgufFile f(p);
          for (const auto& t : f.tensors()) {
            std::vector<float> v(static_cast<std::size_t>(t.numel()));
            f.read_f32(t.name, v.data());  // touch every byte
          }
        },
        "gguf", i);
  }
}

TEST(Fuzz, ModelConfigParser) {
  const std::string good = small_config(40, 16, 2, 8, "qwen3").to_json().dump(1);
  std::mt19937 rng(99);
  for (int i = 0; i < 3000; ++i) {
    std::string text = mutate(good, rng, good.size());
    expect_loads_or_clean_error(
        [&] {
          auto j = nlohmann::json::parse(text, nullptr, false);
          if (j.is_discarded()) throw Error("not JSON");
          auto cfg = ModelConfig::from_json(j);
          (void)cfg.num_parameters();
        },
        "config", i);
  }
}

TEST(Fuzz, JsonlReaderNeverThrowsOnContent) {
  TempDir dir;
  const std::string good =
      "{\"text\": \"天地玄黄 in the beginning\"}\n"
      R"({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})"
      "\n";
  std::mt19937 rng(7);
  const std::string p = dir.path + "/d.jsonl";
  for (int i = 0; i < 2000; ++i) {
    write_file_atomic(p, mutate(good, rng, good.size()));
    DocumentStream s({p}, /*warn=*/false);
    std::string t;
    EXPECT_NO_THROW(while (s.next(t)) {}) << "mutation " << i;
    EXPECT_LE(s.documents() + s.malformed(), 4u);
  }
}

// The server's request parser on mutated OpenAI bodies: a parsed request or an ApiError
// (which becomes a 4xx), nothing else.
TEST(Fuzz, OpenAIRequestParser) {
  serve::ServedModel model;
  model.name = "m";
  model.max_model_len = 256;
  model.vocab_size = 50;
  const std::vector<std::pair<serve::ApiKind, std::string>> seeds = {
      {serve::ApiKind::Chat,
       R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],)"
       R"("max_tokens":5,"temperature":0.7,"top_p":0.9,"n":2,"stop":["a","b"],"logprobs":true,"top_logprobs":2,)"
       R"("stream":true,"stream_options":{"include_usage":true},"seed":3})"},
      {serve::ApiKind::Completion, R"({"prompt":[[1,2,3],[4]],"max_tokens":3,"logprobs":1,"stop":"x","top_k":4})"},
      {serve::ApiKind::Completion, R"({"prompt":"hello","min_p":0.1,"repetition_penalty":1.1,"stop_token_ids":[1]})"},
  };
  std::mt19937 rng(11);
  int parsed = 0;
  for (int i = 0; i < 6000; ++i) {
    const auto& [kind, seed] = seeds[static_cast<std::size_t>(i) % seeds.size()];
    const std::string body = mutate(seed, rng, seed.size());
    try {
      auto r = serve::parse_request(kind, body, model);
      ++parsed;
      EXPECT_GE(r.n, 1);
      if (r.params.max_new_tokens < 0) r.params.max_new_tokens = 1;  // "fill the context"
      EXPECT_NO_THROW(r.params.validate());
    } catch (const serve::ApiError& e) {
      EXPECT_GE(e.status, 400);
      EXPECT_LT(e.status, 500);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "mutation " << i << ": unexpected exception " << e.what() << "\n" << body;
    }
  }
  EXPECT_GT(parsed, 100);  // the mutations do not only produce garbage
}

// --- tokenizer.json ------------------------------------------------------------------------

namespace {

// A small byte-level BPE tokenizer.json (256 byte tokens, a few merges, specials) with an
// NFC normalizer and a Split + ByteLevel pre-tokenizer, so mutations reach every parser.
nlohmann::json fuzz_tokenizer_json() {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[bpe::byte_to_chars(static_cast<unsigned char>(b))] = b;
  const std::vector<std::string> merges = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or"};
  int next = 256;
  for (const auto& m : merges) {
    const auto sp = m.find(' ');
    vocab[m.substr(0, sp) + m.substr(sp + 1)] = next++;
  }
  return {{"added_tokens",
           {{{"id", next}, {"content", "<|im_start|>"}, {"special", true}, {"lstrip", false}, {"rstrip", false},
             {"single_word", false}, {"normalized", false}},
            {{"id", next + 1}, {"content", "<x>"}, {"special", false}, {"lstrip", true}, {"rstrip", true},
             {"single_word", true}, {"normalized", true}}}},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", R"((?i:'s|'t)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+(?!\S)|\s+)"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "Digits"}, {"individual_digits", true}},
              {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}}}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", false}}}};
}

std::string random_bytes(std::mt19937& rng, std::size_t max_len) {
  // Mostly UTF-8 fragments (letters, CJK, combining marks, spaces), with raw bytes mixed in.
  static const std::vector<std::string> parts = {"hello", " world", "你好", "e\xCC\x81", "  ", "\n", "123",
                                                 "<|im_start|>", "<x>", "'s", "\xF0\x9F\x99\x82", "\t"};
  std::string s;
  const std::size_t n = rng() % max_len;
  while (s.size() < n) {
    if (rng() % 3 == 0)
      s += static_cast<char>(rng());
    else
      s += parts[rng() % parts.size()];
  }
  return s;
}

}  // namespace

TEST(Fuzz, TokenizerJsonLoaderAndEncoder) {
  TempDir dir;
  // The pipeline config first, the big vocabulary last: mutations favour the front.
  const auto j = fuzz_tokenizer_json();
  nlohmann::ordered_json o;
  for (const char* k : {"added_tokens", "normalizer", "pre_tokenizer", "decoder", "model"}) o[k] = j[k];
  const std::string good = o.dump(1);
  const std::size_t hot = good.find("\"vocab\"");
  std::mt19937 rng(2024);
  int loaded = 0;
  for (int i = 0; i < 3000; ++i) {
    write_file_atomic(dir.path + "/tokenizer.json", mutate(good, rng, hot));
    expect_loads_or_clean_error(
        [&] {
          auto t = Tokenizer::load(dir.path);
          ++loaded;
          for (int k = 0; k < 3; ++k) {
            const std::string s = random_bytes(rng, 64);
            const auto ids = t.encode(s);
            (void)t.decode(ids);
            for (int id : ids) (void)t.token_bytes(id);
          }
        },
        "tokenizer.json", i);
  }
  EXPECT_GT(loaded, 80);  // the mutations do not only produce garbage (most break the JSON)
}

TEST(Fuzz, ByteLevelBpeEncodesAnyBytes) {
  TempDir dir;
  write_file_atomic(dir.path + "/tokenizer.json", fuzz_tokenizer_json().dump());
  auto t = Tokenizer::load(dir.path);
  std::mt19937 rng(77);
  for (int i = 0; i < 3000; ++i) {
    const std::string s = random_bytes(rng, 200);
    std::vector<int> ids;
    ASSERT_NO_THROW(ids = t.encode(s, i % 2 == 0)) << i;
    for (int id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
    ASSERT_NO_THROW((void)t.decode(ids, i % 3 == 0));
  }
}

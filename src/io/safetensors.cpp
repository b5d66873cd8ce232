#include "llmctl/io/safetensors.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl {
namespace {

// Header JSON bigger than this is not a plausible safetensors file (the reference
// implementation uses the same bound) and would only make us allocate.
constexpr std::uint64_t kMaxHeader = 100ull << 20;

std::size_t dtype_size(const std::string& d) {
  static const std::map<std::string, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

}  // namespace

torch::ScalarType safetensors_dtype(const std::string& d) {
  static const std::map<std::string, torch::ScalarType> m = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
      {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
      {"I16", torch::kInt16},   {"I8", torch::kInt8},     {"U8", torch::kUInt8},
      {"BOOL", torch::kBool}};
  auto it = m.find(d);
  if (it == m.end()) throw Error("unsupported safetensors dtype " + d);
  return it->second;
}

std::string safetensors_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return "F64";
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: throw Error(std::string("cannot save dtype ") + c10::toString(t) + " to safetensors");
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = MappedFile::open(path);
  const auto size = map_->size();
  if (size < 8) throw Error(path + ": not a safetensors file (only " + std::to_string(size) + " bytes)");
  std::uint64_t n = 0;
  std::memcpy(&n, map_->data(), 8);  // little-endian host (x86-64, aarch64)
  if (n > kMaxHeader || n > size - 8)
    throw Error(path + ": header length " + std::to_string(n) + " exceeds the file size " +
                std::to_string(size) + " (truncated or not safetensors)");
  data_start_ = 8 + n;
  const std::uint64_t data_size = size - data_start_;
  auto header = nlohmann::json::parse(map_->data() + 8, map_->data() + 8 + n, nullptr, false);
  if (header.is_discarded() || !header.is_object()) throw Error(path + ": header is not a JSON object");

  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) throw Error(path + ": __metadata__ is not an object");
      for (auto& [k, v] : info.items())
        if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    auto bad = [&](const std::string& why) { return Error(path + ": tensor '" + name + "': " + why); };
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      throw bad("needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.name = name;
    if (!info["dtype"].is_string()) throw bad("dtype is not a string");
    e.dtype = info["dtype"].get<std::string>();
    std::size_t esize = dtype_size(e.dtype);
    if (esize == 0) throw bad("unsupported dtype " + e.dtype);
    const auto& shape = info["shape"];
    const auto& offs = info["data_offsets"];
    if (!shape.is_array()) throw bad("shape is not an array");
    std::uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) throw bad("shape has a negative or non-integer dimension");
      auto v = d.get<std::uint64_t>();
      if (v != 0 && numel > (std::uint64_t(1) << 48) / v) throw bad("shape is implausibly large");
      numel *= v;
      e.shape.push_back(static_cast<std::int64_t>(v));
    }
    if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() || !offs[1].is_number_unsigned())
      throw bad("data_offsets must be two non-negative integers");
    e.begin = offs[0].get<std::uint64_t>();
    e.end = offs[1].get<std::uint64_t>();
    if (e.end < e.begin) throw bad("data_offsets end before they begin");
    if (e.end - e.begin != numel * esize)
      throw bad("shape needs " + std::to_string(numel * esize) + " bytes but data_offsets cover " +
                std::to_string(e.end - e.begin));
    if (e.end > data_size)
      throw bad("data ends at byte " + std::to_string(e.end) + " but the file has only " +
                std::to_string(data_size) + " data bytes (truncated file?)");
    index_[name] = entries_.size();
    entries_.push_back(std::move(e));
  }
  // Overlapping ranges mean a corrupt or hostile file.
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& e : entries_) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto a, auto b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->begin < sorted[i - 1]->end && sorted[i]->end > sorted[i]->begin)
      throw Error(path + ": tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name + "' overlap");
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) > 0; }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return entries_[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const auto& e = entry(name);
  auto keep = map_;  // the deleter holds the mapping alive as long as the tensor lives
  void* ptr = const_cast<std::uint8_t*>(map_->data() + data_start_ + e.begin);
  if (e.end == e.begin) return torch::empty(e.shape, torch::TensorOptions().dtype(safetensors_dtype(e.dtype)));
  return torch::from_blob(ptr, e.shape, [keep](void*) {}, torch::TensorOptions().dtype(safetensors_dtype(e.dtype)));
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> cpu;
  std::uint64_t offset = 0;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (!seen.insert(name).second) throw Error("save_safetensors: duplicate tensor name '" + name + "'");
    auto c = t.detach().to(torch::kCPU).contiguous();
    std::uint64_t bytes = c.numel() * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    cpu.push_back(std::move(c));
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // pad so the data section is 8-byte aligned
  std::uint64_t n = h.size();
  AtomicFile f(path);
  f.write(&n, 8);
  f.write(h);
  for (const auto& c : cpu) f.write(c.data_ptr(), c.numel() * c.element_size());
  f.commit();
}

namespace {

// The files of a model directory's weights, and (sharded) which file the index says holds
// each tensor.
struct WeightFiles {
  std::vector<std::string> files;
  std::map<std::string, std::string> expected;  // tensor -> shard, from the index
};

WeightFiles weight_files(const std::string& dir) {
  namespace fs = std::filesystem;
  WeightFiles w;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(index)) {
    auto j = nlohmann::json::parse(read_file(index.string()), nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": not a valid index (needs a \"weight_map\" object)");
    std::set<std::string> shards;
    for (auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string()) throw Error(index.string() + ": weight_map['" + name + "'] is not a file name");
      auto s = shard.get<std::string>();
      if (s.find('/') != std::string::npos || s == "..") throw Error(index.string() + ": shard name '" + s + "' is not a plain file name");
      w.expected[name] = s;
      shards.insert(s);
    }
    for (const auto& s : shards) {
      const auto file = (fs::path(dir) / s).string();
      if (!fs::exists(file)) throw Error("shard " + file + " listed in the index does not exist");
      w.files.push_back(file);
    }
  } else if (fs::exists(single)) {
    w.files.push_back(single.string());
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  return w;
}

}  // namespace

std::vector<std::string> safetensors_files(const std::string& dir) { return weight_files(dir).files; }

std::map<std::string, torch::Tensor> load_safetensors_dir(const std::string& dir) {
  const auto [files, expected] = weight_files(dir);
  std::map<std::string, torch::Tensor> out;
  for (const auto& file : files) {
    SafetensorsFile st(file);
    for (const auto& e : st.entries()) {
      if (out.count(e.name)) throw Error(file + ": tensor '" + e.name + "' appears in more than one shard");
      out[e.name] = st.tensor(e.name);
    }
  }
  for (const auto& [name, shard] : expected)
    if (!out.count(name)) throw Error(dir + ": tensor '" + name + "' is listed in the index but missing from " + shard);
  return out;
}

}  // namespace llmctl

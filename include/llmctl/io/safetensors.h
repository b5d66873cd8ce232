#pragma once
// safetensors: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the raw little-endian tensor bytes. Reads are memory-mapped and validated before
// any tensor is touched; writes are atomic.
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace llmctl {

class MappedFile;

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // offsets into the data section
};

class SafetensorsFile {
 public:
  // Maps and validates `path`: header size, JSON, dtypes, shapes vs byte ranges, ranges
  // inside the file and not overlapping. Errors name the file and the tensor.
  explicit SafetensorsFile(const std::string& path);
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;
  // A CPU tensor viewing the mapped bytes (zero-copy; keeps the mapping alive). Copy or
  // convert it before writing to it.
  torch::Tensor tensor(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  std::size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes tensors (any device; saved as their dtype, contiguous) atomically.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Every tensor of a model directory: model.safetensors, or the shards listed in
// model.safetensors.index.json. Tensors are zero-copy views of the mapped files.
std::map<std::string, torch::Tensor> load_safetensors_dir(const std::string& dir);
// The safetensors files holding a model directory's weights (one, or the index's shards).
std::vector<std::string> safetensors_files(const std::string& dir);

// safetensors dtype name <-> torch dtype; throws on unsupported names.
torch::ScalarType safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(torch::ScalarType t);

}  // namespace llmctl

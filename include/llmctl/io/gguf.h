#pragma once
// GGUF (llama.cpp's model file), versions 2 and 3, little-endian:
//   "GGUF", u32 version, u64 tensor_count, u64 kv_count,
//   kv_count x (string key, u32 value type, value),
//   tensor_count x (string name, u32 n_dims, u64 dims innermost first, u32 ggml type,
//                   u64 offset into the data section),
//   zero padding to `general.alignment` (default 32), the data section (each tensor at an
//   aligned offset).
// Strings are u64 length + bytes; arrays are u32 element type + u64 count + elements.
// The reader memory-maps the file and validates every length, count, shape and offset
// against the file size before any tensor is touched; the writer is atomic.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "llmctl/quant/ggml_quants.h"

namespace llmctl {

class MappedFile;

enum class GgufType : std::uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// "u32", "string", "array", ...
std::string gguf_type_name(GgufType t);

// One metadata value with its GGUF type. Integers sit in `u` (unsigned types, bool) or `i`
// (signed types), floats in `f` (an f32 widened exactly), strings in `s`, array elements
// in `items` (all of type `elem`).
struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType elem = GgufType::U8;  // arrays only
  std::uint64_t u = 0;
  std::int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<GgufValue> items;

  static GgufValue uint(GgufType t, std::uint64_t v);  // U8 U16 U32 U64
  static GgufValue sint(GgufType t, std::int64_t v);   // I8 I16 I32 I64
  static GgufValue real(GgufType t, double v);         // F32 F64
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue array(GgufType elem, std::vector<GgufValue> items);
  static GgufValue string_array(const std::vector<std::string>& v);
  static GgufValue f32_array(const std::vector<float>& v);
  static GgufValue i32_array(const std::vector<std::int32_t>& v);

  bool operator==(const GgufValue& o) const;
  bool operator!=(const GgufValue& o) const { return !(*this == o); }
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;  // outermost first, as torch / HF (the file stores it reversed)
  GgmlType type = GgmlType::F32;
  std::uint64_t offset = 0;  // from the start of the data section
  std::uint64_t bytes = 0;
  std::int64_t numel() const;
  std::int64_t row_length() const { return shape.empty() ? 1 : shape.back(); }
};

inline constexpr std::uint32_t kGgufDefaultAlignment = 32;

class GgufFile {
 public:
  // Maps and validates `path`. Errors name the file and what is wrong with it.
  explicit GgufFile(const std::string& path);

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint32_t alignment() const { return alignment_; }
  std::uint64_t data_offset() const { return data_start_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  bool has(const std::string& key) const { return kv_index_.count(key) > 0; }
  const GgufValue& get(const std::string& key) const;  // throws naming the key when missing

  // Typed accessors: each throws an Error naming the file and key on a missing key or a
  // value of the wrong type. Integer accessors take any integer type whose value fits.
  std::uint32_t get_u32(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // f32 or f64
  const std::string& get_string(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;
  std::vector<std::int32_t> get_i32_array(const std::string& key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  bool has_tensor(const std::string& name) const { return tensor_index_.count(name) > 0; }
  const GgufTensorInfo& tensor(const std::string& name) const;  // throws naming the tensor
  // The tensor's raw bytes inside the mapping (valid while this object lives).
  const std::uint8_t* tensor_data(const std::string& name) const;
  // The tensor dequantized to float32 into `out` (numel() values).
  void read_f32(const std::string& name, float* out) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  std::uint32_t version_ = 0;
  std::uint32_t alignment_ = kGgufDefaultAlignment;
  std::uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, std::size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

// Builds a GGUF v3 file: metadata in the order added, then tensors in the order added.
class GgufWriter {
 public:
  // Fills `out` with the tensor's bytes (exactly GgufTensorInfo::bytes of them); called once,
  // while the file is written, so big tensors need not all be in memory at once.
  using Producer = std::function<void(std::uint8_t* out)>;

  void add(const std::string& key, GgufValue value);  // duplicate keys are errors
  void add_u32(const std::string& key, std::uint32_t v) { add(key, GgufValue::uint(GgufType::U32, v)); }
  void add_u64(const std::string& key, std::uint64_t v) { add(key, GgufValue::uint(GgufType::U64, v)); }
  void add_i32(const std::string& key, std::int32_t v) { add(key, GgufValue::sint(GgufType::I32, v)); }
  void add_f32(const std::string& key, float v) { add(key, GgufValue::real(GgufType::F32, v)); }
  void add_bool(const std::string& key, bool v) { add(key, GgufValue::boolean(v)); }
  void add_string(const std::string& key, std::string v) { add(key, GgufValue::string(std::move(v))); }
  void add_string_array(const std::string& key, const std::vector<std::string>& v) {
    add(key, GgufValue::string_array(v));
  }
  void add_f32_array(const std::string& key, const std::vector<float>& v) { add(key, GgufValue::f32_array(v)); }
  void add_i32_array(const std::string& key, const std::vector<std::int32_t>& v) {
    add(key, GgufValue::i32_array(v));
  }

  // `shape` outermost first (HF order); written innermost first. The row length (last
  // dim) must be a multiple of the type's block size and `data` exactly the tensor's bytes.
  void add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type,
                  std::vector<std::uint8_t> data);
  void add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type,
                  Producer producer);

  // The data alignment: general.alignment when added (a power of two), else 32.
  std::uint32_t alignment() const;
  // Writes the file atomically (temp file + rename).
  void write(const std::string& path) const;

 private:
  GgufTensorInfo check_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type) const;
  struct PendingTensor {
    GgufTensorInfo info;
    Producer producer;
  };
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, std::size_t> kv_index_;
  std::vector<PendingTensor> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

}  // namespace llmctl

#include "llmctl/io/gguf.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
// Arrays nest (an array of arrays is legal GGUF); a hostile file could nest deeply enough
// to exhaust the stack, so depth is bounded far above anything real files use.
constexpr int kMaxArrayDepth = 8;
constexpr std::uint32_t kMaxDims = 4;       // GGML_MAX_DIMS
constexpr std::size_t kMaxTensorName = 63;  // GGML_MAX_NAME - 1: llama.cpp rejects longer names

std::size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

bool valid_type(std::uint32_t t) { return t <= static_cast<std::uint32_t>(GgufType::F64); }

bool is_unsigned(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64;
}
bool is_signed(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}

// Fewest bytes one encoded value of type `t` can take: bounds a declared array count by
// what the rest of the file could hold.
std::uint64_t min_encoded_size(GgufType t) {
  if (t == GgufType::String) return 8;
  if (t == GgufType::Array) return 12;
  return scalar_size(t);
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

// Bounds-checked little-endian reads over the mapped header.
class Cursor {
 public:
  Cursor(const std::uint8_t* data, std::uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return size_ - pos_; }

  void need(std::uint64_t n, const std::string& what) const {
    if (n > remaining())
      throw Error(path_ + ": truncated GGUF file: " + what + " needs " + std::to_string(n) + " bytes at offset " +
                  std::to_string(pos_) + " but the file has " + std::to_string(size_) + " bytes");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // little-endian host (x86-64, aarch64)
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const auto n = read<std::uint64_t>(what + " length");
    need(n, what + " (" + std::to_string(n) + "-byte string)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  const std::uint8_t* data_;
  std::uint64_t size_;
  std::uint64_t pos_ = 0;
  const std::string& path_;
};

GgufValue read_value(Cursor& c, GgufType t, const std::string& what, const std::string& path, int depth) {
  switch (t) {
    case GgufType::U8: return GgufValue::uint(t, c.read<std::uint8_t>(what));
    case GgufType::U16: return GgufValue::uint(t, c.read<std::uint16_t>(what));
    case GgufType::U32: return GgufValue::uint(t, c.read<std::uint32_t>(what));
    case GgufType::U64: return GgufValue::uint(t, c.read<std::uint64_t>(what));
    case GgufType::I8: return GgufValue::sint(t, c.read<std::int8_t>(what));
    case GgufType::I16: return GgufValue::sint(t, c.read<std::int16_t>(what));
    case GgufType::I32: return GgufValue::sint(t, c.read<std::int32_t>(what));
    case GgufType::I64: return GgufValue::sint(t, c.read<std::int64_t>(what));
    case GgufType::F32: return GgufValue::real(t, c.read<float>(what));
    case GgufType::F64: return GgufValue::real(t, c.read<double>(what));
    case GgufType::Bool: return GgufValue::boolean(c.read<std::uint8_t>(what) != 0);
    case GgufType::String: return GgufValue::string(c.read_string(what));
    case GgufType::Array: {
      if (depth >= kMaxArrayDepth) throw Error(path + ": " + what + ": arrays nested too deeply");
      const auto et = c.read<std::uint32_t>(what + " element type");
      if (!valid_type(et)) throw Error(path + ": " + what + ": unknown array element type " + std::to_string(et));
      const auto elem = static_cast<GgufType>(et);
      const auto n = c.read<std::uint64_t>(what + " array length");
      if (n > c.remaining() / min_encoded_size(elem))
        throw Error(path + ": " + what + ": array of " + std::to_string(n) + " " + gguf_type_name(elem) +
                    " values cannot fit in the " + std::to_string(c.remaining()) + " bytes left (truncated or corrupt)");
      GgufValue v;
      v.type = GgufType::Array;
      v.elem = elem;
      v.items.reserve(static_cast<std::size_t>(n));
      for (std::uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(c, elem, what, path, depth + 1));
      return v;
    }
  }
  throw Error(path + ": " + what + ": unknown value type " + std::to_string(static_cast<std::uint32_t>(t)));
}

// Little-endian appends to the header buffer.
template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void put_string(std::string& out, const std::string& s) {
  put<std::uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const GgufValue& v) {
  switch (v.type) {
    case GgufType::U8: put<std::uint8_t>(out, static_cast<std::uint8_t>(v.u)); return;
    case GgufType::U16: put<std::uint16_t>(out, static_cast<std::uint16_t>(v.u)); return;
    case GgufType::U32: put<std::uint32_t>(out, static_cast<std::uint32_t>(v.u)); return;
    case GgufType::U64: put<std::uint64_t>(out, v.u); return;
    case GgufType::I8: put<std::int8_t>(out, static_cast<std::int8_t>(v.i)); return;
    case GgufType::I16: put<std::int16_t>(out, static_cast<std::int16_t>(v.i)); return;
    case GgufType::I32: put<std::int32_t>(out, static_cast<std::int32_t>(v.i)); return;
    case GgufType::I64: put<std::int64_t>(out, v.i); return;
    case GgufType::F32: put<float>(out, static_cast<float>(v.f)); return;
    case GgufType::F64: put<double>(out, v.f); return;
    case GgufType::Bool: put<std::uint8_t>(out, v.u ? 1 : 0); return;
    case GgufType::String: put_string(out, v.s); return;
    case GgufType::Array:
      put<std::uint32_t>(out, static_cast<std::uint32_t>(v.elem));
      put<std::uint64_t>(out, v.items.size());
      for (const auto& item : v.items) put_value(out, item);
      return;
  }
}

// A value built by hand must agree with its declared types before it is written.
void check_value(const std::string& key, const GgufValue& v) {
  if (!valid_type(static_cast<std::uint32_t>(v.type)))
    throw Error("GGUF key '" + key + "': invalid value type " + std::to_string(static_cast<std::uint32_t>(v.type)));
  if (v.type != GgufType::Array) return;
  for (const auto& item : v.items) {
    if (item.type != v.elem)
      throw Error("GGUF key '" + key + "': array of " + gguf_type_name(v.elem) + " holds a " + gguf_type_name(item.type));
    check_value(key, item);
  }
}

bool is_power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Byte size of a tensor of `shape` (HF order) and type `t`, or an error message.
std::uint64_t tensor_bytes(const std::vector<std::int64_t>& shape, GgmlType t, std::string* why) {
  const std::int64_t block = ggml_block_size(t);
  const std::int64_t row = shape.empty() ? 1 : shape.back();
  if (row % block != 0) {
    *why = "row length " + std::to_string(row) + " is not a multiple of the " + ggml_type_name(t) +
           " block size " + std::to_string(block);
    return 0;
  }
  std::uint64_t bytes = static_cast<std::uint64_t>(row / block) * ggml_type_size(t);
  for (std::size_t d = 0; d + 1 < shape.size(); ++d) {
    const auto n = static_cast<std::uint64_t>(shape[d]);
    if (n != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / 2 / n) {
      *why = "shape is implausibly large";
      return 0;
    }
    bytes *= n;
  }
  return bytes;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

std::string gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<std::uint32_t>(t);
  return i < 13 ? names[i] : "type " + std::to_string(i);
}

GgufValue GgufValue::uint(GgufType t, std::uint64_t v) {
  if (!is_unsigned(t)) throw Error("GgufValue::uint: " + gguf_type_name(t) + " is not an unsigned type");
  GgufValue g;
  g.type = t;
  g.u = v;
  return g;
}

GgufValue GgufValue::sint(GgufType t, std::int64_t v) {
  if (!is_signed(t)) throw Error("GgufValue::sint: " + gguf_type_name(t) + " is not a signed type");
  GgufValue g;
  g.type = t;
  g.i = v;
  return g;
}

GgufValue GgufValue::real(GgufType t, double v) {
  if (t != GgufType::F32 && t != GgufType::F64) throw Error("GgufValue::real: " + gguf_type_name(t) + " is not a float type");
  GgufValue g;
  g.type = t;
  g.f = t == GgufType::F32 ? static_cast<double>(static_cast<float>(v)) : v;
  return g;
}

GgufValue GgufValue::boolean(bool v) {
  GgufValue g;
  g.type = GgufType::Bool;
  g.u = v ? 1 : 0;
  return g;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue g;
  g.type = GgufType::String;
  g.s = std::move(v);
  return g;
}

GgufValue GgufValue::array(GgufType elem, std::vector<GgufValue> items) {
  GgufValue g;
  g.type = GgufType::Array;
  g.elem = elem;
  g.items = std::move(items);
  check_value("array", g);
  return g;
}

GgufValue GgufValue::string_array(const std::vector<std::string>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (const auto& s : v) items.push_back(string(s));
  return array(GgufType::String, std::move(items));
}

GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (float x : v) items.push_back(real(GgufType::F32, x));
  return array(GgufType::F32, std::move(items));
}

GgufValue GgufValue::i32_array(const std::vector<std::int32_t>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (std::int32_t x : v) items.push_back(sint(GgufType::I32, x));
  return array(GgufType::I32, std::move(items));
}

bool GgufValue::operator==(const GgufValue& o) const {
  if (type != o.type) return false;
  switch (type) {
    case GgufType::String: return s == o.s;
    case GgufType::Array: return elem == o.elem && items == o.items;
    case GgufType::F32: case GgufType::F64:
      // Bitwise, so NaN payloads and -0.0 round-trip checks are exact.
      return std::memcmp(&f, &o.f, sizeof f) == 0;
    default: return u == o.u && i == o.i;
  }
}

std::int64_t GgufTensorInfo::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------- reader

GgufFile::GgufFile(const std::string& path) : path_(path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    if (!std::filesystem::exists(path, ec)) throw Error(path + ": no such file");
    throw Error(path + ": not a regular file");
  }
  map_ = MappedFile::open(path);
  const std::uint64_t size = map_->size();
  if (size < 4 || std::memcmp(map_->data(), kMagic, 4) != 0) {
    std::string got;
    for (std::uint64_t k = 0; k < std::min<std::uint64_t>(size, 4); ++k) {
      const auto ch = map_->data()[k];
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", ch);
      got += (ch >= 32 && ch < 127) ? std::string(1, static_cast<char>(ch)) : std::string(hex);
    }
    throw Error(path + ": not a GGUF file (starts with \"" + got + "\", expected \"GGUF\")");
  }
  Cursor c(map_->data(), size, path_);
  c.read<std::uint32_t>("magic");
  version_ = c.read<std::uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    const std::uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3)
      throw Error(path + ": big-endian GGUF file (version " + std::to_string(swapped) +
                  "); only little-endian files are supported");
    throw Error(path + ": GGUF version " + std::to_string(version_) + " is not supported (versions 2 and 3 are)");
  }
  const auto n_tensors = c.read<std::uint64_t>("tensor count");
  const auto n_kv = c.read<std::uint64_t>("metadata count");
  // Each entry takes at least this many bytes; larger counts cannot be honest.
  if (n_kv > c.remaining() / 13)
    throw Error(path + ": metadata count " + std::to_string(n_kv) + " cannot fit in a " + std::to_string(size) +
                "-byte file (truncated or corrupt)");
  if (n_tensors > c.remaining() / 32)
    throw Error(path + ": tensor count " + std::to_string(n_tensors) + " cannot fit in a " + std::to_string(size) +
                "-byte file (truncated or corrupt)");

  for (std::uint64_t k = 0; k < n_kv; ++k) {
    const std::string what = "metadata entry " + std::to_string(k);
    std::string key = c.read_string(what + " key");
    const auto t = c.read<std::uint32_t>("type of metadata key '" + key + "'");
    if (!valid_type(t)) throw Error(path + ": metadata key '" + key + "' has unknown value type " + std::to_string(t));
    GgufValue v = read_value(c, static_cast<GgufType>(t), "metadata key '" + key + "'", path_, 0);
    if (!kv_index_.emplace(key, kv_.size()).second) throw Error(path + ": metadata key '" + key + "' appears twice");
    kv_.emplace_back(std::move(key), std::move(v));
  }
  if (has("general.alignment")) {
    const auto& a = get("general.alignment");
    if (a.type != GgufType::U32 || !is_power_of_two(a.u))
      throw Error(path + ": general.alignment must be a u32 power of two, got " +
                  (a.type == GgufType::U32 ? std::to_string(a.u) : "a " + gguf_type_name(a.type)));
    alignment_ = static_cast<std::uint32_t>(a.u);
  }

  for (std::uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    ti.name = c.read_string("name of tensor " + std::to_string(k));
    auto bad = [&](const std::string& why) { return Error(path + ": tensor '" + ti.name + "': " + why); };
    const auto n_dims = c.read<std::uint32_t>("dimension count of tensor '" + ti.name + "'");
    if (n_dims == 0 || n_dims > kMaxDims) throw bad(std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    std::vector<std::int64_t> dims;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const auto v = c.read<std::uint64_t>("dimensions of tensor '" + ti.name + "'");
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw bad("dimension " + std::to_string(v) + " is too large");
      dims.push_back(static_cast<std::int64_t>(v));
    }
    std::reverse(dims.begin(), dims.end());
    ti.shape = dims;
    std::uint64_t numel = 1;
    for (auto d : ti.shape) {
      if (d != 0 && numel > (std::uint64_t(1) << 48) / static_cast<std::uint64_t>(d))
        throw bad("shape " + shape_text(ti.shape) + " is implausibly large");
      numel *= static_cast<std::uint64_t>(d);
    }
    const auto type = c.read<std::uint32_t>("type of tensor '" + ti.name + "'");
    if (!ggml_type_supported(type))
      throw bad("ggml type " + std::to_string(type) + " is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, "
                "Q8_0, Q4_K, Q5_K, Q6_K are)");
    ti.type = static_cast<GgmlType>(type);
    std::string why;
    ti.bytes = tensor_bytes(ti.shape, ti.type, &why);
    if (!why.empty()) throw bad(why);
    ti.offset = c.read<std::uint64_t>("offset of tensor '" + ti.name + "'");
    if (ti.offset % alignment_ != 0)
      throw bad("data offset " + std::to_string(ti.offset) + " is not a multiple of the alignment " +
                std::to_string(alignment_));
    if (!tensor_index_.emplace(ti.name, tensors_.size()).second) throw bad("appears twice");
    tensors_.push_back(std::move(ti));
  }

  data_start_ = align_up(c.pos(), alignment_);
  const std::uint64_t data_size = data_start_ <= size ? size - data_start_ : 0;
  for (const auto& ti : tensors_) {
    if (ti.offset > data_size || ti.bytes > data_size - ti.offset)
      throw Error(path + ": tensor '" + ti.name + "': data [" + std::to_string(ti.offset) + ", " +
                  std::to_string(ti.offset + ti.bytes) + ") lies outside the " + std::to_string(data_size) +
                  "-byte data section (truncated file or bad offset)");
  }
  std::vector<const GgufTensorInfo*> sorted;
  for (const auto& ti : tensors_)
    if (ti.bytes > 0) sorted.push_back(&ti);
  std::sort(sorted.begin(), sorted.end(), [](auto a, auto b) { return a->offset < b->offset; });
  for (std::size_t k = 1; k < sorted.size(); ++k)
    if (sorted[k]->offset < sorted[k - 1]->offset + sorted[k - 1]->bytes)
      throw Error(path + ": tensors '" + sorted[k - 1]->name + "' and '" + sorted[k]->name + "' overlap");
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = kv_index_.find(key);
  if (it == kv_index_.end()) throw Error(path_ + ": metadata key '" + key + "' is missing");
  return kv_[it->second].second;
}

namespace {

Error wrong_type(const std::string& path, const std::string& key, const GgufValue& v, const std::string& wanted) {
  std::string got = gguf_type_name(v.type);
  if (v.type == GgufType::Array) got += " of " + gguf_type_name(v.elem);
  return Error(path + ": metadata key '" + key + "' is " + got + ", expected " + wanted);
}

// The integer held by `v`, if it is an integer that fits in [lo, hi].
bool integer_value(const GgufValue& v, std::int64_t lo, std::int64_t hi, std::int64_t* out) {
  if (is_unsigned(v.type)) {
    if (v.u > static_cast<std::uint64_t>(hi)) return false;
    *out = static_cast<std::int64_t>(v.u);
    return *out >= lo;
  }
  if (is_signed(v.type)) {
    if (v.i < lo || v.i > hi) return false;
    *out = v.i;
    return true;
  }
  return false;
}

}  // namespace

std::uint32_t GgufFile::get_u32(const std::string& key) const {
  const auto& v = get(key);
  std::int64_t x;
  if (!integer_value(v, 0, std::numeric_limits<std::uint32_t>::max(), &x))
    throw wrong_type(path_, key, v, "an integer in the u32 range");
  return static_cast<std::uint32_t>(x);
}

std::int64_t GgufFile::get_int(const std::string& key) const {
  const auto& v = get(key);
  std::int64_t x;
  if (!integer_value(v, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max(), &x))
    throw wrong_type(path_, key, v, "an integer");
  return x;
}

double GgufFile::get_float(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::F32 && v.type != GgufType::F64) throw wrong_type(path_, key, v, "f32 or f64");
  return v.f;
}

const std::string& GgufFile::get_string(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::String) throw wrong_type(path_, key, v, "a string");
  return v.s;
}

bool GgufFile::get_bool(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::Bool) throw wrong_type(path_, key, v, "a bool");
  return v.u != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::Array || v.elem != GgufType::String) throw wrong_type(path_, key, v, "an array of strings");
  std::vector<std::string> out;
  out.reserve(v.items.size());
  for (const auto& item : v.items) out.push_back(item.s);
  return out;
}

std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::Array || (v.elem != GgufType::F32 && v.elem != GgufType::F64))
    throw wrong_type(path_, key, v, "an array of f32");
  std::vector<float> out;
  out.reserve(v.items.size());
  for (const auto& item : v.items) out.push_back(static_cast<float>(item.f));
  return out;
}

std::vector<std::int32_t> GgufFile::get_i32_array(const std::string& key) const {
  const auto& v = get(key);
  if (v.type != GgufType::Array || !(is_signed(v.elem) || is_unsigned(v.elem)))
    throw wrong_type(path_, key, v, "an array of i32");
  std::vector<std::int32_t> out;
  out.reserve(v.items.size());
  for (std::size_t k = 0; k < v.items.size(); ++k) {
    std::int64_t x;
    if (!integer_value(v.items[k], std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max(), &x))
      throw Error(path_ + ": metadata key '" + key + "': element " + std::to_string(k) + " does not fit in i32");
    out.push_back(static_cast<std::int32_t>(x));
  }
  return out;
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return tensors_[it->second];
}

const std::uint8_t* GgufFile::tensor_data(const std::string& name) const {
  return map_->data() + data_start_ + tensor(name).offset;
}

void GgufFile::read_f32(const std::string& name, float* out) const {
  const auto& ti = tensor(name);
  const std::int64_t row = ti.row_length();
  const std::int64_t rows = row == 0 ? 0 : ti.numel() / row;
  ggml_dequantize(ti.type, tensor_data(name), out, rows, row);
}

// ---------------------------------------------------------------- writer

void GgufWriter::add(const std::string& key, GgufValue value) {
  if (key.empty()) throw Error("GGUF metadata keys must not be empty");
  check_value(key, value);
  if (key == "general.alignment" && (value.type != GgufType::U32 || !is_power_of_two(value.u)))
    throw Error("general.alignment must be a u32 power of two");
  if (!kv_index_.emplace(key, kv_.size()).second) throw Error("GGUF metadata key '" + key + "' added twice");
  kv_.emplace_back(key, std::move(value));
}

std::uint32_t GgufWriter::alignment() const {
  auto it = kv_index_.find("general.alignment");
  return it == kv_index_.end() ? kGgufDefaultAlignment : static_cast<std::uint32_t>(kv_[it->second].second.u);
}

GgufTensorInfo GgufWriter::check_tensor(const std::string& name, const std::vector<std::int64_t>& shape,
                                        GgmlType type) const {
  auto bad = [&](const std::string& why) { return Error("GGUF tensor '" + name + "': " + why); };
  if (name.empty() || name.size() > kMaxTensorName)
    throw bad("name must have 1 to " + std::to_string(kMaxTensorName) + " characters");
  if (tensor_index_.count(name)) throw bad("added twice");
  if (shape.empty() || shape.size() > kMaxDims) throw bad("needs 1 to 4 dimensions, got " + std::to_string(shape.size()));
  for (auto d : shape)
    if (d < 0) throw bad("negative dimension in shape " + shape_text(shape));
  std::string why;
  GgufTensorInfo info;
  info.name = name;
  info.shape = shape;
  info.type = type;
  info.bytes = tensor_bytes(shape, type, &why);
  if (!why.empty()) throw bad(why);
  return info;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type,
                            std::vector<std::uint8_t> data) {
  auto info = check_tensor(name, shape, type);
  if (info.bytes != data.size())
    throw Error("GGUF tensor '" + name + "': " + std::to_string(data.size()) + " bytes given, shape " +
                shape_text(shape) + " of " + ggml_type_name(type) + " needs " + std::to_string(info.bytes));
  auto bytes = std::make_shared<std::vector<std::uint8_t>>(std::move(data));
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back({std::move(info), [bytes](std::uint8_t* out) { std::memcpy(out, bytes->data(), bytes->size()); }});
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type,
                            Producer producer) {
  auto info = check_tensor(name, shape, type);
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back({std::move(info), std::move(producer)});
}

void GgufWriter::write(const std::string& path) const {
  const std::uint64_t align = alignment();
  std::string header;
  header.append(kMagic, 4);
  put<std::uint32_t>(header, 3);
  put<std::uint64_t>(header, tensors_.size());
  put<std::uint64_t>(header, kv_.size());
  for (const auto& [key, value] : kv_) {
    put_string(header, key);
    put<std::uint32_t>(header, static_cast<std::uint32_t>(value.type));
    put_value(header, value);
  }
  std::uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(header, t.info.name);
    put<std::uint32_t>(header, static_cast<std::uint32_t>(t.info.shape.size()));
    for (auto it = t.info.shape.rbegin(); it != t.info.shape.rend(); ++it) put<std::uint64_t>(header, *it);
    put<std::uint32_t>(header, static_cast<std::uint32_t>(t.info.type));
    put<std::uint64_t>(header, offset);
    offset = align_up(offset + t.info.bytes, align);
  }
  header.resize(align_up(header.size(), align), '\0');

  AtomicFile out(path);
  out.write(header);
  std::vector<std::uint8_t> buf;
  for (const auto& t : tensors_) {
    const auto padded = align_up(t.info.bytes, align);
    buf.assign(padded, 0);
    t.producer(buf.data());
    out.write(buf.data(), buf.size());
  }
  out.commit();
}

}  // namespace llmctl

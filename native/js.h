// Arguments from JavaScript, checked. The addon is called by our TypeScript, but also by anyone who
// requires the .node file: every value is checked here for type, typed-array kind, length and range before
// it is used, and a bad one is a UserError naming it (a JavaScript Error, never a crash). node-addon-api's
// As<T>() checks nothing: a Uint8Array read As<Int32Array> reads four times its length. So entry points read
// their arguments through these functions only, and typed arrays are copied on the JavaScript thread:
// nothing reads JavaScript memory after the call returns.
#pragma once
#include "common.h"

#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>
#include <sstream>

namespace tl::js {

inline std::string show(double d) {
  std::ostringstream s;
  s << d;
  return s.str();
}

inline double number(const Napi::Value& v, const std::string& what) {
  if (!v.IsNumber()) throw UserError(what + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw UserError(what + " must be a finite number, got " + show(d));
  return d;
}

inline double number(const Napi::Value& v, const std::string& what, double lo, double hi) {
  const double d = number(v, what);
  if (d < lo || d > hi) throw UserError(what + " must be in [" + show(lo) + ", " + show(hi) + "], got " + show(d));
  return d;
}

inline int64_t integer(const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi) {
  const double d = number(v, what);
  if (d != std::floor(d) || d < static_cast<double>(lo) || d > static_cast<double>(hi))
    throw UserError(what + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + show(d));
  return static_cast<int64_t>(d);
}

inline bool boolean(const Napi::Value& v, const std::string& what) {
  if (!v.IsBoolean()) throw UserError(what + " must be true or false");
  return v.As<Napi::Boolean>().Value();
}

inline std::string string(const Napi::Value& v, const std::string& what) {
  if (!v.IsString()) throw UserError(what + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

inline Napi::Object object(const Napi::Value& v, const std::string& what) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) throw UserError(what + " must be an object");
  return v.As<Napi::Object>();
}

// Options: a key that is absent or undefined takes the default.
inline bool has(const Napi::Object& o, const char* key) { return o.Has(key) && !o.Get(key).IsUndefined(); }

template <typename T>
struct Kind;
template <>
struct Kind<uint8_t> {
  static constexpr napi_typedarray_type type = napi_uint8_array;
  static constexpr const char* name = "Uint8Array";
};
template <>
struct Kind<int32_t> {
  static constexpr napi_typedarray_type type = napi_int32_array;
  static constexpr const char* name = "Int32Array";
};
template <>
struct Kind<float> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct Kind<double> {
  static constexpr napi_typedarray_type type = napi_float64_array;
  static constexpr const char* name = "Float64Array";
};

// A typed array of exactly T's kind (a Buffer is a Uint8Array); `length` elements when it is not -1.
template <typename T>
Napi::TypedArrayOf<T> typedArray(const Napi::Value& v, const std::string& what, int64_t length = -1) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != Kind<T>::type) throw UserError(what + " must be a " + Kind<T>::name);
  auto a = v.As<Napi::TypedArrayOf<T>>();
  if (length >= 0 && static_cast<int64_t>(a.ElementLength()) != length)
    throw UserError(what + " must hold " + std::to_string(length) + " values, got " + std::to_string(a.ElementLength()));
  return a;
}

// A copy of a typed array's elements as a CPU tensor of `dtype` (the matching kind), taken now.
template <typename T>
torch::Tensor copyTyped(const Napi::Value& v, const std::string& what, torch::ScalarType dtype, int64_t length = -1) {
  auto a = typedArray<T>(v, what, length);
  auto t = torch::empty({static_cast<int64_t>(a.ElementLength())}, torch::TensorOptions().dtype(dtype));
  if (a.ElementLength() > 0) std::memcpy(t.data_ptr(), a.Data(), a.ElementLength() * sizeof(T));
  return t;
}

// n * p * p * 3 without overflow, for image batches: n and p are checked first.
inline int64_t imageBytes(int64_t n, int64_t p) {
  const double bytes = static_cast<double>(n) * static_cast<double>(p) * static_cast<double>(p) * 3.0;
  if (bytes > static_cast<double>(std::numeric_limits<int32_t>::max()) * 64) throw UserError("the image batch is too large (" + show(bytes) + " bytes)");
  return n * p * p * 3;
}

// An options object, read key by key through the checked readers above. Absent or undefined keys take the
// caller's default (the opt* readers return std::nullopt); present ones must be right, or the call fails
// naming the key. Errors name the key alone, or "<prefix>.<key>" for a nested object (head.ps).
class Options {
 public:
  Options(const Napi::Value& v, const std::string& what, std::string prefix = "") : o_(js::object(v, what)), prefix_(std::move(prefix)) {}
  bool has(const char* key) const { return js::has(o_, key); }
  Napi::Value value(const char* key) const { return o_.Get(key); }
  std::string name(const char* key) const { return prefix_.empty() ? std::string(key) : prefix_ + "." + key; }

  double number(const char* key, double lo = -INFINITY, double hi = INFINITY) const { return js::number(o_.Get(key), name(key), lo, hi); }
  int64_t integer(const char* key, int64_t lo, int64_t hi) const { return js::integer(o_.Get(key), name(key), lo, hi); }
  bool boolean(const char* key) const { return js::boolean(o_.Get(key), name(key)); }
  std::string string(const char* key) const { return js::string(o_.Get(key), name(key)); }

  std::optional<double> optNumber(const char* key, double lo = -INFINITY, double hi = INFINITY) const {
    return has(key) ? std::optional<double>(number(key, lo, hi)) : std::nullopt;
  }
  std::optional<int64_t> optInteger(const char* key, int64_t lo, int64_t hi) const {
    return has(key) ? std::optional<int64_t>(integer(key, lo, hi)) : std::nullopt;
  }
  std::optional<bool> optBoolean(const char* key) const { return has(key) ? std::optional<bool>(boolean(key)) : std::nullopt; }
  std::optional<std::string> optString(const char* key) const { return has(key) ? std::optional<std::string>(string(key)) : std::nullopt; }
  bool flag(const char* key, bool fallback = false) const { return optBoolean(key).value_or(fallback); }

  // A string naming one of `choices`; the error lists them.
  template <typename T>
  std::optional<T> optChoice(const char* key, const std::vector<std::pair<std::string, T>>& choices) const {
    if (!has(key)) return std::nullopt;
    const auto v = o_.Get(key);
    const std::string got = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string("a non-string");
    std::string names;
    for (const auto& c : choices) {
      if (v.IsString() && c.first == got) return c.second;
      names += (names.empty() ? "'" : ", '") + c.first + "'";
    }
    throw UserError(name(key) + " must be one of " + names + ", got " + (v.IsString() ? "'" + got + "'" : got));
  }

  // An array of strings (absent: empty), at most `most` of them.
  std::vector<std::string> strings(const char* key, size_t most = 1 << 20) const {
    std::vector<std::string> out;
    if (!has(key)) return out;
    const auto v = o_.Get(key);
    if (!v.IsArray()) throw UserError(name(key) + " must be an array of strings");
    auto a = v.As<Napi::Array>();
    if (a.Length() > most) throw UserError(name(key) + " holds " + std::to_string(a.Length()) + " strings; at most " + std::to_string(most) + " are taken");
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(js::string(a.Get(i), name(key) + "[" + std::to_string(i) + "]"));
    return out;
  }

  // An array of finite numbers in [lo, hi] (exactly `length` of them when it is not -1).
  std::vector<double> numbers(const char* key, int64_t length = -1, double lo = -INFINITY, double hi = INFINITY) const {
    const auto v = o_.Get(key);
    if (!v.IsArray()) throw UserError(name(key) + " must be an array of numbers");
    auto a = v.As<Napi::Array>();
    if (length >= 0 && a.Length() != static_cast<uint32_t>(length))
      throw UserError(name(key) + " must hold " + std::to_string(length) + " numbers, got " + std::to_string(a.Length()));
    if (a.Length() > (1u << 24)) throw UserError(name(key) + " holds too many numbers");
    std::vector<double> out;
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(js::number(a.Get(i), name(key) + "[" + std::to_string(i) + "]", lo, hi));
    return out;
  }

  Options object(const char* key) const { return Options(o_.Get(key), name(key), name(key)); }
  std::optional<Options> optObject(const char* key) const {
    return has(key) && !o_.Get(key).IsNull() ? std::optional<Options>(object(key)) : std::nullopt;
  }

  template <typename T>
  torch::Tensor typedCopy(const char* key, torch::ScalarType dtype, int64_t length = -1) const {
    return copyTyped<T>(o_.Get(key), name(key), dtype, length);
  }

 private:
  Napi::Object o_;
  std::string prefix_;
};

// Values for JavaScript, built in one way everywhere.
template <typename T>
Napi::TypedArrayOf<T> typed(Napi::Env env, const std::vector<T>& v) {
  auto a = Napi::TypedArrayOf<T>::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}
// A CPU tensor of T's dtype, copied.
template <typename T>
Napi::TypedArrayOf<T> typed(Napi::Env env, const torch::Tensor& t) {
  auto c = t.contiguous();
  auto a = Napi::TypedArrayOf<T>::New(env, static_cast<size_t>(c.numel()));
  if (c.numel() > 0) std::memcpy(a.Data(), c.data_ptr<T>(), a.ByteLength());
  return a;
}
inline Napi::Array array(Napi::Env env, const std::vector<std::string>& v) {
  auto a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) a.Set(static_cast<uint32_t>(i), v[i]);
  return a;
}
inline Napi::Number count(Napi::Env env, int64_t n) { return Napi::Number::New(env, static_cast<double>(n)); }

// The largest image side the native pipeline takes (presize, size): far above any training size, and small
// enough that no product of sizes overflows.
constexpr int64_t kMaxSide = 8192;
// The largest batch or image count in one call.
constexpr int64_t kMaxCount = int64_t{1} << 31;

}  // namespace tl::js

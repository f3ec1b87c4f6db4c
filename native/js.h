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

// The largest image side the native pipeline takes (presize, size): far above any training size, and small
// enough that no product of sizes overflows.
constexpr int64_t kMaxSide = 8192;
// The largest batch or image count in one call.
constexpr int64_t kMaxCount = int64_t{1} << 31;

}  // namespace tl::js

// Body validation throughput (issue 6 target: >= 1 GB/s each on one core):
// the streaming JSON validator, the CSV checker and the multipart parser over
// ~1 MiB realistic bodies, fed in 16 KiB slices as the proxy would see them.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "filters/csv_validator.h"
#include "filters/json_validator.h"
#include "filters/multipart_parser.h"
#include "filters/upload_sniff.h"

namespace {

using namespace portcullis;

constexpr size_t kTarget = 1 << 20;
constexpr size_t kSlice = 16 * 1024;

// An API payload: array of records with strings, numbers, booleans, nulls,
// nested arrays/objects and some non-ASCII text.
std::string makeJson(bool pretty) {
  const char* nl = pretty ? "\n    " : "";
  const char* sp = pretty ? " " : "";
  std::string s = "[";
  for (int i = 0; s.size() < kTarget; ++i) {
    if (i) s += ",";
    s += pretty ? "\n  {" : "{";
    s += nl;
    s += "\"id\":" + std::string(sp) + std::to_string(100000 + i) + "," + nl;
    s += "\"name\":" + std::string(sp) + "\"Customer " + std::to_string(i) + " M\xC3\xBCller GmbH\"," + nl;
    s += "\"email\":" + std::string(sp) + "\"customer" + std::to_string(i) + "@example.com\"," + nl;
    s += "\"balance\":" + std::string(sp) + "-" + std::to_string(i % 9973) + ".25e2," + nl;
    s += "\"active\":" + std::string(sp) + (i % 3 ? "true" : "false") + "," + nl;
    s += "\"manager\":" + std::string(sp) + "null," + nl;
    s += "\"tags\":" + std::string(sp) + "[\"retail\",\"priority\",\"eu-west\"]," + nl;
    s += "\"address\":" + std::string(sp) + "{\"street\":\"" + std::to_string(i) +
         " Long Street Name\",\"city\":\"Berlin\",\"zip\":\"10115\"}," + nl;
    s += "\"note\":" + std::string(sp) + "\"Escaped \\\"quotes\\\" and a \\u00e9 and a newline\\n in text\"";
    s += pretty ? "\n  }" : "}";
  }
  s += "]";
  return s;
}

// Worst realistic case: a numeric matrix (short tokens, no long strings).
std::string makeJsonNumbers() {
  std::string s = "{\"matrix\":[";
  for (int i = 0; s.size() < kTarget; ++i) {
    if (i) s += ",";
    s += "[";
    for (int j = 0; j < 8; ++j) {
      if (j) s += ",";
      s += std::to_string((i * 31 + j * 7) % 100003) + "." + std::to_string(j * 13 % 97) + (j % 3 ? "" : "e-3");
    }
    s += "]";
  }
  s += "]}";
  return s;
}

std::string makeCsv() {
  std::string s = "id,name,email,city,amount,created,comment\r\n";
  for (int i = 0; s.size() < kTarget; ++i) {
    s += std::to_string(100000 + i) + ",\"Customer " + std::to_string(i) + ", Ltd\",customer" + std::to_string(i) +
         "@example.com,M\xC3\xBCnchen," + std::to_string(i % 9973) + ".50,2026-12-04T17:" +
         std::to_string(10 + i % 50) + ":00Z,\"said \"\"hello\"\" twice\"\r\n";
  }
  return s;
}

const std::string& jsonCompact() {
  static const std::string s = makeJson(false);
  return s;
}
const std::string& jsonPretty() {
  static const std::string s = makeJson(true);
  return s;
}
const std::string& jsonNumbers() {
  static const std::string s = makeJsonNumbers();
  return s;
}
const std::string& csvBody() {
  static const std::string s = makeCsv();
  return s;
}
// A form with two small fields and a ~1 MiB CSV file part.
const std::string& multipartBody() {
  static const std::string s = [] {
    const std::string b = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    std::string m = "--" + b + "\r\nContent-Disposition: form-data; name=\"account\"\r\n\r\nacme\r\n";
    m += "--" + b + "\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nmonthly export\r\n";
    m += "--" + b + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"export.csv\"\r\n"
         "Content-Type: text/csv\r\n\r\n" + csvBody() + "\r\n--" + b + "--\r\n";
    return m;
  }();
  return s;
}

// A form with one ~1 MiB binary file part (pseudo-random bytes behind an xlsx
// signature, so CRs and delimiter prefixes occur at random).
const std::string& multipartBinaryBody() {
  static const std::string s = [] {
    const std::string b = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    std::string m = "--" + b + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"book.xlsx\"\r\n"
                    "Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\r\n\r\n";
    // A ZIP local file header naming an OOXML member (what the sniffer checks).
    m += std::string("PK\x03\x04\x14\x00\x06\x00\x08\x00", 10) + std::string(16, '\0') +
         std::string("\x13\x00\x00\x00", 4) + "[Content_Types].xml";
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < kTarget; ++i) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      m += static_cast<char>(x >> 24);
    }
    m += "\r\n--" + b + "--\r\n";
    return m;
  }();
  return s;
}

template <class V>
void feedAll(V& v, const std::string& s) {
  for (size_t i = 0; i < s.size(); i += kSlice) v.feed(s.data() + i, std::min(kSlice, s.size() - i));
}

void BM_JsonValidateCompact(benchmark::State& state) {
  const std::string& s = jsonCompact();
  for (auto _ : state) {
    JsonValidator v;
    feedAll(v, s);
    if (!v.finish().ok()) state.SkipWithError("invalid");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_JsonValidateCompact);

void BM_JsonValidatePretty(benchmark::State& state) {
  const std::string& s = jsonPretty();
  for (auto _ : state) {
    JsonValidator v;
    feedAll(v, s);
    if (!v.finish().ok()) state.SkipWithError("invalid");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_JsonValidatePretty);

void BM_JsonValidateNumbers(benchmark::State& state) {
  const std::string& s = jsonNumbers();
  for (auto _ : state) {
    JsonValidator v;
    feedAll(v, s);
    if (!v.finish().ok()) state.SkipWithError("invalid");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_JsonValidateNumbers);

void BM_CsvValidate(benchmark::State& state) {
  const std::string& s = csvBody();
  for (auto _ : state) {
    CsvValidator v;
    feedAll(v, s);
    if (!v.finish().ok()) state.SkipWithError("invalid");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_CsvValidate);

struct NullHandler : MultipartHandler {
  size_t bytes = 0;
  bool onPartBegin(const MultipartPart&) override { return true; }
  bool onPartData(const char*, size_t n) override {
    bytes += n;
    return true;
  }
  bool onPartEnd() override { return true; }
};

void BM_MultipartParse(benchmark::State& state) {
  const std::string& s = multipartBody();
  for (auto _ : state) {
    NullHandler h;
    MultipartParser p("----WebKitFormBoundary7MA4YWxkTrZu0gW", h);
    feedAll(p, s);
    if (!p.finish().ok()) state.SkipWithError("invalid");
    benchmark::DoNotOptimize(h.bytes);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_MultipartParse);

void BM_MultipartParseBinary(benchmark::State& state) {
  const std::string& s = multipartBinaryBody();
  for (auto _ : state) {
    NullHandler h;
    MultipartParser p("----WebKitFormBoundary7MA4YWxkTrZu0gW", h);
    feedAll(p, s);
    if (!p.finish().ok()) state.SkipWithError("invalid");
    benchmark::DoNotOptimize(h.bytes);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_MultipartParseBinary);

// Parser plus the CSV sniffer on the file part: what an upload route costs.
struct SniffHandler : MultipartHandler {
  UploadSniffer sniffer{UploadKind::kCsv};
  bool file = false;
  bool onPartBegin(const MultipartPart& p) override {
    file = p.has_filename;
    if (file) sniffer = UploadSniffer(uploadKindFor(p.content_type));
    return true;
  }
  bool onPartData(const char* d, size_t n) override { return !file || sniffer.feed(d, n).ok(); }
  bool onPartEnd() override { return !file || sniffer.finish().ok(); }
};

void BM_MultipartParseAndSniffCsv(benchmark::State& state) {
  const std::string& s = multipartBody();
  for (auto _ : state) {
    SniffHandler h;
    MultipartParser p("----WebKitFormBoundary7MA4YWxkTrZu0gW", h);
    feedAll(p, s);
    if (!p.finish().ok()) state.SkipWithError("invalid");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.size()));
}
BENCHMARK(BM_MultipartParseAndSniffCsv);

}  // namespace

BENCHMARK_MAIN();

// Fuzzes the multipart/form-data parser (filters/multipart_parser.h) with a
// handler that sniffs every file part (filters/upload_sniff.h), as the upload
// filter does. Input layout: byte 0 = split offset; then a Content-Type line
// up to the first '\n' (the boundary is taken from it with multipartBoundary;
// if it has none, "XyZ" is used), then the body, fed in two slices.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "filters/multipart_parser.h"
#include "filters/upload_sniff.h"

using namespace portcullis;

namespace {

struct SniffingHandler : MultipartHandler {
  std::unique_ptr<UploadSniffer> sniffer;
  bool in_part = false;
  uint32_t parts = 0;

  bool onPartBegin(const MultipartPart& part) override {
    if (in_part) __builtin_trap();  // begin without end
    in_part = true;
    ++parts;
    // Touch the views: they must be valid during onPartBegin.
    size_t sum = part.name.size() + part.filename.size() + part.content_type.size();
    for (char c : part.name) sum += static_cast<unsigned char>(c);
    for (char c : part.filename) sum += static_cast<unsigned char>(c);
    for (char c : part.content_type) sum += static_cast<unsigned char>(c);
    (void)sum;
    sniffer.reset();
    if (part.has_filename) {
      UploadKind kind = uploadKindFor(part.content_type);
      (void)mediaTypeOf(part.content_type);
      (void)uploadKindName(kind);
      sniffer = std::make_unique<UploadSniffer>(kind);
    }
    return true;
  }
  bool onPartData(const char* p, size_t n) override {
    if (!in_part) __builtin_trap();
    if (sniffer) sniffer->feed(p, n);
    return true;
  }
  bool onPartEnd() override {
    if (!in_part) __builtin_trap();
    in_part = false;
    if (sniffer) (void)sniffer->finish();
    return true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  size_t nl = in.find('\n');
  std::string_view content_type = nl == std::string_view::npos ? std::string_view() : in.substr(0, nl);
  std::string_view body = nl == std::string_view::npos ? in : in.substr(nl + 1);

  std::string_view boundary;
  BoundaryError be = multipartBoundary(content_type, boundary);
  (void)boundaryErrorName(be);
  if (be != BoundaryError::kNone) boundary = "XyZ";
  if (!validBoundary(boundary)) {
    if (be == BoundaryError::kNone) __builtin_trap();  // multipartBoundary returned a bad boundary
    return 0;
  }

  // Upload sniffing straight on the body too, for the declared type.
  {
    UploadSniffer direct(uploadKindFor(content_type));
    direct.feed(body.data(), body.size());
    (void)direct.finish();
  }

  size_t split = data[0];
  if (split > body.size()) split = body.size();
  MultipartLimits limits;
  limits.max_parts = 16;
  limits.max_head_bytes = 512;
  limits.max_preamble_bytes = 64;
  limits.max_epilogue_bytes = 64;

  SniffingHandler h1;
  MultipartParser whole(boundary, h1, limits);
  whole.feed(body);
  MultipartParser::Result r1 = whole.finish();
  (void)MultipartParser::errorName(r1.error);

  SniffingHandler h2;
  MultipartParser pieces(boundary, h2, limits);
  pieces.feed(body.substr(0, split));
  pieces.feed(body.substr(split));
  MultipartParser::Result r2 = pieces.finish();
  // Documented streaming contract: outcome and offset do not depend on the split.
  if (r1.error != r2.error || r1.offset != r2.offset || whole.partCount() != pieces.partCount()) __builtin_trap();
  return 0;
}

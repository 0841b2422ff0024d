#include "filters/validate.h"

#include <optional>

#include "filters/json_validator.h"
#include "filters/media_type.h"
#include "filters/multipart_parser.h"
#include "filters/upload_sniff.h"
#include "filters/utf8.h"
#include "proxy/config.h"
#include "proxy/headers.h"

namespace portcullis {

namespace {

bool listed(const std::vector<std::string>& types, std::string_view media) {
  for (const std::string& t : types)
    if (equalsIgnoreCase(t, media)) return true;
  return false;
}

bool isJsonType(std::string_view media) {
  if (equalsIgnoreCase(media, "application/json")) return true;
  return media.size() > 5 && equalsIgnoreCase(media.substr(media.size() - 5), "+json");
}

class Validate final : public Filter, private MultipartHandler {
 public:
  explicit Validate(const RouteConfig* route) : route_(route) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    if (!head.hasBody()) return FilterStatus::kContinue;
    const Header* ct = head.find(HeaderId::kContentType);
    const std::string_view media = ct != nullptr ? mediaTypeOf(ct->value) : std::string_view();
    if (!route_->content_types.empty() && (media.empty() || !listed(route_->content_types, media))) {
      ctx.respond(415, "unsupported_media_type", "validate",
                  media.empty() ? "body without Content-Type" : "Content-Type not allowed on route");
      return FilterStatus::kRespond;
    }
    if (route_->upload) {
      const UploadKind kind = uploadKindFor(media);
      if (kind == UploadKind::kUnsupported) {
        ctx.respond(415, "unsupported_media_type", "validate", "not an upload type");
        return FilterStatus::kRespond;
      }
      // The CSV check reads UTF-8; a body declared in another charset would
      // pass it and be read differently by the backend.
      if (kind == UploadKind::kCsv && textCharset(ct->value) != TextCharset::kUtf8) {
        ctx.respond(415, "unsupported_media_type", "validate", "charset not UTF-8");
        return FilterStatus::kRespond;
      }
      if (kind == UploadKind::kMultipart) {
        std::string_view boundary;
        if (multipartBoundary(ct->value, boundary) != BoundaryError::kNone) {
          ctx.respond(422, "invalid_upload", "validate", "bad multipart boundary");
          return FilterStatus::kRespond;
        }
        multipart_.emplace(boundary, static_cast<MultipartHandler&>(*this));
      } else {
        sniffer_.emplace(kind);
      }
      return FilterStatus::kContinue;
    }
    if (route_->validate_json && isJsonType(media)) json_.emplace();
    return FilterStatus::kContinue;
  }

  FilterStatus onRequestBody(RequestContext& ctx, BodyChunk& chunk, bool end) override {
    const char* p = chunk.data.data();
    const size_t n = chunk.data.size();
    if (json_) {
      JsonValidator::Result r = end ? json_->finish() : json_->feed(p, n);
      if (!r.ok()) {
        ctx.respond(400, "bad_request", "validate", JsonValidator::errorName(r.error));
        return FilterStatus::kRespond;
      }
    } else if (sniffer_) {
      UploadSniffer::Result r = end ? sniffer_->finish() : sniffer_->feed(p, n);
      if (!r.ok()) {
        ctx.respond(422, "invalid_upload", "validate", UploadSniffer::errorName(r.error));
        return FilterStatus::kRespond;
      }
    } else if (multipart_) {
      MultipartParser::Result r = end ? multipart_->finish() : multipart_->feed(p, n);
      if (!r.ok()) {
        ctx.respond(422, "invalid_upload", "validate", part_error_ != nullptr ? part_error_ : "bad multipart body");
        return FilterStatus::kRespond;
      }
    }
    return FilterStatus::kContinue;
  }

 private:
  // Multipart: file parts must declare an allowed upload type and match it.
  // A part without a filename is a file part too if it declares a type other
  // than text/plain (backends take typed parts for files); a plain form field
  // must be text: UTF-8 without control characters but HTAB, CR and LF. A
  // text/plain field or text/csv file part may declare no charset but UTF-8.
  bool onPartBegin(const MultipartPart& part) override {
    part_sniffer_.reset();
    text_field_ = false;
    const std::string_view media = mediaTypeOf(part.content_type);
    if (!part.has_filename && (media.empty() || equalsIgnoreCase(media, "text/plain"))) {
      if (!media.empty() && textCharset(part.content_type) != TextCharset::kUtf8) {
        part_error_ = "form field charset not UTF-8";
        return false;
      }
      text_field_ = true;
      text_state_ = {};
      return true;
    }
    const UploadKind kind = uploadKindFor(media);
    if (media.empty() || kind == UploadKind::kUnsupported || kind == UploadKind::kMultipart ||
        !listed(route_->content_types.empty() ? kAnyUpload : route_->content_types, media)) {
      part_error_ = "file part type not allowed";
      return false;
    }
    if (kind == UploadKind::kCsv && textCharset(part.content_type) != TextCharset::kUtf8) {
      part_error_ = "file part charset not UTF-8";
      return false;
    }
    part_sniffer_.emplace(kind);
    return true;
  }
  bool onPartData(const char* p, size_t n) override {
    if (text_field_ && !textBytes(p, n)) {
      part_error_ = "form field is not text";
      return false;
    }
    if (part_sniffer_ && !part_sniffer_->feed(p, n).ok()) {
      part_error_ = UploadSniffer::errorName(part_sniffer_->result().error);
      return false;
    }
    return true;
  }
  bool onPartEnd() override {
    if (text_field_ && text_state_.need != 0) {
      part_error_ = "form field is not text";
      return false;
    }
    if (part_sniffer_ && !part_sniffer_->finish().ok()) {
      part_error_ = UploadSniffer::errorName(part_sniffer_->result().error);
      return false;
    }
    return true;
  }

  // NOLINTNEXTLINE(cert-err58-cpp): three literals copied at start-up; bad_alloc there ends the process either way
  static inline const std::vector<std::string> kAnyUpload = {
      "text/csv", "application/vnd.ms-excel", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"};

  bool textBytes(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const auto c = static_cast<uint8_t>(p[i]);
      if (text_state_.need > 0) {
        if (!utf8::cont(c, text_state_)) return false;
      } else if (c >= 0x80) {
        if (!utf8::lead(c, text_state_)) return false;
      } else if ((c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7F) {
        return false;
      }
    }
    return true;
  }

  const RouteConfig* route_;
  std::optional<JsonValidator> json_;
  std::optional<UploadSniffer> sniffer_;
  std::optional<MultipartParser> multipart_;
  std::optional<UploadSniffer> part_sniffer_;
  const char* part_error_ = nullptr;
  bool text_field_ = false;  // the current part is a plain form field
  utf8::State text_state_;
};

}  // namespace

Filter* ValidateFactory::create(RequestContext& ctx) const {
  const RouteConfig* r = ctx.route;
  if (r == nullptr || (r->content_types.empty() && !r->validate_json && !r->upload)) return nullptr;
  return ctx.arena().make<Validate>(r);
}

}  // namespace portcullis

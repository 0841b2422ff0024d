// Request validation per route (SPEC §3 [[route]], §5): the Content-Type
// allowlist, JSON well-formedness, and upload sniffing, all streaming.
//
// - content_types non-empty: a request with a body must declare one of them
//   (media type, case-insensitive, parameters ignored), else 415.
// - validate_json: an application/json (or +json) body is checked as it
//   streams; the first bad byte answers 400 before it reaches the backend.
// - upload: the declared type picks the check: text/csv (UTF-8, no CTLs,
//   RFC 4180 quoting), xlsx (ZIP magic), xls (OLE2 magic), or
//   multipart/form-data, parsed as a stream, where every file part's type
//   must be allowed and must match its bytes. Anything else is 415; a
//   mismatch or a broken multipart body is 422 invalid_upload.
// A refusal mid-body leaves the upstream with an unterminated request (the
// proxy closes that connection) and closes the client connection.
#pragma once

#include "filters/filter.h"

namespace portcullis {

class ValidateFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "validate"; }
  Filter* create(RequestContext& ctx) const override;
  bool wantsBody() const override { return true; }
};

}  // namespace portcullis

// Media type values (Content-Type, RFC 9110 §8.3.1, parameters §5.6.6):
//
//   media-type = type "/" subtype *( OWS ";" OWS [ parameter ] )
//   parameter  = name "=" ( token / quoted-string )
//
// Parsed in place, without allocating; names and values are views into the
// header value. Type, subtype and parameter names compare case-insensitively.
#pragma once

#include <cstdint>
#include <string_view>

namespace portcullis {

// RFC 9110 tchar.
bool isTchar(uint8_t c);

// ASCII case-insensitive equality (media types, parameter names, charsets).
bool iequals(std::string_view a, std::string_view b);

struct MediaParam {
  std::string_view name;   // a token
  std::string_view value;  // a token, or a quoted-string's content (quotes off, escapes left in)
  bool quoted = false;
  bool escaped = false;  // the quoted-string holds a quoted-pair ('\')
};

// Walks a media type's parameters, in order.
class MediaParams {
 public:
  // `params`: what follows the subtype (see splitMediaType).
  explicit MediaParams(std::string_view params) : p_(params.data()), end_(params.data() + params.size()) {}

  // The next parameter into `out`: true. False at the end, or at the first
  // syntax error (a missing ';', '=' or value, an unterminated quoted-string,
  // a control character in one), after which bad() is true.
  bool next(MediaParam& out);
  bool bad() const { return bad_; }

 private:
  const char* p_;
  const char* end_;
  bool bad_ = false;
};

// Splits `content_type` into type and subtype (tokens; OWS allowed before the
// type) and the parameter text after them. False if it does not start with
// type "/" subtype.
bool splitMediaType(std::string_view content_type, std::string_view& type, std::string_view& subtype,
                    std::string_view& params);

// What a text media type says of its encoding.
enum class TextCharset : uint8_t {
  kUtf8,       // no charset parameter, or "utf-8" / "us-ascii" (a subset), any case, quoted or not
  kOther,      // a charset the body would be read in other than UTF-8, or charset given twice
  kBadSyntax,  // the value is not type/subtype *( ; name=value )
};
TextCharset textCharset(std::string_view content_type);

}  // namespace portcullis

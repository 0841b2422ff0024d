// Role-based access control: pure decision logic (SPEC §3 [[role]]).
//
// A role has a name and a list of allow patterns of the form
//
//     "<METHOD> <path pattern>"        e.g. "GET /v1/accounts/{account}/uploads/*"
//
// separated by exactly one space. METHOD is 1..20 upper-case letters and is
// compared exactly (methods are case-sensitive, RFC 9110 §9.1). The path pattern
// starts with '/' and is split on '/' into segments, each one of:
//   - a literal of RFC 3986 pchar characters without '%', '*', '{', '}';
//     "." and ".." are refused. It must equal the request segment byte for byte.
//   - "{account}": the whole request segment must equal the token's account
//     exactly (no prefix, suffix or case folding), so tenants never reach each
//     other's paths.
//   - "*", only as the last segment: one or more trailing request segments, each
//     non-empty (a single trailing '/' after them is allowed).
// An empty segment is allowed only last (a pattern ending in '/', which then
// matches only a path ending in '/').
//
// Decisions are default-deny: a request is allowed only if one of the token's
// roles has a pattern matching its method and path. The path is expected to be
// the proxy's normalised path without query, but the matcher does not rely on
// it: a path that is not absolute, contains '?', '#', a backslash, a control or
// non-ASCII byte, an empty segment other than a final one ("//"), a "." or ".."
// segment (also percent-encoded: "%2e", ".%2E", ...), an encoded '/', '\' or
// NUL ("%2f", "%5c", "%00"), or a malformed percent escape is denied outright,
// whatever the roles.
//
// A built RbacPolicy is immutable and may be shared by all threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace portcullis {

enum class RbacPatternError : uint8_t {
  kOk = 0,
  kEmpty,            // empty pattern
  kTooLong,          // longer than 1024 bytes
  kBadMethod,        // method not 1..20 of A-Z
  kBadSeparator,     // not exactly one space between method and path
  kPathNotAbsolute,  // path does not start with '/'
  kEmptySegment,     // "//" (an empty segment other than a final one)
  kDotSegment,       // "." or ".." segment
  kBadCharacter,     // a character outside the literal set ('%', '?', '#', whitespace, ...)
  kWildcardNotLast,  // "*" not as the whole last segment
  kBadPlaceholder,   // '{' or '}' other than a whole "{account}" segment
};
// "ok", "empty", "too_long", "bad_method", "bad_separator", "path_not_absolute",
// "empty_segment", "dot_segment", "bad_character", "wildcard_not_last", "bad_placeholder".
const char* rbacPatternErrorName(RbacPatternError e);

struct RbacRoleConfig {
  std::string name;
  std::vector<std::string> allow;
};

class RbacPolicy {
 public:
  // Compiles every role's patterns. Refuses (null, `error` naming role, pattern
  // and reason for each problem, one per line) duplicate role names and invalid
  // patterns. Role names are not syntax-checked here (the config loader does).
  static std::shared_ptr<const RbacPolicy> build(const std::vector<RbacRoleConfig>& roles, std::string& error);

  // Checks one pattern alone.
  static RbacPatternError checkPattern(std::string_view pattern);

  // True when `path` passes the safety rules in the file comment.
  static bool isSafePath(std::string_view path);

  // Index of a role for allowed(), or -1 when no role has that name.
  int32_t roleIndex(std::string_view name) const;
  // Indices of the named roles; unknown names are left out (they grant nothing).
  std::vector<int32_t> resolveRoles(const std::vector<std::string>& names) const;

  // The decision. `role_ids` are indices from roleIndex()/resolveRoles() (out of
  // range ones are ignored). An empty role list or empty account denies
  // everything that needs {account}; an empty role list denies everything.
  bool allowed(std::span<const int32_t> role_ids, std::string_view method, std::string_view path,
               std::string_view account) const;
  // The same by role names (a hash lookup per name; for tools and tests).
  bool allowedByName(const std::vector<std::string>& roles, std::string_view method, std::string_view path,
                     std::string_view account) const;

  size_t roleCount() const { return roles_.size(); }

 private:
  struct Segment {
    bool account = false;  // "{account}"
    std::string text;      // literal text otherwise (may be empty only for the final segment)
  };
  struct Pattern {
    std::string method;
    std::vector<Segment> segments;
    bool wildcard = false;
  };
  struct Role {
    std::string name;
    std::vector<Pattern> patterns;
  };
  static RbacPatternError compile(std::string_view text, Pattern* out);
  static bool matchPattern(const Pattern& p, std::string_view method, std::string_view path, std::string_view account);

  std::vector<Role> roles_;
  std::unordered_map<std::string, int32_t> index_;
};

}  // namespace portcullis
